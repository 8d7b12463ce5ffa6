r"""An independent timing of the train step through mcjax's public API only.

    python benchmarks/api_timing.py --arch 29,8,8 --batch 32 --rounds 10
    taskset -c 1 python benchmarks/api_timing.py --modes full learned random

Written from ``mcjax.Network``, ``mcjax.init``, ``mcjax.apply``, ``mcjax.maskconnect`` and
``mcjax.masks`` alone (no ``mcjax.training``, no ``benchmarks/harness.py``), as a user would:
softmax cross-entropy, SGD with momentum 0.9 and weight decay 5e-4, ``learned`` sampling K-hot
masks from its real-valued masks every step (phase 1), ``random`` a fixed K-hot connectivity;
one ``jax.jit`` per mode with the state donated. The modes are timed interleaved (one step of
each per round, after ``--warmup`` rounds), and the step ratios to ``full`` printed: they are
meant to agree with ``benchmarks/throughput.py``'s (``benchmarks/cpu_tables.py`` checks that).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import mcjax


def build_step(arch: str, mode: str, *, batch: int, fan_in: int = 4, num_classes: int = 100):
    """``(step, state, images, labels)``: the jitted step ``(state, images, labels) ->
    (state, loss)`` of ``mode`` and its first state (the state is donated)."""
    net = mcjax.Network(
        mcjax.get_architecture(arch),
        num_classes=num_classes,
        connectivity=mode,
        fan_in=fan_in,
    )
    variables = mcjax.init(jax.random.key(0), net)
    tx = mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)
    params = variables["params"]
    state = (jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))
    fixed = variables["connectivity"]  # random: the fixed K-hot masks; else None
    mask_key = jax.random.key(1)

    def loss_fn(params, batch_stats, images, labels, step):
        if mode == "learned":
            key = jax.random.fold_in(mask_key, step)
            connectivity = mcjax.masks.sample(key, params["masks"], fan_in)
        else:
            connectivity = fixed
        logits, new_stats = mcjax.apply(
            net, params, batch_stats, images, connectivity=connectivity, train=True
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, new_stats

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, images, labels):
        count, params, batch_stats, opt_state = state
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, images, labels, count
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (count + 1, params, new_stats, opt_state), loss

    images = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(3), (batch,), 0, num_classes)
    return step, state, images, labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="29,8,8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=["full", "learned", "random"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the medians as JSON")
    args = parser.parse_args(argv)

    runs = {}
    for mode in args.modes:
        step, state, images, labels = build_step(args.arch, mode, batch=args.batch)
        start = time.perf_counter()
        step = step.lower(state, images, labels).compile()
        print(f"{mode}: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        runs[mode] = [step, state, images, labels]

    def one(mode) -> float:
        step, state, images, labels = runs[mode]
        start = time.perf_counter()
        state, loss = step(state, images, labels)
        jax.block_until_ready((state, loss))
        runs[mode][1] = state
        return time.perf_counter() - start

    times = {mode: [] for mode in args.modes}
    for index in range(args.warmup + args.rounds):
        for mode in args.modes:
            seconds = one(mode)
            if index >= args.warmup:
                times[mode].append(seconds)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    first = args.modes[0]
    print(f"{args.arch}, batch {args.batch}, median of {args.rounds} interleaved rounds")
    for mode, seconds in medians.items():
        print(
            f"{mode:<10}{1000 * seconds:>9.1f} ms {args.batch / seconds:>8.1f} img/s"
            f"{seconds / medians[first]:>7.2f}x {first}"
        )
    if args.json:
        step_ms = {mode: 1000 * seconds for mode, seconds in medians.items()}
        print(json.dumps({"arch": args.arch, "batch": args.batch, "step_ms": step_ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
