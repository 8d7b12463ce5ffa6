r"""Checks of the PyTorch reference (``benchmarks/torch_reference.py``), and its timing CLI.

    python benchmarks/torch_checks.py --check          # needs jax + mcjax; exits 1 on any mismatch
    python benchmarks/torch_checks.py --check_torch_only
    python benchmarks/torch_checks.py --arch 29,8,8 --batch 32 --steps 5
    python benchmarks/torch_checks.py --arch resnext50_32x4d --device cuda --dtype bfloat16 \
        --batch 128 --out torch.json

``--check`` verifies that the baselines compute what they claim: parameter counts against the
hand formula, published counts and ``torch.utils.flop_counter``; the grouped form against
the per-branch one; our ImageNet network against torchvision's; the port of mcjax ``full``
against a per-branch JAX forward and against mcjax itself (``--check_torch_only`` leaves out
what needs jax). Without ``--check`` it times the baselines through
``harness.torch_benchmark`` (every memory layout x ``--modes``; each task's fastest setting
is reported) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from torch_reference import (
    FORMULATIONS,
    TOLERANCE,
    TORCHVISION_PARAMS,
    agreed_layout_logits,
    architecture,
    build_model,
    count_params,
    default_image_size,
    default_num_classes,
    expected_params,
    flop_count,
    forward_flops,
    logits_pair,
    perturbed_variables,
    ported_logits,
    random_full_variables,
    randomize_,
    relative_error,
    torchvision_model,
)


def paper_param_anchors() -> dict[str, tuple[int, float]]:
    """Published parameter counts of the public form: ``arch -> (classes, millions)``.

    ResNeXt-29 8x64d on CIFAR-10 is 34.4M (Xie et al. 2017, Table 7). The MaskConnect paper's
    0.28M (``20,4,8``) and 0.86M (``29,8,8``) on CIFAR-100 are the counts with one BN3 per
    branch (``2 * (C - 1) * c_out`` more per module); they are no anchor for this form.
    """
    return {"29,64,8": (10, 34.4)}


def self_checks(
    archs: Iterable[str] = ("20,4,8", "29,4,8", "29,8,8", "29,64,8"), *, small: str = "11,4,4"
) -> bool:
    """Checks that need no jax: counts against hand formulas, papers and torch's FLOP counter;
    the grouped form against the per-branch one; our ImageNet network against torchvision."""
    ok = True
    print(
        "| arch | torch params | by hand | paper | forward FLOPs (formula) | torch FLOP counter |"
    )
    print("|---|---|---|---|---|---|")
    anchors = paper_param_anchors()
    for arch in archs:
        classes = default_num_classes(arch)
        size = default_image_size(arch)
        model = build_model(arch, classes)
        params, by_hand = count_params(model), expected_params(arch, classes)
        paper = anchors.get(arch)
        paper_ok = paper is None or round(expected_params(arch, paper[0]) / 1e6, 1) == paper[1]
        flops = forward_flops(arch, image_size=size, num_classes=classes)
        counted = flop_count(model, size)
        match = params == by_hand and paper_ok and flops == counted
        ok &= match
        print(
            f"| {arch} | {params:,} | {by_hand:,} "
            f"| {f'{paper[1]}M ({paper[0]} classes)' if paper else '-'} "
            f"| {flops:,} | {counted:,} |" + ("" if match else " MISMATCH")
        )

    torch.manual_seed(0)
    grouped = randomize_(build_model(small, 10))
    per_branch = build_model(small, 10, formulation="per_branch")
    per_branch.load_state_dict(grouped.state_dict())
    images = torch.randn(4, 3, 16, 16)
    for train in (False, True):
        a, b = logits_pair(grouped, per_branch, images, train=train)
        error = relative_error(a, b)
        ok &= error < TOLERANCE
        print(f"{small} grouped vs per-branch, {'train' if train else 'eval'}: {error:.1e}")
    # Training mode updated both models' running statistics in place: they must agree too.
    stats_error = max(
        relative_error(x, y)
        for (k, x), (_, y) in zip(
            grouped.state_dict().items(), per_branch.state_dict().items(), strict=True
        )
        if k.endswith(("running_mean", "running_var"))
    )
    ok &= stats_error < TOLERANCE
    print(f"{small} running statistics after one train step: {stats_error:.1e}")

    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("torchvision not installed: its checks skipped")
        return ok
    for arch, expected in TORCHVISION_PARAMS.items():
        reference = torchvision_model(arch, 1000)
        ours = randomize_(build_model(arch, 1000))
        tv_params = count_params(reference)
        same_keys = {k: tuple(v.shape) for k, v in reference.state_dict().items()} == {
            k: tuple(v.shape) for k, v in ours.state_dict().items()
        }
        reference.load_state_dict(ours.state_dict())
        images = torch.randn(2, 3, 64, 64)
        errors = [
            relative_error(*logits_pair(ours, reference, images, train=t)) for t in (False, True)
        ]
        flops = forward_flops(arch, image_size=224, num_classes=1000)
        counted = flop_count(reference, 224)
        match = tv_params == expected == count_params(ours) and same_keys and flops == counted
        match &= max(errors) < TOLERANCE
        ok &= match
        print(
            f"{arch}: torchvision {tv_params:,} params (expected {expected:,}), ours "
            f"{count_params(ours):,}; same state_dict keys and shapes: {same_keys}; logits "
            f"eval {errors[0]:.1e}, train {errors[1]:.1e}; forward FLOPs at 224: formula "
            f"{flops:,}, counted {counted:,}" + ("" if match else "  MISMATCH")
        )
    return ok


def mcjax_checks(
    archs: Iterable[str] = ("20,4,8", "29,8,8", "29,64,8", "resnext50_32x4d"),
    *,
    forward_arch: str = "11,4,4",
) -> bool:
    """Against mcjax: structure and parameter counts, and ported ``full`` logits (train and
    eval mode). Needs jax and mcjax with ``full`` in ResNeXt's form (one BN3 per module)."""
    import jax

    from mcjax import costs, models
    from mcjax.architectures import get_architecture

    ok = True
    print("| arch | torch params | mcjax params | mcjax costs | structure | match |")
    print("|---|---|---|---|---|---|")
    for arch in archs:
        classes = default_num_classes(arch)
        jarch = get_architecture(arch)
        net = models.Network(jarch, num_classes=classes, connectivity="full")
        shapes = jax.eval_shape(lambda net=net: models.init(jax.random.key(0), net))
        jax_params = costs.count_params(shapes["params"])
        table = costs.network_costs(
            jarch, image_size=32, num_classes=classes, per_block_inputs=False
        )
        ours = architecture(arch)
        same = (ours.stem, ours.stem_channels) == (jarch.stem, jarch.stem_channels) and [
            dataclasses.astuple(m) for m in ours.modules
        ] == [dataclasses.astuple(m) for m in jarch.modules]
        by_hand = expected_params(arch, classes)
        flops = forward_flops(arch, image_size=32, num_classes=classes)
        match = same and by_hand == jax_params == table["params"]
        match &= flops == table["flops_per_image"]
        ok &= match
        print(
            f"| {arch} | {by_hand:,} | {jax_params:,} | {table['params']:,} "
            f"| {'same' if same else 'DIFFERENT'} | {'yes' if match else 'NO'} |"
        )

    net = models.Network(get_architecture(forward_arch), num_classes=10, connectivity="full")
    variables = models.init(jax.random.key(0), net)
    params, batch_stats = perturbed_variables(variables["params"], variables["batch_stats"])
    images = np.asarray(jax.random.normal(jax.random.key(2), (4, 16, 16, 3)))
    for train in (False, True):
        expected, _ = models.apply(net, params, batch_stats, images, connectivity=None, train=train)
        try:
            got = ported_logits(forward_arch, params, batch_stats, images, train=train)
        except ValueError as error:
            print(f"port of mcjax {forward_arch} full: {error}")
            return False
        error = relative_error(got, expected)
        ok &= error < TOLERANCE
        mode = "train" if train else "eval"
        print(f"{forward_arch} mcjax full vs ported torch, {mode} mode: relative error {error:.1e}")
    return ok


def layout_checks(arch: str = "11,4,4") -> bool:
    """The port against :func:`agreed_layout_logits` on random variables (needs jax and
    ``mcjax.layers`` only), train and eval mode."""
    params, stats = random_full_variables(arch, 10)
    images = np.random.default_rng(3).standard_normal((4, 16, 16, 3)).astype(np.float32)
    ok = True
    for train in (False, True):
        expected = agreed_layout_logits(arch, params, stats, images, train=train)
        error = relative_error(ported_logits(arch, params, stats, images, train=train), expected)
        ok &= error < TOLERANCE
        mode = "train" if train else "eval"
        print(f"{arch} port vs the per-branch JAX form, {mode} mode: relative error {error:.1e}")
    return ok


# --- Command line --------------------------------------------------------------------------


def markdown(results: Sequence[dict]) -> str:
    """One table row per (arch, dtype, batch): each task's fastest setting and all settings."""
    lines = [
        "| arch | source | dtype | batch | train img/s | train setting | infer img/s "
        "| infer setting | TFLOP/s train | peak MiB | all settings (train img/s) |",
        "|" + "---|" * 11,
    ]
    for r in results:
        settings = ", ".join(
            f"{s['layout']}+{s['mode']} "
            + (f"{s['train_images_per_s']:.1f}" if "train_images_per_s" in s else "-")
            if "error" not in s and "skipped" not in s
            else f"{s['layout']}+{s['mode']} {'failed' if 'error' in s else 'skipped'}"
            for s in r["settings"]
        )
        train = r.get("train_images_per_s")
        tflops = 3 * r["forward_flops"] * train / 1e12 if train else None
        lines.append(
            f"| {r['arch']} | {r.get('source', '-')} | {r['dtype']} | {r['batch']} "
            f"| {_fmt(train, ',.1f')} | {r.get('train_setting', '-')} "
            f"| {_fmt(r.get('infer_images_per_s'), ',.1f')} | {r.get('infer_setting', '-')} "
            f"| {_fmt(tflops, '.3f')} | {_fmt(r.get('peak_memory_mib'), ',.0f')} | {settings} |"
        )
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", action="extend", help="one or more architectures")
    parser.add_argument("--batch", nargs="+", type=int, default=[128])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=None, help="32, or 224 for resnext*")
    parser.add_argument("--num_classes", type=int, default=None, help="100, or 1000 for resnext*")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    parser.add_argument(
        "--layouts", nargs="+", default=list(harness.TORCH_LAYOUTS), choices=harness.TORCH_LAYOUTS
    )
    parser.add_argument(
        "--modes", nargs="+", default=list(harness.TORCH_MODES), choices=harness.TORCH_MODES
    )
    parser.add_argument("--formulation", default="grouped", choices=FORMULATIONS)
    parser.add_argument("--threads", type=int, default=None, help="default: all the cores")
    parser.add_argument(
        "--tf32", action=argparse.BooleanOptionalAction, default=True, help="float32 on CUDA"
    )
    parser.add_argument("--out", default=None, help="write the results and machine as JSON")
    parser.add_argument("--check", action="store_true", help="run the checks, then exit")
    parser.add_argument(
        "--check_torch_only", action="store_true", help="only the checks that need no jax"
    )
    args = parser.parse_args(argv)

    if args.check or args.check_torch_only:
        ok = self_checks()
        if not args.check_torch_only:
            ok &= layout_checks()
            ok &= mcjax_checks()
        print("check passed" if ok else "check FAILED")
        return 0 if ok else 1

    harness.torch_configure(args.device, threads=args.threads, tf32=args.tf32)
    results = []
    for arch in args.arch or ["20,4,8"]:
        for dtype in args.dtype:
            for batch in args.batch:
                results.append(
                    harness.torch_benchmark(
                        arch,
                        batch=batch,
                        steps=args.steps,
                        warmup=args.warmup,
                        image_size=args.image_size,
                        num_classes=args.num_classes,
                        device=args.device,
                        dtype=dtype,
                        layouts=args.layouts,
                        modes=args.modes,
                        formulation=args.formulation,
                        log=lambda line: print(line, flush=True),
                    )
                )
    machine = harness.torch_machine_record(args.device)
    print(
        f"\ntorch {machine['torch']}, {args.device}"
        + (f" ({machine['cuda_device']})" if machine["cuda_device"] else "")
        + f", {machine['cpu_count']} CPUs, {machine['torch_threads']} threads; "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
