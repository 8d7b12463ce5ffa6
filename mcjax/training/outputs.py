"""What a finished run leaves in its workdir, and the state digest that compares runs.

``connectivity.json``, the pruned model (:mod:`mcjax.export`), the figures
(:mod:`mcjax.figures`) and ``summary.json``; :func:`format_summary` for the console.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
from absl import logging

from mcjax import costs, models, prune, safe_files
from mcjax.training.config import DataConfig
from mcjax.training.metrics import read_records


def state_digest(state) -> str:
    """sha256 over every array of a state (any pytree), in a fixed (tree-path) order."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON atomically, never through a link (:mod:`mcjax.safe_files`)."""
    safe_files.write_json(path, obj, indent=1)


def connectivity_record(net: models.Network, conn, real, live) -> dict:
    """``connectivity.json``: binary connectivity, real-valued masks, live blocks per module.

    ``conn``: the connectivity evaluated (``None`` for ``full``); ``real``: the
    real-valued masks or ``None``; ``live``: from :func:`mcjax.prune.live_blocks`.
    """
    record = {
        "arch": net.arch.name,
        "connectivity": net.connectivity,
        "fan_in": None if net.connectivity == "full" else net.fan_in,
        "modules": [],
    }
    for index, spec in enumerate(net.arch.modules):
        entry = {
            "module": index + 1,
            "cardinality": spec.cardinality,
            "live": [bool(x) for x in live[index]],
        }
        if conn is not None and index > 0:
            entry["binary"] = np.asarray(conn[index - 1]).astype(int).tolist()
            if real is not None:
                entry["real"] = np.round(np.asarray(real[index - 1], np.float64), 6).tolist()
        record["modules"].append(entry)
    return record


def finish(
    data_config: DataConfig, workdir, net, state, conn, data, final, *, wall_seconds, is_writer
) -> dict:
    """Prunes, writes ``connectivity.json``, the pruned model, figures and ``summary.json``.

    ``data_config`` gives the images' size and channels (for the costs), ``data`` is the
    run's input; ``conn`` is the connectivity the run evaluates with (``None`` for
    ``full``); ``final`` the last evaluation. Returns the summary (every process; only the
    writer writes).
    """
    pruned = prune.drop_dead_blocks(
        net, state.params, state.batch_stats, None if conn is None else np.asarray(conn)
    )
    size, channels = int(data_config.image_size), int(data_config.channels)
    kw = dict(
        image_size=size,
        in_channels=channels,
        num_classes=net.num_classes,
        per_block_inputs=net.connectivity != "full",
        per_branch_bn=net.per_branch_bn3,
    )
    before = costs.network_costs(net.arch, **kw)
    after = costs.network_costs(pruned.net.arch, **kw)
    summary = {
        "dataset": data.name,
        "arch": net.arch.name,
        "connectivity": net.connectivity,
        "fan_in": None if net.connectivity == "full" else net.fan_in,
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_examples": final["count"],
        "params_train": costs.count_params(state.params),
        "params_test": costs.count_params(pruned.params),
        "flops_train": before["flops_per_image"],
        "flops_test": after["flops_per_image"],
        "live_blocks_per_module": [int(k.sum()) for k in pruned.live],
        "steps": int(state.step),
        "wall_seconds": round(wall_seconds, 1),
        "state_digest": state_digest(state),
        "data_fingerprint": data.fingerprint,
    }
    if data.spec.top5:
        summary["test_accuracy_top5"] = final["accuracy_top5"]
    if not is_writer:
        return summary
    record = connectivity_record(net, conn, state.params.get("masks"), pruned.live)
    write_json(os.path.join(workdir, "connectivity.json"), record)
    pruned.save(
        os.path.join(workdir, "pruned_model"),
        mean_image=data.mean_image,
        std=data.std,
        crop=data.crop,
    )
    _figures(workdir, net, conn, pruned.live)
    write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def _figures(workdir, net, conn, live):
    try:
        from mcjax import figures
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency
        logging.warning("no figures: %s", error)
        return
    binary = None if conn is None else [np.asarray(m) for m in conn]
    fan_in = None if net.connectivity == "full" else net.fan_in
    # plot_connectivity adds "(K = ...)" to its title itself.
    figures.plot_connectivity(
        binary,
        live,
        os.path.join(workdir, "connectivity.png"),
        title=f"{net.arch.name} {net.connectivity}",
        fan_in=fan_in,
    )
    title = f"{net.arch.name} {net.connectivity}" + ("" if fan_in is None else f" K={fan_in}")
    figures.plot_active_branches(live, os.path.join(workdir, "active_branches.png"), title=title)
    records = read_records(os.path.join(workdir, "metrics.jsonl"))
    figures.plot_learning_curves(records, os.path.join(workdir, "learning_curves.png"), title=title)


def format_summary(summary: dict) -> str:
    """A few human lines for the end of a run."""
    lines = [
        f"{summary['dataset']} {summary['arch']} {summary['connectivity']}"
        + (f" K={summary['fan_in']}" if summary.get("fan_in") else ""),
        f"  test accuracy   {100 * summary['test_accuracy']:.2f}% "
        f"({summary['test_examples']} examples)"
        + (
            f", top-5 {100 * summary['test_accuracy_top5']:.2f}%"
            if "test_accuracy_top5" in summary
            else ""
        ),
        f"  params train    {summary['params_train']:,}",
        f"  params test     {summary['params_test']:,} (after pruning; live blocks per module "
        f"{summary['live_blocks_per_module']})",
        f"  FLOPs/img       {summary['flops_train'] / 1e6:.2f}M train, "
        f"{summary['flops_test'] / 1e6:.2f}M test",
        f"  steps           {summary['steps']} in {summary['wall_seconds']:.0f} s",
        f"  state digest    {summary['state_digest'][:16]}",
    ]
    return "\n".join(lines)
