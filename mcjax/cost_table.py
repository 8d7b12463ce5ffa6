r"""Prints a network's per-module table: branches, channels, params, FLOPs per image.

    python -m mcjax.cost_table --config configs/cifar100.py --config.model.arch=29,64,8
    python -m mcjax.cost_table --config configs/imagenet.py \
        --config.model.arch=resnext101_64x4d --json

The ``stride`` column is each part's reduction of the resolution (the ImageNet stem:
4, its stride-2 convolution then its stride-2 max pool), so ``out size`` is the
previous size divided by it. Params include BN scale and bias, not running
statistics nor masks; FLOPs are ``2 x`` multiply-accumulates of convolutions and
the head (see :mod:`mcjax.costs`).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mcjax import costs
from mcjax.training import config as training_config

# The packaged digits config (mcjax/configs/), as mcjax.main's: the command runs from any
# directory, also after a plain `pip install`; other configs are given with --config.
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "digits.py"
_CONFIG = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "Config file.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")


def summarize(config) -> dict:
    """The summary as a JSON-able dict (``params_train``, ``flops_per_image``, ``modules``)."""
    typed = training_config.from_config_dict(config)
    net = typed.model.network(typed.data)
    kwargs = dict(
        image_size=int(config.data.image_size),
        in_channels=int(config.data.channels),
        num_classes=int(config.data.num_classes),
        per_block_inputs=net.connectivity != "full",
        per_branch_bn=net.per_branch_bn3,
    )
    rows = costs.module_costs(net.arch, **kwargs)
    totals = costs.network_costs(net.arch, **kwargs)
    return {
        "arch": net.arch.name,
        "stem": net.arch.stem,
        "depth": net.arch.depth,
        "cardinality": net.arch.cardinality,
        "connectivity": net.connectivity,
        "fan_in": None if net.connectivity == "full" else net.fan_in,
        "per_branch_bn": net.per_branch_bn3,
        "image_size": kwargs["image_size"],
        "num_classes": kwargs["num_classes"],
        "params_train": totals["params"],
        "flops_per_image": totals["flops_per_image"],
        "modules": [row.__dict__ for row in rows],
    }


def format_table(summary: dict) -> str:
    header = (
        f"{'part':<11}{'branches':>9}{'channels (in-b-out)':>22}{'stride':>7}"
        f"{'out size':>9}{'params':>13}{'MFLOPs/img':>13}"
    )
    lines = [
        f"{summary['arch']}  (D={summary['depth']}, C={summary['cardinality']}, "
        f"{summary['connectivity']}"
        + (f", K={summary['fan_in']}" if summary["fan_in"] else "")
        + ("" if summary["per_branch_bn"] else ", one BN after the branches")
        + f", {summary['image_size']}x{summary['image_size']} input, stem {summary['stem']})",
        header,
        "-" * len(header),
    ]
    for row in summary["modules"]:
        channels = (
            f"{row['in_channels']}-{row['bottleneck']}-{row['out_channels']}"
            if row["branches"]
            else f"{row['in_channels']}-{row['out_channels']}"
        )
        lines.append(
            f"{row['name']:<11}{row['branches'] or '':>9}{channels:>22}{row['stride']:>7}"
            f"{row['resolution']:>9}{row['params']:>13,}{row['flops'] / 1e6:>13.2f}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<58}{summary['params_train']:>13,}{summary['flops_per_image'] / 1e6:>13.2f}"
    )
    lines.append(
        f"params_train = {summary['params_train'] / 1e6:.2f}M, "
        f"FLOPs per image = {summary['flops_per_image'] / 1e9:.3f} G"
    )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # no backend-probing chatter in a table
    try:
        summary = summarize(_CONFIG.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary) if _JSON.value else format_table(summary))


if __name__ == "__main__":
    app.run(main)
