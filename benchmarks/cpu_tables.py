r"""Every CPU table of benchmarks/RESULTS.md, before and after, in one prepared run.

    python benchmarks/cpu_tables.py --cores 1 0,1          # the whole run (see --plan)
    python benchmarks/cpu_tables.py --cores 1 --plan       # what it would run, and how long
    python benchmarks/cpu_tables.py --cores 1 --quick      # a smoke test: tiny, minutes

For each core set of ``--cores`` (``1``: one pinned core, ``0,1``: two), everything below runs
with every process pinned to that set (``taskset``), after the load average is recorded; a
run that starts with a load average over ``--max_load`` is marked as measured under load.
Timings are interleaved (``benchmarks/harness.py``): every variant runs one step per round in
its own persistent worker process (``benchmarks/worker.py``), the parent alternating between
them, so that the "before" code (another checkout, ``--base``), the "after" code (this one),
the allocator settings, the XLA flags and PyTorch all see the same machine; ratios are formed
within one such run only.

1. **probes**: the machine's float32 matmul rate and its bandwidth writing a fresh buffer and
   writing in place, under the default allocator and under ``harness.tune_malloc``;
2. **networks**: ``20,4,8`` and ``29,8,8`` at batch 32 and ``29,64,8`` at batch 8 (the
   masked modes' C streams of ``29,64,8`` need GBs at 32), ``full``/``learned`` (and
   ``random`` at ``29,8,8``), each as the base
   code, this code, and this code under the tuned allocator, next to the public PyTorch
   ResNeXt (eager, both memory layouts); compile time and XLA's peak memory per mode; then
   the per-class profile of every mode before and after (``benchmarks/op_classes.py``)
   next to its floor (``benchmarks/floor.py`` with the probes' rates);
3. **formulations** (``29,8,8`` and ``20,4,8``): ``full`` and ``learned`` in every CPU
   formulation ``auto`` chooses from, and with XLA's Eigen convolutions instead of YNNPACK's
   (``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``);
4. **resnext50_32x4d** at 224, batch 8: ``full`` before and after against torchvision's;
5. **agreement**: ``benchmarks/throughput.py`` (sequential rows, the real train step) and
   ``benchmarks/api_timing.py`` (interleaved, the public API only) run as their own
   processes on the same cores; their step ratios to ``full`` must agree within 15%.

Writes ``OUT/cpu_tables_<cores>.json`` (every step time, every record) and ``OUT/summary.md``
(the tables). ``--plan`` prints the stages and the expected time (on the quiet 2-core VM of
RESULTS.md: about 28 minutes for one pinned core and 18 for two).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import floor  # noqa: E402
import harness  # noqa: E402

ROOT = os.path.dirname(HERE)
BASE_COMMIT = "a04f20f"
# What `auto` chooses from on CPU, per mode (the masked modes' 1x1 convolutions are
# per-branch products in every formulation but loop).
FORMULATION_CHOICES = (("full", ("loop", "einsum", "merged")), ("learned", ("einsum", "merged")))
EIGEN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# (arch, batch, modes, rounds, warmup): the network stage.
NETWORKS = [
    ("20,4,8", 32, ("full", "learned"), 8, 2),
    ("29,8,8", 32, ("full", "learned", "random"), 8, 2),
    ("29,64,8", 8, ("full", "learned"), 4, 1),
]
QUICK_NETWORKS = [("11,2,4", 8, ("full", "learned", "random"), 3, 1)]
# Expected minutes per stage on the quiet 2-core VM (one pinned core, two cores).
EXPECTED_MIN = {  # as measured on the quiet 2-core VM, 2026-12-03
    "probes": (0.5, 0.5),
    "20,4,8": (6, 3),
    "29,8,8": (11, 6),
    "29,64,8": (7.5, 4.5),
    "formulations": (16, 0),
    "resnext50_32x4d": (4, 3),
    "agreement": (5, 2.5),
}


class Run:
    """One core set's run: its workers, its records, its log."""

    def __init__(self, cores: list[int], args) -> None:
        self.cores, self.args = cores, args
        self.label = "one pinned core" if len(cores) == 1 else f"{len(cores)} cores"
        self.log_path = os.path.join(args.out, f"workers_{_cores_name(cores)}.log")
        self.record = {
            "cores": cores,
            "label": self.label,
            "base": args.base,
            "stages": {},
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.started = time.time()

    def say(self, message: str) -> None:
        elapsed = time.time() - self.started
        print(f"[{self.label} {elapsed:6.0f} s] {message}", file=sys.stderr, flush=True)

    def worker(self, name: str, code: str, *, malloc="default", xla_flags="", torch=False):
        path = self.args.base if code == "base" else ROOT
        return harness.Worker(
            name,
            pythonpath=path,
            cores=self.cores,
            malloc=malloc,
            xla_flags=xla_flags,
            torch_threads=len(self.cores) if torch else None,
            log=self.log_path,
        )

    def load(self) -> dict:
        load = harness.load_average()
        return {"load_average": load, "under_load": load > self.args.max_load}


def _cores_name(cores) -> str:
    return "core" + "_".join(str(c) for c in cores)


@contextlib.contextmanager
def _workers(*workers):
    try:
        yield workers
    finally:
        for worker in workers:
            worker.close()


def _interleaved(run: Run, entries: dict, rounds: int, warmup: int) -> dict:
    """Median, all step times and images/s of every entry, timed interleaved."""
    load = run.load()
    times = harness.interleave(
        {name: worker.stepper(name) for name, (worker, _) in entries.items()},
        rounds=rounds,
        warmup=warmup,
    )
    rows = {}
    for name, (_, info) in entries.items():
        rows[name] = {
            **info,
            "step_ms": harness.median_ms(times[name]),
            "step_ms_all": [1000 * t for t in times[name]],
        }
        if "batch" in info:
            rows[name]["images_per_s"] = info["batch"] / (rows[name]["step_ms"] / 1000)
    return {"rows": rows, **load, "load_after": harness.load_average()}


# --- Stages ------------------------------------------------------------------------------


def probes(run: Run) -> dict:
    result = {}
    for malloc in harness.MALLOC_SETTINGS:
        with _workers(run.worker(f"probe-{malloc}", "new", malloc=malloc)) as (worker,):
            entries = {}
            for n, k, m in ((4096, 1024, 1024), (32768, 256, 256), (32768, 64, 128)):
                name = f"matmul {n}x{k}x{m}"
                info = worker.build(name, "matmul", n=n, k=k, m=m)
                entries[name] = (worker, info)
            for mib in (16, 64, 256):
                for fresh in (True, False):
                    name = f"write {mib} MiB {'fresh' if fresh else 'in place'}"
                    entries[name] = (worker, worker.build(name, "write", mib=mib, fresh=fresh))
            timed = _interleaved(run, entries, rounds=10, warmup=3)
        for row in timed["rows"].values():
            seconds = row["step_ms"] / 1000
            if "flops" in row:
                row["gflops"] = row["flops"] / seconds / 1e9
            else:
                row["gb_per_s"] = row["bytes"] / seconds / 1e9
        result[malloc] = timed
    rows = {s: result[s]["rows"] for s in harness.MALLOC_SETTINGS}
    result["matmul_gflops"] = max(
        r["gflops"] for s in rows for r in rows[s].values() if "gflops" in r
    )
    # The floor's bandwidth: writing in place, the better of the two allocator settings
    # (in place should not depend on the allocator; fresh buffers do).
    result["bandwidth_in_place_gbs"] = max(
        statistics.median(r["gb_per_s"] for n, r in rows[s].items() if "in place" in n)
        for s in rows
    )
    result["bandwidth_fresh_gbs"] = statistics.median(
        r["gb_per_s"] for n, r in rows["default"].items() if "fresh" in n
    )
    result["bandwidth_fresh_tuned_gbs"] = statistics.median(
        r["gb_per_s"] for n, r in rows["tuned"].items() if "fresh" in n
    )
    run.say(
        f"probes: matmul {result['matmul_gflops']:.0f} GFLOP/s, write in place "
        f"{result['bandwidth_in_place_gbs']:.1f} GB/s, fresh {result['bandwidth_fresh_gbs']:.1f}"
    )
    return result


def network(run: Run, arch: str, batch: int, modes, rounds: int, warmup: int, rates) -> dict:
    variants = (("base", "default"), ("new", "default"), ("new", "tuned"))
    workers = {v: run.worker(f"{v[0]}-{v[1]}", v[0], malloc=v[1]) for v in variants}
    torch_worker = run.worker("torch", "new", torch=True)
    with _workers(*workers.values(), torch_worker):
        entries = {}
        for (code, malloc), worker in workers.items():
            for mode in modes:
                name = f"{mode} {code} {malloc}"
                info = worker.build(name, "train", arch=arch, connectivity=mode, batch=batch)
                entries[name] = (
                    worker,
                    {**info, "batch": batch, "mode": mode, "code": code, "malloc": malloc},
                )
                run.say(f"{arch} {name}: compiled in {info['compile_s']:.0f} s")
        for layout in ("channels_last", "contiguous"):
            name = f"torch {layout}"
            info = torch_worker.build(name, "torch", arch=arch, batch=batch, layout=layout)
            entries[name] = (torch_worker, {**info, "batch": batch, "layout": layout})
        result = _interleaved(run, entries, rounds, warmup)
        run.say(f"{arch}: timed {rounds} rounds")
        if arch != "29,64,8" or run.args.profile_29_64_8:
            result["profiles"] = {
                name: worker.call("profile", entry=name, steps=2)
                for name, (worker, _) in entries.items()
                if not name.startswith("torch")
            }
    result["floors"] = floors(arch, batch, modes, rates)
    return result


def floors(arch: str, batch: int, modes, rates) -> dict:
    out = {}
    for row in floor.table(arch, modes, batch=batch):
        out[row["mode"]] = {
            **row,
            "floor_ms": floor.floor_ms(
                row["bytes"],
                row["flops"],
                bandwidth_gbs=rates["bandwidth_in_place_gbs"],
                matmul_gflops=rates["matmul_gflops"],
            ),
            "bytes_ms": 1e3 * row["bytes"] / (rates["bandwidth_in_place_gbs"] * 1e9),
            "flops_ms": 1e3 * row["flops"] / (rates["matmul_gflops"] * 1e9),
        }
    return out


def formulations(run: Run, arch: str, batch: int) -> dict:
    ynn = run.worker("new-tuned", "new", malloc="tuned")
    eigen = run.worker("new-tuned-eigen", "new", malloc="tuned", xla_flags=EIGEN_CONVOLUTIONS)
    with _workers(ynn, eigen):
        entries = {}
        for worker, flags in ((ynn, "YNNPACK"), (eigen, "Eigen")):
            for mode, impls in FORMULATION_CHOICES:
                for impl in impls:
                    if flags == "Eigen" and impl == "loop":
                        continue
                    name = f"{mode} {impl} {flags}"
                    info = worker.build(
                        name, "train", arch=arch, connectivity=mode, batch=batch, impl=impl
                    )
                    entries[name] = (
                        worker,
                        {**info, "batch": batch, "mode": mode, "convolutions": flags},
                    )
        result = _interleaved(run, entries, rounds=6, warmup=1)
    run.say(f"formulations {arch}: done")
    return result


def resnext50(run: Run) -> dict:
    spec = dict(
        arch="resnext50_32x4d", connectivity="full", batch=8, image_size=224, num_classes=1000
    )
    base = run.worker("base-default", "base")
    new = run.worker("new-tuned", "new", malloc="tuned")
    torch_worker = run.worker("torch", "new", torch=True)
    with _workers(base, new, torch_worker):
        entries = {
            "full base default": (
                base,
                {**base.build("full base default", "train", **spec), "batch": 8},
            ),
            "full new tuned": (new, {**new.build("full new tuned", "train", **spec), "batch": 8}),
        }
        for layout in ("channels_last", "contiguous"):
            name = f"torch {layout}"
            info = torch_worker.build(
                name,
                "torch",
                arch="resnext50_32x4d",
                batch=8,
                image_size=224,
                num_classes=1000,
                layout=layout,
            )
            entries[name] = (torch_worker, {**info, "batch": 8, "layout": layout})
        result = _interleaved(run, entries, rounds=3, warmup=1)
    run.say("resnext50_32x4d: done")
    return result


def agreement(run: Run, arch: str, batch: int) -> dict:
    """throughput.py and api_timing.py as their own processes, ratios to full compared."""
    taskset = ["taskset", "-c", ",".join(str(c) for c in run.cores)]
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "throughput.json")
        load = run.load()
        command = [
            *taskset,
            sys.executable,
            os.path.join(HERE, "throughput.py"),
            "--arch",
            arch,
            "--batch",
            str(batch),
            "--dtype",
            "float32",
            "--connectivity",
            "full",
            "learned",
            "random",
            "--no_inference",
            "--out",
            out,
        ]
        subprocess.run(command, env=env, check=True, cwd=ROOT, capture_output=True, text=True)
        with open(out) as f:
            rows = json.load(f)["rows"]
    through = {r["connectivity"]: r["step_ms"] for r in rows if r["what"] == "train"}
    command = [
        *taskset,
        sys.executable,
        os.path.join(HERE, "api_timing.py"),
        "--arch",
        arch,
        "--batch",
        str(batch),
        "--json",
    ]
    api_out = subprocess.run(command, env=env, check=True, cwd=ROOT, capture_output=True, text=True)
    api = json.loads(api_out.stdout.strip().splitlines()[-1])["step_ms"]
    ratios = {}
    for mode in ("learned", "random"):
        a, b = through[mode] / through["full"], api[mode] / api["full"]
        ratios[mode] = {"throughput": a, "api": b, "disagreement": abs(a / b - 1)}
    run.say(
        "agreement: "
        + ", ".join(f"{m}/full {r['throughput']:.2f} vs {r['api']:.2f}" for m, r in ratios.items())
    )
    return {"throughput_ms": through, "api_ms": api, "ratios": ratios, **load}


# --- The summary -------------------------------------------------------------------------


def _ms(row) -> str:
    return f"{row['step_ms']:,.0f}"


def summary(records: list[dict]) -> str:
    lines = ["# CPU tables", ""]
    for record in records:
        stages = record["stages"]
        machine = record.get("machine", {})
        lines += [
            f"## {record['label']} (cores {record['cores']})",
            "",
            f"{machine.get('cpu', '')}, jax {machine.get('jax', '?')}, torch "
            f"{machine.get('torch', '?')}; started {record['started']}, base `{record['base']}`.",
            "",
        ]
        if "probes" in stages:
            p = stages["probes"]
            lines += [
                f"Probes: float32 matmul {p['matmul_gflops']:.0f} GFLOP/s; writing in place "
                f"{p['bandwidth_in_place_gbs']:.1f} GB/s; into a fresh buffer "
                f"{p['bandwidth_fresh_gbs']:.1f} GB/s with the default allocator, "
                f"{p['bandwidth_fresh_tuned_gbs']:.1f} GB/s tuned. Every probe (GB/s, "
                "default / tuned): "
                + ", ".join(
                    f"{n} {r['gb_per_s']:.1f} / {p['tuned']['rows'][n]['gb_per_s']:.1f}"
                    for n, r in p["default"]["rows"].items()
                    if "gb_per_s" in r
                ),
                "",
            ]
        for arch, batch, modes, _, _ in NETWORKS + QUICK_NETWORKS:
            if arch not in stages:
                continue
            lines += _network_table(arch, batch, modes, stages[arch])
        for key in stages:
            if key.startswith("formulations"):
                lines += _simple_table(f"Formulations, {key.split()[-1]}", stages[key])
        if "resnext50_32x4d" in stages:
            lines += _simple_table("resnext50_32x4d, 224, batch 8", stages["resnext50_32x4d"])
        if "agreement" in stages:
            a = stages["agreement"]
            lines += ["### throughput.py against the public-API timing", ""]
            lines += [
                "| ratio | throughput.py | api_timing.py | disagreement |",
                "|---|---|---|---|",
            ]
            for mode, r in a["ratios"].items():
                lines.append(
                    f"| {mode}/full | {r['throughput']:.2f} | {r['api']:.2f} "
                    f"| {100 * r['disagreement']:.0f}% |"
                )
            lines.append("")
    return "\n".join(lines)


def _network_table(arch, batch, modes, stage) -> list[str]:
    rows = stage["rows"]
    torch_ms = min(r["step_ms"] for n, r in rows.items() if n.startswith("torch"))
    out = [
        f"### {arch}, batch {batch} (load average {stage['load_average']:.2f}"
        + (", **under load**" if stage["under_load"] else "")
        + ")",
        "",
        "| code | malloc | mode | img/s | step ms | vs full | vs PyTorch (img/s) | compile s "
        "| peak MiB | floor ms | x floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if name.startswith("torch"):
            continue
        mode, code, malloc = name.split()
        full = rows[f"full {code} {malloc}"]["step_ms"]
        fl = stage["floors"].get(mode, {})
        out.append(
            f"| {code} | {malloc} | {mode} | {row['images_per_s']:.1f} | {_ms(row)} "
            f"| {row['step_ms'] / full:.2f} | {torch_ms / row['step_ms']:.2f} "
            f"| {row.get('compile_s', 0):.0f} | {row.get('peak_mib_compiled', 0):,.0f} "
            f"| {fl.get('floor_ms', 0):,.0f} | {row['step_ms'] / fl['floor_ms']:.2f} |"
            if fl
            else f"| {code} | {malloc} | {mode} | {row['images_per_s']:.1f} | {_ms(row)} |||||"
        )
    for name, row in rows.items():
        if name.startswith("torch"):
            out.append(
                f"| PyTorch | | {row['layout']} | {row['images_per_s']:.1f} | {_ms(row)} "
                "| | | | | | |"
            )
    out.append("")
    for mode in modes:
        base, new = rows.get(f"{mode} base default"), rows.get(f"{mode} new default")
        tuned = rows.get(f"{mode} new tuned")
        if base and new and tuned:
            out.append(
                f"- {mode}: speed-up over the base code {base['step_ms'] / new['step_ms']:.2f}x "
                f"(both with the default allocator), {base['step_ms'] / tuned['step_ms']:.2f}x "
                "with the tuned allocator; learned/random and learned/full are in the table."
            )
    if "profiles" in stage:
        out += [
            "",
            "Per class of operation (ms per step; floor: bytes at the in-place "
            "bandwidth + FLOPs at the matmul rate):",
            "",
        ]
        names = list(stage["profiles"])
        out.append("| class | " + " | ".join(names) + " |")
        out.append("|---|" + "---|" * len(names))
        classes = next(iter(stage["profiles"].values()))["class_ms"]
        for kind in classes:
            values = [stage["profiles"][n]["class_ms"].get(kind, 0.0) for n in names]
            if max(values) >= 1:
                out.append(f"| {kind} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")
        out.append(
            "| total | "
            + " | ".join(f"{stage['profiles'][n]['total_ms']:,.0f}" for n in names)
            + " |"
        )
        out.append(
            "| floor (bytes + FLOPs) | "
            + " | ".join(
                f"{stage['floors'][n.split()[0]]['bytes_ms']:,.0f} + "
                f"{stage['floors'][n.split()[0]]['flops_ms']:,.0f}"
                for n in names
            )
            + " |"
        )
    out.append("")
    return out


def _simple_table(title, stage) -> list[str]:
    out = [
        f"### {title} (load average {stage['load_average']:.2f})",
        "",
        "| variant | img/s | step ms | compile s |",
        "|---|---|---|---|",
    ]
    for name, row in stage["rows"].items():
        out.append(
            f"| {name} | {row.get('images_per_s', 0):.2f} | {_ms(row)} "
            f"| {row.get('compile_s', 0):.0f} |"
        )
    out.append("")
    return out


# --- Main --------------------------------------------------------------------------------


def _plan(args) -> list[tuple[str, float]]:
    stages = []
    for cores in args.cores:
        two = len(cores) > 1
        for stage, minutes in EXPECTED_MIN.items():
            if (stage == "formulations" and two) or stage not in args.stages:
                continue
            stages.append((f"{_cores_name(cores)}: {stage}", minutes[1 if two else 0]))
    return stages


@contextlib.contextmanager
def _base_checkout(args):
    """``args.base``, or a temporary worktree of ``args.base_commit``."""
    if args.base:
        yield args.base
        return
    path = tempfile.mkdtemp(prefix="mcjax-base-")
    os.rmdir(path)
    subprocess.run(
        ["git", "-C", ROOT, "worktree", "add", "--detach", path, args.base_commit],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "remove", "--force", path], capture_output=True
        )
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", nargs="+", default=["1", "0,1"], help="core sets, e.g. 1 0,1")
    parser.add_argument(
        "--base",
        default=None,
        help="checkout of the code before (default: a temporary worktree of --base_commit)",
    )
    parser.add_argument("--base_commit", default=BASE_COMMIT)
    parser.add_argument("--out", default=os.path.join(HERE, "results", time.strftime("cpu-%Y%m%d")))
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--stages", nargs="+", default=list(EXPECTED_MIN))
    parser.add_argument("--profile_29_64_8", action="store_true")
    parser.add_argument("--quick", action="store_true", help="11,2,4 only: a smoke test")
    parser.add_argument("--plan", action="store_true", help="print the stages and exit")
    args = parser.parse_args(argv)
    args.cores = [[int(c) for c in text.split(",")] for text in args.cores]
    plan = _plan(args)
    print("\n".join(f"  {name}: ~{minutes:g} min" for name, minutes in plan))
    print(f"expected: ~{sum(m for _, m in plan):.0f} min on the quiet 2-core VM")
    if args.plan:
        return 0
    os.makedirs(args.out, exist_ok=True)
    networks = QUICK_NETWORKS if args.quick else NETWORKS
    records = []
    with _base_checkout(args) as base:
        args.base = base
        for cores in args.cores:
            run = Run(cores, args)
            stages = run.record["stages"]
            with _workers(run.worker("machine", "new")) as (probe_worker,):
                run.record["machine"] = probe_worker.call("machine")["machine"]
            rates = {"matmul_gflops": 1.0, "bandwidth_in_place_gbs": 1.0}
            if "probes" in args.stages:
                stages["probes"] = probes(run)
                rates = stages["probes"]
            for arch, batch, modes, rounds, warmup in networks:
                if arch in args.stages or args.quick:
                    if args.quick:
                        rounds, warmup = 2, 1
                    stages[arch] = network(run, arch, batch, modes, rounds, warmup, rates)
                    _save(args.out, run, records)
            if "formulations" in args.stages and len(cores) == 1:
                shapes = (("11,2,4", 8),) if args.quick else (("29,8,8", 32), ("20,4,8", 32))
                for arch, batch in shapes:
                    stages[f"formulations {arch}"] = formulations(run, arch, batch)
                    _save(args.out, run, records)
            if "resnext50_32x4d" in args.stages and not args.quick:
                stages["resnext50_32x4d"] = resnext50(run)
            if "agreement" in args.stages:
                arch, batch = ("11,2,4", 8) if args.quick else ("29,8,8", 32)
                stages["agreement"] = agreement(run, arch, batch)
            run.record["seconds"] = time.time() - run.started
            records.append(run.record)
            _save(args.out, run, records, final=True)
    print(summary(records))
    return 0


def _save(out: str, run: Run, records: list[dict], final: bool = False) -> None:
    path = os.path.join(out, f"cpu_tables_{_cores_name(run.cores)}.json")
    with open(path, "w") as f:
        json.dump(run.record, f, indent=1, default=float)
    done = records if final else [*records, run.record]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary(done) + "\n")


if __name__ == "__main__":
    sys.exit(main())
