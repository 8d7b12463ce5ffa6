r"""A 1x1 convolution's gradients as XLA:CPU computes them, by the shape of its product.

    taskset -c 1 python benchmarks/weight_gradients.py
    taskset -c 1 python benchmarks/weight_gradients.py --malloc tuned --rounds 10

The forward and both gradients of ``relu(x * s) @ w`` (the input of a 1x1 convolution is a
BN + ReLU output), jitted, for two shapes of the same product, timed interleaved
(``harness.interleave``):

* ``dense``: ``x [N,H,W,c_in] @ w [c_in,c_out]`` (``full``'s 1x1 convolutions and the
  projection), as ``dot_general`` on the 4-D activation or on its ``[N*H*W, c_in]`` rows;
* ``per branch``: ``x [C,N,H,W,i] @ w [C,i,o]`` (the masked modes' per-block 1x1
  convolutions), as a batched ``dot_general`` on the 5-D activation or on ``[C, rows, i]``.

On the activation as it is, the weight gradient contracts ``N, H, W``; XLA:CPU then writes
both operands transposed before the product. On rows it contracts one axis, which its dot
computes in place. ``mcjax.blocks`` multiplies rows (``_dense_pointwise``,
``_branch_pointwise``); this script keeps the measurement behind that choice.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def _loss(w, x, s, g, *, rows: bool, branches: bool):
    h = jax.nn.relu(x * s)
    if branches:  # [C, ..., i] @ [C, i, o], batched over C
        lhs = h.reshape(h.shape[0], -1, h.shape[-1]) if rows else h
        contract = (((lhs.ndim - 1,), (1,)), ((0,), (0,)))
    else:  # [..., c_in] @ [c_in, c_out]
        lhs = h.reshape(-1, h.shape[-1]) if rows else h
        contract = (((lhs.ndim - 1,), (0,)), ((), ()))
    y = jax.lax.dot_general(lhs, w, contract).reshape(g.shape)
    return jnp.sum(y * g)


def variants(batch: int, size: int) -> dict[str, tuple]:
    """``name -> (jitted function, args)``: forward and the gradients of ``w`` and ``x``."""
    keys = jax.random.split(jax.random.key(0), 6)
    shapes = {
        "dense 64->256": ((batch, size, size, 64), (64, 256), False),
        "dense 256->64": ((batch, size, size, 256), (256, 64), False),
        "per branch 8 x (8->256)": ((8, batch, size, size, 8), (8, 8, 256), True),
    }
    out = {}
    for index, (label, (x_shape, w_shape, branches)) in enumerate(shapes.items()):
        x = jax.random.normal(keys[index], x_shape)
        w = jax.random.normal(keys[3], w_shape)
        s = jax.random.normal(keys[4], x_shape[-1:])
        g = jax.random.normal(keys[5], (*x_shape[:-1], w_shape[-1]))
        for rows in (False, True):
            loss = functools.partial(_loss, rows=rows, branches=branches)
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            name = f"{label}, {'rows' if rows else 'as is'}"
            out[name] = (step.lower(w, x, s, g).compile(), (w, x, s, g))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="height and width")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--malloc", choices=harness.MALLOC_SETTINGS, default="default")
    args = parser.parse_args(argv)
    harness.apply_malloc(args.malloc)  # before JAX starts its threads
    load = harness.load_average()
    steps = variants(args.batch, args.size)

    steppers = {name: harness.Stepper(f, a, carry=False).step for name, (f, a) in steps.items()}
    times = harness.interleave(steppers, rounds=args.rounds, warmup=args.warmup)
    print(
        f"batch {args.batch}, {args.size}x{args.size}, float32, median of {args.rounds} "
        f"interleaved rounds, cores {harness.cores()}, malloc {harness.malloc_setting()}, load "
        f"average {load:.2f} before, jax {jax.__version__}"
    )
    names = list(times)
    for as_is, rows in zip(names[::2], names[1::2], strict=True):
        before, after = harness.median_ms(times[as_is]), harness.median_ms(times[rows])
        print(f"{as_is:<36}{before:>9.1f} ms")
        print(f"{rows:<36}{after:>9.1f} ms   {before / after:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
