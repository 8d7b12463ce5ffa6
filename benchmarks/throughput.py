r"""Training and inference throughput of mcjax, side by side with public PyTorch baselines.

    python benchmarks/throughput.py --quick                       # this CPU, < 10 minutes
    python benchmarks/throughput.py --arch 29,8,8 29,64,8 --batch 128 --steps 10 --torch
    python benchmarks/throughput.py --arch 29,64,8 --dtype bfloat16 --batch 128 256 --torch
    python benchmarks/throughput.py --arch resnext50_32x4d --image_size 224 --batch 64

For each architecture x connectivity (``full``: ResNeXt; ``learned``: phase 1, masks
sampled and learned; ``random``: a fixed K-hot connectivity; on request
``full_per_branch_bn``, the ablation with the masked modes' parameters) x compute
dtype (``float32``; ``bfloat16`` compute with float32 parameters and optimizer state) x batch, the
real training step (:func:`mcjax.training.steps.train_step`, donated state) is compiled
ahead of time; the connectivities of one (architecture, dtype, batch) are then timed
interleaved (``benchmarks/harness.py``: ``--warmup`` rounds, then ``--steps`` rounds of one
synchronised step of each) and the median reported: images/s, compile seconds, achieved TFLOP/s
(3 x the forward FLOPs of :mod:`mcjax.costs`), the wall time the paper's 320-epoch
CIFAR schedule would take at that speed, and the compiler's peak-memory
estimate (arguments + temporaries + outputs - aliased; on GPU also the allocator's
high-water mark). Inference is timed the same way for the unpruned network and
for its pruned form with a K=1 connectivity (``--prune_fan_in``), next to the
FLOPs ratio. ``--torch`` adds rows of the public PyTorch ResNeXt next to ``full``
(``benchmarks/torch_reference.py``: the CIFAR form, torchvision's ``resnext*``), each in
its fastest setting of memory layout x ``--torch_modes``.

``--malloc tuned`` runs under ``harness.tune_malloc`` (the allocator keeps freed memory
mapped). Prints Markdown tables and writes JSON (``--out``) with a record of the machine
(including the allocator setting and the load average before each group of rows).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from mcjax import blocks, costs, models, optim, prune
from mcjax.architectures import get_architecture
from mcjax.data import in_memory, sources
from mcjax.training import steps as training_steps

CONNECTIVITIES = ("full", "learned", "random")


def _network(arch: str, connectivity: str, dtype: str, fan_in: int, num_classes: int, impl: str):
    """``connectivity``: a mode of :data:`mcjax.models.CONNECTIVITIES`, or
    ``"full_per_branch_bn"`` (``full`` with one BN per branch, the ablation)."""
    per_branch_bn = connectivity == "full_per_branch_bn"
    mode = "full" if per_branch_bn else connectivity
    return models.Network(
        get_architecture(arch),
        num_classes=num_classes,
        connectivity=mode,
        fan_in=fan_in,
        dtype=models.DTYPES[dtype],
        branch_impl=impl,
        full_per_branch_bn=per_branch_bn,
    )


def _forward_flops(net: models.Network, image_size: int) -> int:
    return costs.network_costs(
        net.arch,
        image_size=image_size,
        num_classes=net.num_classes,
        per_block_inputs=net.connectivity != "full",
        per_branch_bn=net.per_branch_bn3,
    )["flops_per_image"]


def _allocator_peak() -> dict:
    """The allocator's high-water mark of the process so far (GPU/TPU; CPU has none)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return {}
    return {"peak_mib_allocator": stats["peak_bytes_in_use"] / 2**20}


def _batch(batch: int, image_size: int, num_classes: int):
    images = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
    return images, labels


def build_train_row(
    arch: str,
    connectivity: str,
    dtype: str,
    *,
    batch: int,
    image_size: int,
    fan_in: int,
    num_classes: int,
    impl: str = "auto",
) -> tuple[dict, harness.Stepper]:
    """The compiled train step of ``arch`` in ``connectivity`` mode and compute ``dtype``:
    its row (compile time, peak memory) and a :class:`harness.Stepper` that runs it."""
    net = _network(arch, connectivity, dtype, fan_in, num_classes, impl)
    tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)
    state = jax.jit(training_steps.create_state, static_argnums=(0, 1))(net, tx, jax.random.key(0))
    images, labels = _batch(batch, image_size, num_classes)
    step = jax.jit(
        functools.partial(
            training_steps.train_step,
            net=net,
            tx=tx,
            key=jax.random.key(3),
            frozen=not net.has_masks,
        ),
        donate_argnums=0,
    )
    start = time.perf_counter()
    compiled = step.lower(state, images, labels).compile()
    row = {
        "what": "train",
        "arch": arch,
        "connectivity": connectivity,
        "dtype": dtype,
        "batch": batch,
        "impl": blocks.resolve_branch_impl(impl),
        "compile_s": time.perf_counter() - start,
        "train_flops": 3 * _forward_flops(net, image_size) * batch,
        **harness.compiled_peak(compiled),
    }
    return row, harness.Stepper(compiled, (state, images, labels), carry=True)


def _timed_row(row: dict, times: list[float]) -> dict:
    median = statistics.median(times)
    return {
        **row,
        "images_per_s": row["batch"] / median,
        "step_ms": 1000 * median,
        "tflops": row["train_flops"] / median / 1e12,
        # The paper's CIFAR schedule: 120 + 100 + 50 + 50 epochs of 50,000 images.
        "hours_320_epochs": 320 * 50_000 / (row["batch"] / median) / 3600,
        "step_s": times,
        **_allocator_peak(),
    }


def train_row(
    arch: str,
    connectivity: str,
    dtype: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int,
    fan_in: int,
    num_classes: int,
    impl: str = "auto",
    compile_only: bool = False,
) -> dict:
    """One row, timed alone: ``warmup`` untimed steps, then the median of ``steps``."""
    row, stepper = build_train_row(
        arch, connectivity, dtype, batch=batch, image_size=image_size, fan_in=fan_in,
        num_classes=num_classes, impl=impl,
    )  # fmt: skip
    if compile_only:
        return row
    for _ in range(warmup):
        stepper.step()
    return _timed_row(row, [stepper.step() for _ in range(steps)])


def train_rows(
    arch: str, connectivities, dtype: str, *, steps: int, warmup: int, **spec
) -> list[dict]:
    """The rows of ``connectivities`` timed **interleaved** (one step of each per round,
    ``harness.interleave``), so that their ratios do not depend on when each ran: timed one
    after the other, a machine whose speed drifts between rows moves the ratios (a 27%
    disagreement with an interleaved timing of the same steps was seen that way)."""
    built = {c: build_train_row(arch, c, dtype, **spec) for c in connectivities}
    times = harness.interleave(
        {c: stepper.step for c, (_, stepper) in built.items()}, rounds=steps, warmup=warmup
    )
    return [_timed_row(row, times[c]) for c, (row, _) in built.items()]


def inference_rows(
    arch: str,
    dtype: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int,
    fan_in: int,
    num_classes: int,
    impl: str = "auto",
) -> list[dict]:
    """Eval-mode forward of a ``random`` K=``fan_in`` network, unpruned and pruned."""
    net = _network(arch, "random", dtype, fan_in, num_classes, impl)
    variables = models.init(jax.random.key(0), net)
    conn = np.asarray(variables["connectivity"])
    images, _ = _batch(batch, image_size, num_classes)
    pruned = prune.drop_dead_blocks(net, variables["params"], variables["batch_stats"], conn)
    rows = []
    for name, model, params, stats, connectivity in (
        ("unpruned", net, variables["params"], variables["batch_stats"], jnp.asarray(conn)),
        ("pruned", pruned.net, pruned.params, pruned.batch_stats, pruned.connectivity),
    ):

        def forward(params, stats, images, connectivity, model=model):
            return models.apply(
                model, params, stats, images, connectivity=connectivity, train=False
            )[0]

        fn = jax.jit(forward)
        args = (params, stats, images, connectivity)
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
        times = harness.time_calls(compiled, args, steps=steps, warmup=warmup, carry=False)
        rows.append(
            {
                "what": f"inference {name}",
                "arch": arch,
                "connectivity": f"random K={fan_in}",
                "dtype": dtype,
                "batch": batch,
                "impl": blocks.resolve_branch_impl(impl),
                "compile_s": compile_s,
                "images_per_s": batch / statistics.median(times),
                "step_ms": 1000 * statistics.median(times),
                "flops_per_image": _forward_flops(model, image_size),
                "live_blocks": [int(k.sum()) for k in pruned.live],
            }
        )
    before, after = rows
    before["speedup"] = 1.0
    after["speedup"] = after["images_per_s"] / before["images_per_s"]
    after["flops_ratio"] = before["flops_per_image"] / after["flops_per_image"]
    return rows


def input_row(*, batch: int, steps: int, image_size: int) -> dict:
    """The in-memory input pipeline alone (CIFAR-sized data, CIFAR augmentation): does it
    keep up with the train step?"""
    rng = np.random.default_rng(0)
    shape = (50_000, image_size, image_size, 3)
    data = sources.InMemoryData(
        name="cifar10",
        train_images=rng.integers(0, 256, shape, dtype=np.uint8),
        train_labels=rng.integers(0, 10, shape[0]).astype(np.int32),
        test_images=rng.integers(0, 256, (batch, *shape[1:]), dtype=np.uint8),
        test_labels=np.zeros(batch, np.int32),
        num_classes=10,
    )
    source = in_memory.InMemoryInput(
        data,
        seed=0,
        batch_size=batch,
        eval_batch_size=batch,
        key=jax.random.key(0),
        image_size=image_size,
    )
    jax.block_until_ready(source.train_batch(0))  # compiles
    steps = max(steps, 10)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        out = source.train_batch(step)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / steps
    return {
        "what": "input pipeline",
        "arch": "-",
        "connectivity": "-",
        "dtype": "uint8 -> float32",
        "batch": batch,
        "impl": "on device",
        "images_per_s": batch / seconds,
        "step_ms": 1000 * seconds,
    }


# --- PyTorch baseline rows (benchmarks/torch_reference.py; kept apart from the mcjax rows) ---


def torch_rows(
    archs, dtypes, batches, *, steps, warmup, image_size, num_classes, device, modes=("eager",)
) -> list[dict]:
    """The public-form PyTorch ResNeXt (torchvision's for ``resnext*``), each task in its
    fastest setting of {channels_last, contiguous} x ``modes``; ``impl`` names the setting."""
    harness.torch_configure(device)
    rows = []
    for arch in archs:
        for dtype in dtypes:
            for batch in batches:
                result = harness.torch_benchmark(
                    arch,
                    batch=batch,
                    steps=steps,
                    warmup=warmup,
                    image_size=image_size,
                    num_classes=num_classes,
                    device=device,
                    dtype=dtype,
                    modes=modes,
                )
                common = {
                    "connectivity": "full",
                    **{k: result[k] for k in ("arch", "dtype", "batch")},
                }
                rows.append(
                    {
                        "what": "train (PyTorch)",
                        **common,
                        "impl": f"torch {result['train_setting']}",
                        "images_per_s": result["train_images_per_s"],
                        "step_ms": result["train_ms"],
                        "tflops": 3 * result["forward_flops"] * result["train_images_per_s"] / 1e12,
                        "hours_320_epochs": 320 * 50_000 / result["train_images_per_s"] / 3600,
                        "peak_mib_allocator": result["peak_memory_mib"],
                        "torch": result,
                    }
                )
                rows.append(
                    {
                        "what": "inference (PyTorch)",
                        **common,
                        "impl": f"torch {result['infer_setting']}",
                        "images_per_s": result["infer_images_per_s"],
                        "step_ms": result["infer_ms"],
                    }
                )
    return rows


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        "| what | arch | connectivity | dtype | batch | impl | img/s | step ms | compile s "
        "| TFLOP/s | peak MiB | 320 epochs h | note |\n|" + "---|" * 13
    )
    lines = [head]
    for r in rows:
        note = ""
        if "flops_ratio" in r:
            note = f"speed-up {r['speedup']:.2f}x, FLOPs ratio {r['flops_ratio']:.2f}x"
        elif "ratio_to_full" in r:
            note = f"{r['ratio_to_full']:.2f}x full's step time"
        elif "ratio_to_torch" in r:
            note = f"{r['ratio_to_torch']:.2f}x PyTorch's img/s"
        lines.append(
            f"| {r['what']} | {r['arch']} | {r['connectivity']} | {r['dtype']} | {r['batch']} "
            f"| {r.get('impl', 'torch')} | {_fmt(r.get('images_per_s'), '.1f')} "
            f"| {_fmt(r.get('step_ms'), '.0f')} | {_fmt(r.get('compile_s'), '.1f')} "
            f"| {_fmt(r.get('tflops'), '.3f')} "
            f"| {_fmt(r.get('peak_mib_allocator', r.get('peak_mib_compiled')), '.0f')} "
            f"| {_fmt(r.get('hours_320_epochs'), '.1f')} | {note} |"
        )
    return "\n".join(lines)


def _ratios(rows: list[dict]) -> None:
    """Step time relative to ``full`` (same arch, dtype, batch) and img/s relative to torch."""

    def key(r):
        return r["arch"], r["dtype"], r["batch"]

    full = {key(r): r for r in rows if r["what"] == "train" and r["connectivity"] == "full"}
    torch = {key(r): r for r in rows if r["what"] == "train (PyTorch)"}
    for r in rows:
        if r["what"] != "train" or "step_ms" not in r:
            continue
        if r["connectivity"] != "full" and key(r) in full:
            r["ratio_to_full"] = r["step_ms"] / full[key(r)]["step_ms"]
        elif r["connectivity"] == "full" and key(r) in torch:
            r["ratio_to_torch"] = r["images_per_s"] / torch[key(r)]["images_per_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["20,4,8", "29,8,8"])
    parser.add_argument(
        "--connectivity",
        nargs="+",
        default=list(CONNECTIVITIES),
        choices=[*models.CONNECTIVITIES, "full_per_branch_bn"],
    )
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", nargs="+", type=int, default=[128])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--fan_in", type=int, default=4, help="K of learned/random")
    parser.add_argument("--prune_fan_in", type=int, default=1, help="K of the pruned model")
    parser.add_argument("--impl", default="auto", help="branch formulation (blocks.py)")
    parser.add_argument("--compile_only", nargs="*", default=[], help="archs: compile time only")
    parser.add_argument("--torch", action="store_true", help="PyTorch rows for full")
    parser.add_argument(
        "--torch_modes", nargs="+", default=["eager", "compile"], help="eager and/or compile"
    )
    parser.add_argument("--no_inference", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few minutes on a small CPU")
    parser.add_argument("--out", default="benchmarks/throughput.json")
    parser.add_argument("--malloc", default="default", choices=harness.MALLOC_SETTINGS)
    args = parser.parse_args(argv)
    harness.apply_malloc(args.malloc)  # before JAX starts its threads
    if args.quick:
        args.arch, args.batch, args.steps, args.warmup = ["20,4,8"], [64], 3, 1
        args.compile_only = args.compile_only or ["29,64,8"]
        args.torch = args.torch or _torch_available()
        args.torch_modes = ["eager"]  # torch.compile takes minutes on a small CPU
    torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"

    record = {"machine": harness.machine_record(), "args": vars(args), "rows": []}
    rows = record["rows"]
    started = time.perf_counter()
    common = dict(image_size=args.image_size, fan_in=args.fan_in, num_classes=args.num_classes)
    for arch in args.arch:
        for dtype in args.dtype:
            for batch in args.batch:
                load = harness.load_average()
                for row in train_rows(
                    arch,
                    args.connectivity,
                    dtype,
                    batch=batch,
                    steps=args.steps,
                    warmup=args.warmup,
                    impl=args.impl,
                    **common,
                ):
                    rows.append({**row, "load_average": load})
                    _progress(rows[-1], started)
            if not args.no_inference:
                rows += inference_rows(
                    arch,
                    dtype,
                    batch=max(args.batch),
                    steps=args.steps,
                    warmup=args.warmup,
                    image_size=args.image_size,
                    fan_in=args.prune_fan_in,
                    num_classes=args.num_classes,
                    impl=args.impl,
                )
                _progress(rows[-1], started)
    rows.append(input_row(batch=max(args.batch), steps=args.steps, image_size=args.image_size))
    _progress(rows[-1], started)
    for arch in args.compile_only:
        for connectivity in ("full", "learned"):
            rows.append(
                train_row(
                    arch,
                    connectivity,
                    "float32",
                    batch=max(args.batch),
                    steps=0,
                    warmup=0,
                    impl=args.impl,
                    compile_only=True,
                    **common,
                )
            )
            _progress(rows[-1], started)
    if args.torch and "full" in args.connectivity:
        rows += torch_rows(
            args.arch,
            args.dtype,
            args.batch,
            steps=args.steps,
            warmup=args.warmup,
            image_size=args.image_size,
            num_classes=args.num_classes,
            device=torch_device,
            modes=args.torch_modes,
        )
        import torch

        record["machine"]["torch"] = torch.__version__
        record["machine"]["torch_threads"] = torch.get_num_threads()
    _ratios(rows)
    record["seconds"] = time.perf_counter() - started
    print(json.dumps(record["machine"]))
    print(table(rows))
    print(f"total {record['seconds']:.0f} s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1, default=float)
    return 0


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _progress(row: dict, started: float) -> None:
    speed = f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row else "compiled"
    print(
        f"[{time.perf_counter() - started:6.0f} s] {row['what']} {row['arch']} "
        f"{row['connectivity']} {row['dtype']} b{row['batch']}: {speed}, "
        f"compile {row.get('compile_s', 0):.1f} s",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
