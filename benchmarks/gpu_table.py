r"""The GPU table: mcjax next to the public PyTorch ResNeXt, against a measured bf16 peak.

Run through ``benchmarks/gpu.sh`` (which gives each stage its deadline); the stages are::

    python benchmarks/gpu_table.py torch   --out DIR --deadline T  # peak + eager baselines
    python benchmarks/gpu_table.py jax     --out DIR --deadline T  # peak + picks + mcjax rows
    python benchmarks/gpu_table.py compile --out DIR --deadline T  # torch.compile, if time is left
    python benchmarks/gpu_table.py report  --out DIR               # Markdown from DIR/rows.jsonl

Every measurement is appended to ``DIR/rows.jsonl`` as soon as it is made, so a stage stopped
at its limit loses only the row it was on, and ``report`` prints whatever was measured. A
stage starts a row only if the row's predicted duration (the last one of the same network,
or a first guess) ends before ``--deadline`` (a ``time.time()`` value).

What is measured (``--tiny`` swaps in networks and batches small enough for a CPU dry run):

* the bf16 matmul peak, ``8192 x 8192 x 8192`` on random data, through PyTorch and through
  JAX (median of timed products); TFLOP/s of every row are reported against the larger;
* PyTorch: the public ResNeXt (``benchmarks/torch_reference.py``; torchvision's
  ``resnext50_32x4d``) in bf16 autocast and in float32 (timed by ``benchmarks/harness.py``),
  train and inference, in both memory layouts eager,
  then ``torch.compile`` in the faster layout if time is left; on the CIFAR networks also
  the per-branch formulation (C ordinary convolutions per layer) against the grouped one;
* mcjax: the train step (``throughput.train_row``: the real ``train_step``, donated state)
  of ``full``, ``learned`` and ``random`` (K=4) in bf16 and float32 (``29,64,8`` at batch
  128, ``resnext50_32x4d`` at 224 and batch 256). Each backend's branch formulation
  is picked by measurement: at the first batch size every candidate of ``--impls`` is timed
  for ``full`` (shared input) and ``learned`` (per-block inputs), the faster is used for the
  other rows (``random`` takes ``learned``'s). XLA:GPU's grouped-convolution backward has a
  known slow path (jax-ml/jax#13800), so ``grouped`` is not assumed. Order (what a short
  budget keeps), per dtype (bfloat16 first): the picks and ``random`` at the first batch
  size, ``resnext50_32x4d`` ``full`` (grouped, then the CIFAR pick), further batch sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402

CONNECTIVITIES = ("full", "learned", "random")
# The H200 table, and a tiny one for a CPU dry run of every code path in a couple of minutes.
CONFIGS = {
    "h200": {
        "archs": ["29,64,8"],
        "batches": [128],
        "image_size": 32,
        "num_classes": 100,
        "resnext": "resnext50_32x4d",
        "resnext_batches": [256],
        "resnext_image_size": 224,
        "steps": 20,
        "warmup": 3,
        "matmul": 8192,
        "dtypes": ["bfloat16", "float32"],
        "fan_in": 4,  # K of learned and random (the paper's, with C = 8)
        "first_guess_s": 45.0,
    },
    "tiny": {
        "archs": ["11,2,4"],
        "batches": [4, 8],
        "image_size": 16,
        "num_classes": 10,
        "resnext": "resnext50_2x1d",
        "resnext_batches": [2],
        "resnext_image_size": 32,
        "steps": 1,
        "warmup": 0,
        "matmul": 512,
        "dtypes": ["float32"],  # XLA:CPU and PyTorch's CPU autocast are slow in bfloat16
        "fan_in": 2,
        "first_guess_s": 10.0,
    },
}


def _append(out: str, record: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rows.jsonl"), "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Budget:
    """Starts a task only if its predicted duration ends before the deadline."""

    def __init__(self, deadline: float | None, first_guess_s: float) -> None:
        self.deadline = deadline
        self.first_guess_s = first_guess_s
        self.last: dict[str, float] = {}

    def allows(self, key: str, factor: float = 1.0) -> bool:
        if self.deadline is None:
            return True
        # Unseen: as long as the longest task so far (or the first guess), times ``factor``.
        unseen = max([self.first_guess_s, *self.last.values()])
        predicted = factor * self.last.get(key, unseen)
        return time.time() + predicted < self.deadline

    def record(self, key: str, seconds: float) -> None:
        self.last[key] = seconds


# --- PyTorch ---------------------------------------------------------------------------------


def torch_matmul_peak(n: int, device: str) -> dict:
    import torch

    dtype = torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for index in range(13):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            begin = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - begin
        if index >= 3:  # warm-up: handles, kernel choice
            times.append(seconds)
    return {
        "kind": "peak",
        "framework": "torch",
        "n": n,
        "tflops": 2 * n**3 / statistics.median(times) / 1e12,
        "ms_all": [1000 * t for t in times],
    }


def torch_versions(device: str) -> dict:
    import torch

    record = {"kind": "versions", "framework": "torch", **harness.torch_machine_record(device)}
    with contextlib.suppress(Exception):
        record["nvidia_smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    record["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return record


def torch_stage(args, config: dict) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    harness.torch_configure(device)
    _append(args.out, torch_versions(device))
    peak = torch_matmul_peak(config["matmul"], device)
    _append(args.out, peak)
    _log(f"torch bf16 matmul {peak['n']}^3: {peak['tflops']:.3g} TFLOP/s")
    budget = Budget(args.deadline, config["first_guess_s"] / 3)
    common = dict(steps=config["steps"], warmup=config["warmup"], device=device)
    jobs = []
    for dtype in config["dtypes"]:
        jobs += [
            (arch, batch, config["image_size"], config["num_classes"], "grouped", dtype)
            for arch in config["archs"]
            for batch in config["batches"]
        ]
        jobs += [
            (config["resnext"], batch, config["resnext_image_size"], 1000, "grouped", dtype)
            for batch in config["resnext_batches"]
        ]
    # The formulation pick: the same networks as C ordinary convolutions per layer.
    jobs += [
        (arch, config["batches"][0], config["image_size"], config["num_classes"], "per_branch",
         config["dtypes"][0])
        for arch in config["archs"]
    ]  # fmt: skip
    for arch, batch, image_size, num_classes, formulation, dtype in jobs:
        if not budget.allows(arch):
            _append(args.out, {"kind": "skipped", "what": f"torch {arch} b{batch} {formulation}"})
            continue
        started = time.time()
        try:
            result = harness.torch_benchmark(
                arch,
                batch=batch,
                image_size=image_size,
                num_classes=num_classes,
                formulation=formulation,
                modes=("eager",),
                deadline=args.deadline,
                log=_log,
                dtype=dtype,
                **common,
            )
        except Exception as error:  # e.g. out of memory: record it, go on with the next one
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            _append(args.out, {"kind": "error", "what": f"torch {arch} b{batch}", "error": message})
            continue
        budget.record(arch, time.time() - started)
        _append(args.out, {"kind": "torch", **result})


def compile_stage(args, config: dict) -> None:
    """``torch.compile`` in each network's faster eager layout, while time is left."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    harness.torch_configure(device)
    eager = [r for r in _read(args.out) if r["kind"] == "torch" and r["formulation"] == "grouped"]
    # Every network at its first batch size before any second one.
    first_batch = {}
    for r in eager:
        first_batch[r["arch"]] = min(r["batch"], first_batch.get(r["arch"], r["batch"]))
    eager.sort(key=lambda r: r["batch"] != first_batch[r["arch"]])
    budget = Budget(args.deadline, 3 * config["first_guess_s"])
    for r in eager:
        if "train_setting" not in r:
            continue
        layout = r["train_setting"].split("+")[0]
        if not budget.allows(r["arch"]):
            _append(
                args.out, {"kind": "skipped", "what": f"torch.compile {r['arch']} b{r['batch']}"}
            )
            continue
        started = time.time()
        result = harness.torch_benchmark(
            r["arch"],
            batch=r["batch"],
            image_size=r["image_size"],
            num_classes=r["num_classes"],
            steps=r["steps"],
            warmup=r["warmup"],
            device=device,
            dtype=r["dtype"],
            layouts=(layout,),
            modes=("compile",),
            log=_log,
        )
        budget.record(r["arch"], time.time() - started)
        _append(args.out, {"kind": "torch", **result})


# --- JAX / mcjax -----------------------------------------------------------------------------


def jax_matmul_peak(n: int) -> dict:
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(jnp.dot)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(5):
        # Ten products queued back to back, one synchronisation: no host round trip in each.
        begin = time.perf_counter()
        for _ in range(10):
            product = matmul(a, b)
        jax.block_until_ready(product)
        times.append((time.perf_counter() - begin) / 10)
    return {
        "kind": "peak",
        "framework": "jax",
        "n": n,
        "tflops": 2 * n**3 / statistics.median(times) / 1e12,
        "ms_all": [1000 * t for t in times],
    }


def jax_versions() -> dict:
    import importlib.metadata

    import jax

    record = {
        "kind": "versions",
        "framework": "jax",
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    for package in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            record[package] = importlib.metadata.version(package)
    return record


def jax_stage(args, config: dict) -> None:
    import throughput

    from mcjax import blocks

    _append(args.out, jax_versions())
    peak = jax_matmul_peak(config["matmul"])
    _append(args.out, peak)
    _log(f"jax bf16 matmul {peak['n']}^3: {peak['tflops']:.3g} TFLOP/s")
    impls = [i for i in args.impls if i in blocks.BRANCH_IMPLS and i != "auto"]
    budget = Budget(args.deadline, config["first_guess_s"])

    def row(arch, connectivity, batch, impl, dtype, *, image_size, num_classes, factor=1.0):
        key = f"{arch} {dtype} {connectivity} {impl}"
        if not budget.allows(
            key if key in budget.last else arch, 1.0 if key in budget.last else factor
        ):
            _append(args.out, {"kind": "skipped", "what": f"mcjax {key} b{batch}"})
            return None
        started = time.time()
        try:
            result = throughput.train_row(
                arch,
                connectivity,
                dtype,
                batch=batch,
                steps=config["steps"],
                warmup=config["warmup"],
                image_size=image_size,
                fan_in=config["fan_in"],
                num_classes=num_classes,
                impl=impl,
            )
        except Exception as error:  # e.g. out of memory: record it, go on with the next row
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            _append(args.out, {"kind": "error", "what": f"mcjax {key} b{batch}", "error": message})
            _log(f"mcjax {key} b{batch}: {message}")
            return None
        seconds = time.time() - started
        budget.record(arch, seconds)
        budget.record(key, seconds)
        result.update(kind="mcjax", image_size=image_size, num_classes=num_classes)
        _append(args.out, result)
        _log(
            f"mcjax {key} b{batch}: {result['images_per_s']:.1f} img/s, "
            f"{result['tflops']:.1f} TFLOP/s, compile {result['compile_s']:.1f} s"
        )
        return result

    def pick(arch, dtype, connectivity, batch, timed) -> str:
        picked = min(timed, key=timed.get)
        _append(
            args.out,
            {"kind": "pick", "arch": arch, "dtype": dtype, "connectivity": connectivity,
             "batch": batch, "step_ms": timed, "picked": picked},
        )  # fmt: skip
        return picked

    cifar = dict(image_size=config["image_size"], num_classes=config["num_classes"])
    imagenet = dict(image_size=config["resnext_image_size"], num_classes=1000)
    first, rest = config["batches"][0], config["batches"][1:]
    # Every dtype's picks and ImageNet rows before any second batch size: what a short budget
    # keeps is the decision and one row of each network.
    for dtype in config["dtypes"]:
        picks: dict[tuple[str, str], str] = {}
        for arch in config["archs"]:
            for connectivity in ("full", "learned"):
                timed = {}
                for impl in impls:
                    result = row(arch, connectivity, first, impl, dtype, **cifar)
                    if result is not None:
                        timed[impl] = result["step_ms"]
                if timed:
                    picks[arch, connectivity] = pick(arch, dtype, connectivity, first, timed)
            if (arch, "learned") in picks:
                picks[arch, "random"] = picks[arch, "learned"]
                row(arch, "random", first, picks[arch, "random"], dtype, **cifar)
        # ImageNet shape, `full` only: the grouped formulation, then the CIFAR pick for `full`
        # (if it differs), as time allows.
        for batch in config["resnext_batches"]:
            timed = {}
            last_pick = picks.get((config["archs"][-1], "full"))
            for impl in dict.fromkeys(["grouped", last_pick or "grouped"]):
                factor = 4.0 if impl == "loop" else 2.0  # a larger network than the CIFAR ones
                result = row(config["resnext"], "full", batch, impl, dtype, factor=factor,
                             **imagenet)  # fmt: skip
                if result is not None:
                    timed[impl] = result["step_ms"]
            if timed:
                pick(config["resnext"], dtype, "full", batch, timed)
        for arch in config["archs"]:
            for batch in rest:
                for connectivity in CONNECTIVITIES:
                    if (arch, connectivity) in picks:
                        row(arch, connectivity, batch, picks[arch, connectivity], dtype, **cifar)


# --- Report ----------------------------------------------------------------------------------


def _read(out: str) -> list[dict]:
    path = os.path.join(out, "rows.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(out: str) -> str:
    records = _read(out)
    peaks = {r["framework"]: r["tflops"] for r in records if r["kind"] == "peak"}
    peak = max(peaks.values(), default=None)
    lines = []
    for r in records:
        if r["kind"] == "versions":
            skip = {"kind", "ms_all"}
            lines.append("- " + ", ".join(f"{k} {v}" for k, v in r.items() if k not in skip))
    lines.append(
        "- bf16 matmul peak (random data, median): "
        + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peaks.items())
    )

    # PyTorch: per (arch, batch) the fastest setting over every record (layouts, eager/compile,
    # formulations), for training and for inference separately.
    torch_best: dict[tuple[str, int], dict] = {}
    for r in records:
        if r["kind"] != "torch":
            continue
        entry = torch_best.setdefault(
            (r["arch"], r.get("dtype"), r["batch"]), {"flops": r["forward_flops"], "settings": []}
        )
        for s in r["settings"]:
            if "error" in s or "skipped" in s:
                entry["settings"].append(
                    f"{r['formulation']} {s['layout']}+{s['mode']}: "
                    + ("failed" if "error" in s else "skipped")
                )
                continue
            name = f"{r['formulation']} {s['layout']}+{s['mode']}"
            entry["settings"].append(f"{name}: {s.get('train_images_per_s', 0):.0f}")
            for task in ("train", "infer"):
                value = s.get(f"{task}_images_per_s")
                if value and value > entry.get(f"{task}_images_per_s", 0):
                    entry[f"{task}_images_per_s"] = value
                    entry[f"{task}_ms"] = s[f"{task}_ms"]
                    entry[f"{task}_setting"] = name
                    entry[f"{task}_first_s"] = s.get(f"{task}_first_s")

    mcjax = [r for r in records if r["kind"] == "mcjax"]
    picks = {
        (r["arch"], r.get("dtype"), r["connectivity"]): r for r in records if r["kind"] == "pick"
    }
    lines += [
        "",
        "| arch | batch | what | formulation / setting | train img/s | step ms | TFLOP/s "
        "| % of peak | compile / first step s | infer img/s | vs PyTorch | / full step |",
        "|" + "---|" * 12,
    ]
    keys = sorted(
        {(r["arch"], r.get("dtype"), r["batch"]) for r in mcjax} | set(torch_best),
        key=lambda k: (k[0].startswith("resnext"), k[0], str(k[1]), k[2]),
    )
    for arch, dtype, batch in keys:
        base = torch_best.get((arch, dtype, batch))
        label = arch if dtype is None else f"{arch} {dtype}"
        if base and "train_images_per_s" in base:
            tflops = 3 * base["flops"] * base["train_images_per_s"] / 1e12
            lines.append(
                f"| {label} | {batch} | PyTorch (public form) | {base['train_setting']} "
                f"| {base['train_images_per_s']:,.0f} | {base['train_ms']:.1f} | {tflops:.3g} "
                f"| {_fmt(100 * tflops / peak if peak else None, '.1f')} "
                f"| {_fmt(base.get('train_first_s'), '.1f')} "
                f"| {_fmt(base.get('infer_images_per_s'), ',.0f')} | 1.00 | |"
            )
        rows = {}
        for r in mcjax:
            if (r["arch"], r.get("dtype"), r["batch"]) != (arch, dtype, batch):
                continue
            picked = picks.get((arch, dtype, r["connectivity"]))
            chosen = picked["picked"] if picked else r["impl"]
            if r["connectivity"] == "random" and (arch, dtype, "learned") in picks:
                chosen = picks[arch, dtype, "learned"]["picked"]
            if r["impl"] == chosen or r["connectivity"] not in rows:
                rows[r["connectivity"]] = r
        full = rows.get("full")
        for connectivity in CONNECTIVITIES:
            r = rows.get(connectivity)
            if r is None:
                continue
            vs_torch = (
                r["images_per_s"] / base["train_images_per_s"]
                if base and "train_images_per_s" in base
                else None
            )
            lines.append(
                f"| {label} | {batch} | mcjax {connectivity} | {r['impl']} "
                f"| {r['images_per_s']:,.0f} | {r['step_ms']:.1f} | {r['tflops']:.3g} "
                f"| {_fmt(100 * r['tflops'] / peak if peak else None, '.1f')} "
                f"| {r['compile_s']:.1f} | | {_fmt(vs_torch, '.2f')} "
                f"| {_fmt(r['step_ms'] / full['step_ms'] if full else None, '.2f')} |"
            )
    lines += ["", "Formulation picks (train step ms at the first batch size):", ""]
    for r in records:
        if r["kind"] == "pick":
            timed = ", ".join(f"{k} {v:.1f}" for k, v in r["step_ms"].items())
            lines.append(
                f"- mcjax {r['arch']} {r.get('dtype', '')} {r['connectivity']} b{r['batch']}: "
                f"{timed} -> {r['picked']}"
            )
    for (arch, dtype, batch), base in torch_best.items():
        lines.append(
            f"- PyTorch {arch} {dtype or ''} b{batch} train img/s: " + "; ".join(base["settings"])
        )
    for r in records:
        if r["kind"] in ("skipped", "error"):
            lines.append(
                f"- {r['kind']}: {r['what']}" + (f" ({r['error']})" if "error" in r else "")
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("torch", "jax", "compile", "report"))
    parser.add_argument("--out", required=True, help="folder of rows.jsonl")
    parser.add_argument("--deadline", type=float, default=None, help="time.time() to stop by")
    parser.add_argument("--tiny", action="store_true", help="small networks: a CPU dry run")
    parser.add_argument(
        "--impls", nargs="+", default=["grouped", "merged", "loop"], help="mcjax candidates"
    )
    args = parser.parse_args(argv)
    config = CONFIGS["tiny" if args.tiny else "h200"]
    if args.tiny and args.stage == "jax":
        import jax

        # A dry run checks code paths, not speed: compile about twice as fast.
        jax.config.update("jax_disable_most_optimizations", True)
    if args.stage == "torch":
        torch_stage(args, config)
    elif args.stage == "compile":
        compile_stage(args, config)
    elif args.stage == "jax":
        jax_stage(args, config)
    else:
        text = report(args.out)
        print(text)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
