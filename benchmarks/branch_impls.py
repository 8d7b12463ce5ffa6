r"""Train-step speed of each formulation of the C branches (``mcjax.blocks.BRANCH_IMPLS``).

    python benchmarks/branch_impls.py --arch 29,8,8 --batch 128 --steps 5
    python benchmarks/branch_impls.py --quick          # 20,4,8, batch 32, 3 steps

``full`` is ResNeXt's form (one dense 1x1 conv over the concatenated bottlenecks, one BN),
where a formulation only changes the 3x3 convs; ``--connectivities full_per_branch_bn``
adds the per-branch-BN ablation. For each formulation x connectivity, jit-compiles the
real training step
(:func:`mcjax.training.steps.train_step`, SGD-momentum + clipped mask SGD, donated
state), runs ``--warmup`` steps, then times ``--steps`` fully synchronised steps
and reports the median images/s, the compile seconds and the ratio to the
fastest ``full`` formulation. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import throughput  # benchmarks/throughput.py: the same timed train step

from mcjax import blocks


def measure(
    arch: str, connectivity: str, impl: str, batch: int, steps: int, warmup: int, image_size: int
) -> dict:
    row = throughput.train_row(
        arch,
        connectivity,
        "float32",
        batch=batch,
        steps=steps,
        warmup=warmup,
        image_size=image_size,
        fan_in=4,
        num_classes=100,
        impl=impl,
    )
    return {**row, "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="29,8,8")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--impls", default="loop,einsum,merged,grouped,vmap")
    parser.add_argument("--connectivities", default="full,learned")  # + full_per_branch_bn
    parser.add_argument("--quick", action="store_true", help="20,4,8, batch 32, 3 steps")
    parser.add_argument("--out", default="benchmarks/branch_impls.json")
    args = parser.parse_args()
    if args.quick:
        args.arch, args.batch, args.steps = "20,4,8", 32, 3

    machine = {
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "auto_impl": blocks.resolve_branch_impl("auto"),
    }
    rows = []
    for connectivity in args.connectivities.split(","):
        for impl in args.impls.split(","):
            row = measure(
                args.arch, connectivity, impl, args.batch, args.steps, args.warmup, args.image_size
            )
            rows.append(row)
            print(
                f"  measured {connectivity:8s} {impl:8s} {row['images_per_s']:8.1f} img/s "
                f"compile {row['compile_s']:.1f} s",
                flush=True,
            )
    best_full = max((r["images_per_s"] for r in rows if r["connectivity"] == "full"), default=None)
    print(
        f"\n{args.arch}, batch {args.batch}, {machine['backend']} ({machine['devices'][0]}), "
        f"jax {machine['jax']}; median of {args.steps} steps"
    )
    print(
        f"{'connectivity':<13}{'impl':<9}{'img/s':>9}{'ms/step':>10}{'compile s':>11}"
        f"{'vs best full':>14}"
    )
    for r in rows:
        ratio = f"{r['images_per_s'] / best_full:.2f}" if best_full else "-"
        print(
            f"{r['connectivity']:<13}{r['impl']:<9}{r['images_per_s']:>9.1f}"
            f"{r['step_ms']:>10.0f}{r['compile_s']:>11.1f}{ratio:>14}"
        )
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing anything
    main()
