r"""Where a train step's time goes, and A/B timings of step variants in one process.

    python benchmarks/step_profile.py --arch 29,8,8 --batch 32 --connectivity full learned
    python benchmarks/step_profile.py --connectivity full full_per_branch_bn --impl loop grouped
    python benchmarks/step_profile.py --arch 29,8,8 --connectivity learned --profile
    python benchmarks/step_profile.py --arch 29,8,8 --connectivity full learned \
        --xla_flags=--xla_cpu_use_onednn=true

Every (connectivity x branch formulation) step is the real training step of
``benchmarks/throughput.py`` (compiled ahead of time, donated state). Timings are
taken *interleaved*: each round runs every compiled step once, ``--rounds`` times,
and the median per step is reported, so that a loaded machine slows every variant
alike; ratios between rows of one run are what to read, not absolute numbers.

``--profile`` also records a ``jax.profiler`` trace of ``--profile_steps`` steps of
each row and prints the time per class of operation (``benchmarks/op_classes.py``: 3x3 and
1x1 convolutions forward and backward, weight gradients, the mask aggregation, BN
statistics, elementwise work, layout copies, ...) and the top operations. Timing and
interleaving are ``benchmarks/harness.py``'s; ``--malloc tuned`` runs under the allocator
setting of ``harness.tune_malloc``. Variants that need another process (another checkout,
other XLA flags) are ``benchmarks/cpu_tables.py``'s job.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

if "--xla_flags" in " ".join(sys.argv):  # must be set before jax initialises its backend
    for arg in sys.argv:
        if arg.startswith("--xla_flags="):
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + " " + arg.split("=", 1)[1]
            ).strip()

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
import op_classes
import throughput

from mcjax import masks, optim
from mcjax.training import steps

_aggregate = masks.aggregate


def _aggregate_then_divide(real, binary, outputs, *, scale=1.0):
    """``aggregation="mean"`` as a division after the mix (a pass of its own)."""
    out = _aggregate(real, binary, outputs)
    return out if scale == 1.0 else out / jnp.asarray(round(1.0 / scale), out.dtype)


# Formulations measured against the library's current one, applied while the step is
# traced. Each maps a name to (module, attribute, value) replacements.
VARIANTS = {
    "current": (),
    "mean_divides_after_mix": ((masks, "aggregate", _aggregate_then_divide),),
}


@contextlib.contextmanager
def _patched(variant: str):
    saved = [(module, name, getattr(module, name)) for module, name, _ in VARIANTS[variant]]
    try:
        for module, name, value in VARIANTS[variant]:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


_TX = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)


@functools.cache
def _initial_state(net):
    # Compiled once per network (the branch formulation does not change the state).
    return jax.jit(steps.create_state, static_argnums=(0, 1))(net, _TX, jax.random.key(0))


def compiled_step(arch, connectivity, impl, *, batch, image_size, num_classes, fan_in, dtype):
    net = throughput._network(arch, connectivity, dtype, fan_in, num_classes, "auto")
    state = jax.tree.map(jnp.copy, _initial_state(net))  # each step donates its own
    net = dataclasses.replace(net, branch_impl=impl)
    tx = _TX
    images, labels = throughput._batch(batch, image_size, num_classes)
    step = jax.jit(
        functools.partial(
            steps.train_step, net=net, tx=tx, key=jax.random.key(3), frozen=not net.has_masks
        ),
        donate_argnums=0,
    )
    start = time.perf_counter()
    compiled = step.lower(state, images, labels).compile()
    return compiled, [state, images, labels], time.perf_counter() - start


def profile(entry, steps: int) -> dict:
    """Milliseconds per class of operation and the top operations, per step."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                entry["stepper"].step()
        totals = op_classes.trace_totals(tmp)
    return op_classes.classify({k: v / steps for k, v in totals.items()}, entry["hlo"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="29,8,8")
    parser.add_argument("--connectivity", nargs="+", default=["full", "learned"])
    parser.add_argument("--impl", nargs="+", default=["auto"])
    parser.add_argument("--variants", nargs="+", default=["current"], choices=sorted(VARIANTS))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--fan_in", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--full_variants", nargs="*", default=[], help="variants that also apply to full"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
    parser.add_argument("--malloc", default="default", choices=harness.MALLOC_SETTINGS)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    harness.apply_malloc(args.malloc)

    entries = []
    for connectivity, impl, variant in itertools.product(
        args.connectivity, args.impl, args.variants
    ):
        if connectivity.startswith("full") and variant not in ("current", *args.full_variants):
            continue  # the masked-step variants do not change full's step
        with _patched(variant):
            compiled, step_args, compile_s = compiled_step(
                args.arch,
                connectivity,
                impl,
                batch=args.batch,
                image_size=args.image_size,
                num_classes=args.num_classes,
                fan_in=args.fan_in,
                dtype=args.dtype,
            )
        entries.append(
            {
                "name": f"{connectivity}/{impl}/{variant}",
                "stepper": harness.Stepper(compiled, step_args, carry=True),
                "hlo": compiled.as_text(),
                "compile_s": compile_s,
            }
        )
        print(f"compiled {entries[-1]['name']} in {compile_s:.1f} s", flush=True)
    load = harness.load_average()
    times = harness.interleave(
        {e["name"]: e["stepper"].step for e in entries}, rounds=args.rounds, warmup=args.warmup
    )
    for entry in entries:
        entry["times"] = times[entry["name"]]
    base = statistics.median(entries[0]["times"])
    print(
        f"\n{args.arch}, batch {args.batch}, {args.dtype}, median of {args.rounds} "
        f"interleaved rounds (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, malloc "
        f"{harness.malloc_setting()}, load average {load:.2f} before the rounds)"
    )
    print(f"{'step':<40}{'ms':>9}{'img/s':>9}{'vs first':>10}{'compile s':>11}")
    for entry in entries:
        median = statistics.median(entry["times"])
        entry["step_ms"] = 1e3 * median
        print(
            f"{entry['name']:<40}{1e3 * median:>9.1f}{args.batch / median:>9.1f}"
            f"{median / base:>10.2f}{entry['compile_s']:>11.1f}"
        )
    if args.profile:
        for entry in entries:
            result = profile(entry, args.profile_steps)
            entry["profile"] = result
            total = result["total_ms"]
            print(f"\n{entry['name']}: {total:.1f} ms of XLA operations per step")
            for kind, ms in sorted(result["class_ms"].items(), key=lambda kv: -kv[1]):
                if ms > 0:
                    print(f"  {kind:<56}{ms:>9.1f} ms {100 * ms / total:>5.1f}%")
            for row in result["top"][: args.top]:
                print(f"    {row['ms']:>8.2f} ms  {row['name']:<36} {row['class']}")
    if args.out:
        with open(args.out, "w") as f:
            record = [{k: v for k, v in e.items() if k not in ("stepper", "hlo")} for e in entries]
            machine = harness.machine_record()
            json.dump({"machine": machine, "args": vars(args), "rows": record}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
