r"""The one timing harness of the benchmark scripts.

Every script in ``benchmarks/`` times through the functions here, so that a step means the
same thing everywhere:

* **a step** is one call, fully synchronised (``jax.block_until_ready`` / the CUDA stream), its
  output state fed back as the next call's donated input; ``warmup`` calls run untimed first
  and the median of the timed calls is reported (:func:`time_calls`);
* **interleaved** timings (:func:`interleave`): every variant runs one step per round, round
  after round, so that a machine whose speed drifts (other processes, memory bandwidth, the
  allocator's state) slows every variant alike; ratios are formed within one such run only.
  Variants that need another process (another checkout of mcjax, other ``XLA_FLAGS``, other
  allocator settings, PyTorch) run in :class:`Worker` processes that the parent drives one
  step at a time;
* **the allocator** (:func:`tune_malloc`, the program's ``--host_malloc=tuned``): XLA:CPU
  allocates every large buffer of a step afresh through glibc's ``malloc``, which maps
  buffers over 32 MiB (64 MiB in a thread's arena) with ``mmap`` and unmaps them when freed,
  so each step page-faults its large buffers in again: measured on the 2-core VM, a 64 MiB
  output written at 1.2-3 GB/s against 30-40 GB/s into a reused buffer. One arena, no
  ``mmap`` and no trimming keep the pages mapped; every record says which allocator setting
  it ran under (``malloc``);
* **a machine record** (:func:`machine_record`): versions, CPU, the cores the process may run
  on, threads, ``XLA_FLAGS``, the allocator setting and the load average before the run;
* **memory**: the compiler's peak estimate for one call (:func:`compiled_peak`) and, for
  PyTorch, the process's peak RSS or CUDA's high-water mark;
* **PyTorch**: :func:`torch_benchmark` times the public baselines of
  ``benchmarks/torch_reference.py`` in their fastest ordinary setting.

This module imports neither jax nor torch at import time: the PyTorch side runs without jax
and the parent of the workers needs neither.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# --- The allocator ------------------------------------------------------------------------


def _host_memory():
    """This checkout's ``mcjax/training/host_memory.py``, loaded from its file: the program's
    own allocator setting, applied alike to workers of any checkout (the "before" code has
    no such module)."""
    path = os.path.join(ROOT, "mcjax", "training", "host_memory.py")
    spec = importlib.util.spec_from_file_location("_mcjax_host_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HOST_MEMORY = _host_memory()
# The setting for a process started from outside (``GLIBC_TUNABLES=...``).
MALLOC_TUNABLES = _HOST_MEMORY.GLIBC_TUNABLES
MALLOC_SETTINGS = ("default", "tuned")


def tune_malloc() -> bool:
    """Keeps freed memory mapped for reuse: one arena, no ``mmap``, no trimming (glibc).

    ``mcjax.training.host_memory.keep_freed_memory_mapped``, what ``python -m mcjax.main``
    does on CPU. Must run before JAX starts its thread pools (before the first computation),
    since a thread keeps the arena it first allocated from. Returns False where it cannot
    apply (not glibc). The process's memory then never shrinks: it holds its high-water mark.
    """
    return _HOST_MEMORY.keep_freed_memory_mapped()


def malloc_setting() -> str:
    """``"tuned"`` when this process runs with :data:`MALLOC_TUNABLES` or :func:`tune_malloc`."""
    if os.environ.get("GLIBC_TUNABLES", "") == MALLOC_TUNABLES:
        return "tuned"
    return "tuned" if _TUNED else "default"


_TUNED = False


def apply_malloc(setting: str) -> None:
    """Applies a :data:`MALLOC_SETTINGS` value in this process (``"default"`` changes nothing)."""
    global _TUNED
    if setting not in MALLOC_SETTINGS:
        raise ValueError(f"malloc must be one of {MALLOC_SETTINGS}, got {setting!r}")
    if setting == "tuned":
        _TUNED = tune_malloc() or _TUNED


# --- The machine ----------------------------------------------------------------------------


def load_average() -> float:
    """The one-minute load average (the figure quoted with each table)."""
    return os.getloadavg()[0]


def cores() -> list[int]:
    """The CPUs this process may run on (its affinity, e.g. from ``taskset``)."""
    return sorted(os.sched_getaffinity(0))


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """Versions, CPU, cores, threads, flags, allocator and load of this process's machine."""
    record = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores": cores(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": malloc_setting(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if "jax" in sys.modules:
        import jax
        import jaxlib

        record.update(
            jax=jax.__version__,
            jaxlib=jaxlib.__version__,
            backend=jax.default_backend(),
            device=getattr(jax.devices()[0], "device_kind", str(jax.devices()[0])),
            device_count=jax.device_count(),
        )
    if "torch" in sys.modules:
        import torch

        record.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return record


# --- JAX timing -----------------------------------------------------------------------------


def compiled_peak(compiled) -> dict:
    """XLA's estimate for one call: arguments + temporaries + outputs - aliased (MiB)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    peak = (
        analysis.argument_size_in_bytes
        + analysis.temp_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return {
        "peak_mib_compiled": peak / 2**20,
        "temp_mib_compiled": analysis.temp_size_in_bytes / 2**20,
    }


def time_calls(fn, args, *, steps: int, warmup: int, carry: bool) -> list[float]:
    """Seconds of each of ``steps`` synchronised calls after ``warmup`` untimed ones.

    ``carry``: each call's ``output[0]`` becomes the next call's first argument (a donated
    train state). Returns the per-call seconds; report their median.
    """
    import jax

    for _ in range(warmup):
        out = fn(*args)
        if carry:
            args = (out[0], *args[1:])
    jax.block_until_ready(args)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        if carry:
            args = (out[0], *args[1:])
    return times


class Stepper:
    """One compiled step and its carried state: :meth:`step` runs one synchronised call."""

    def __init__(self, fn, args: Sequence, *, carry: bool) -> None:
        self.fn, self.args, self.carry = fn, list(args), carry

    def step(self) -> float:
        import jax

        start = time.perf_counter()
        out = self.fn(*self.args)
        jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        if self.carry:
            self.args[0] = out[0]
        return seconds


# --- Interleaving -----------------------------------------------------------------------------


def interleave(
    steppers: dict[str, Callable[[], float]], *, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per step of every variant, one step of each per round, ``rounds`` rounds.

    ``steppers`` maps a name to a callable that runs one synchronised step and returns its
    seconds (a :class:`Stepper`'s ``step``, or a :class:`Worker`'s ``step(entry)``).
    ``warmup`` rounds run first, untimed. The order inside a round alternates direction from
    round to round, so that no variant always follows the same one.
    """
    names = list(steppers)
    for _ in range(warmup):
        for name in names:
            steppers[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            times[name].append(steppers[name]())
    return times


def median_ms(times: Sequence[float]) -> float:
    return 1000 * statistics.median(times)


class WorkerError(RuntimeError):
    """A worker process reported an error or died."""


class Worker:
    """A benchmark process (``benchmarks/worker.py``) driven over its stdin/stdout.

    Args:
      name: a label for the records.
      pythonpath: where this worker imports ``mcjax`` from (another checkout for the
        "before" code); the benchmarks directory itself is always on its path.
      cores: CPUs to pin it to (``taskset``); None: no pinning.
      xla_flags: its ``XLA_FLAGS``.
      malloc: a :data:`MALLOC_SETTINGS` value, applied before JAX starts.
      torch_threads: PyTorch's thread count in this worker (default: its cores).
      env: more environment variables.
      log: where the worker's stderr goes (a path), default inherited.
    """

    def __init__(
        self,
        name: str,
        *,
        pythonpath: str = ROOT,
        cores: Sequence[int] | None = None,
        xla_flags: str = "",
        malloc: str = "default",
        torch_threads: int | None = None,
        env: dict | None = None,
        log: str | None = None,
    ) -> None:
        self.name = name
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, HERE])
        env["XLA_FLAGS"] = xla_flags
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("GLIBC_TUNABLES", None)
        command = [sys.executable, os.path.join(HERE, "worker.py"), "--malloc", malloc]
        if torch_threads is not None:
            command += ["--torch_threads", str(torch_threads)]
        if cores is not None:
            command = ["taskset", "-c", ",".join(str(c) for c in cores), *command]
        self._log = open(log, "a") if log else None  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.info = self.call("hello")

    def call(self, op: str, **request) -> dict:
        """Sends one request, returns the worker's reply (raises :class:`WorkerError`)."""
        if self.process.poll() is not None:
            raise WorkerError(f"worker {self.name} exited with {self.process.returncode}")
        self.process.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise WorkerError(f"worker {self.name} died during {op!r}")
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY) :])
                if "error" in reply:
                    raise WorkerError(f"worker {self.name}, {op!r}: {reply['error']}")
                return reply

    def build(self, entry: str, kind: str, **spec) -> dict:
        """Compiles (or builds) ``entry``, a step of ``kind`` (see ``worker.py``)."""
        return self.call("build", entry=entry, kind=kind, **spec)

    def step(self, entry: str) -> float:
        return self.call("step", entry=entry)["seconds"]

    def stepper(self, entry: str) -> Callable[[], float]:
        return lambda: self.step(entry)

    def drop(self, entry: str) -> None:
        self.call("drop", entry=entry)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, WorkerError):
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Lines a worker writes to stdout that carry a reply (anything else there is ignored).
REPLY = "@@reply "


# --- PyTorch timing ---------------------------------------------------------------------------

TORCH_LAYOUTS = ("channels_last", "contiguous")
TORCH_MODES = ("eager", "compile")


def torch_configure(device: str, *, threads: int | None = None, tf32: bool = True) -> None:
    """Threads (default: every core this process may use) and, on CUDA, cuDNN autotuning and
    TF32."""
    import torch

    torch.set_num_threads(threads or len(cores()) or 1)
    if torch.device(device).type == "cuda":
        # XLA autotunes convolution algorithms when it compiles; this is eager PyTorch's
        # equivalent, paid in the first step.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _torch_synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _torch_timed(fn: Callable[[], object], device) -> float:
    _torch_synchronize(device)
    start = time.perf_counter()
    fn()
    _torch_synchronize(device)
    return time.perf_counter() - start


def torch_peak_memory_mib(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    # Process-wide and never reset: the largest so far in this process.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return maxrss / scale, "process max RSS"


def torch_optimizer(model, device):
    """``torch.optim.SGD`` as ``mcjax.optim.weight_sgd``: decay added to the gradient before
    momentum, on every parameter (``fused`` on CUDA)."""
    import torch

    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False)
    if device.type == "cuda":
        with contextlib.suppress(TypeError, RuntimeError):
            return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    return torch.optim.SGD(model.parameters(), **kwargs)


def torch_steps(
    arch: str,
    *,
    layout: str,
    mode: str,
    batch: int,
    image_size: int,
    num_classes: int,
    device,
    dtype: str,
    formulation: str = "grouped",
) -> tuple[Callable[[], None], Callable[[], None], dict]:
    """``(train_step, infer_step, info)`` of the baseline model of ``arch`` in one setting.

    A train step is forward, cross-entropy, backward and :func:`torch_optimizer`'s step;
    inference is ``eval()`` under ``torch.inference_mode``. ``bfloat16`` runs under
    ``torch.autocast`` with float32 parameters, as mcjax's ``dtype=bfloat16``.
    """
    import torch
    import torch.nn.functional as F
    import torch_reference

    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model, source = torch_reference.baseline_model(arch, num_classes, formulation=formulation)
    model = model.to(device, memory_format=memory_format)
    images = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch_optimizer(model, device)
    forward = torch.compile(model) if mode == "compile" else model

    def autocast() -> contextlib.AbstractContextManager:
        if dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses: list = []

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        del losses[:-1]

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            forward(images)

    info = {
        "source": source,
        "params": torch_reference.count_params(model),
        "losses": losses,
    }
    return train_step, infer_step, info


def torch_time_setting(
    arch: str,
    *,
    layout: str,
    mode: str,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int,
    num_classes: int,
    device,
    dtype: str,
    formulation: str = "grouped",
    train: bool = True,
    infer: bool = True,
) -> dict:
    """Times one setting (memory layout x eager/compile) of the baseline model of ``arch``."""
    import torch

    train_step, infer_step, info = torch_steps(
        arch,
        layout=layout,
        mode=mode,
        batch=batch,
        image_size=image_size,
        num_classes=num_classes,
        device=device,
        dtype=dtype,
        formulation=formulation,
    )
    row = {"layout": layout, "mode": mode, "source": info["source"], "params": info["params"]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if train:
        row["train_first_s"] = _torch_timed(train_step, device)
        for _ in range(warmup):
            train_step()
        times = [_torch_timed(train_step, device) for _ in range(steps)]
        row["train_ms_all"] = [1000 * t for t in times]
        row["train_ms"] = 1000 * statistics.median(times)
        row["train_images_per_s"] = batch / statistics.median(times)
        row["final_loss"] = float(info["losses"][-1])
        row["peak_memory_mib"], row["peak_memory_kind"] = torch_peak_memory_mib(device)
    if infer:
        row["infer_first_s"] = _torch_timed(infer_step, device)
        for _ in range(warmup):
            infer_step()
        times = [_torch_timed(infer_step, device) for _ in range(steps)]
        row["infer_ms_all"] = [1000 * t for t in times]
        row["infer_ms"] = 1000 * statistics.median(times)
        row["infer_images_per_s"] = batch / statistics.median(times)
    return row


def torch_benchmark(
    arch: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    image_size: int | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    layouts: Sequence[str] = TORCH_LAYOUTS,
    modes: Sequence[str] = TORCH_MODES,
    formulation: str = "grouped",
    train: bool = True,
    infer: bool = True,
    deadline: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Times every setting in ``layouts x modes`` and reports the fastest for each task.

    A setting whose compilation or run raises is recorded with its ``error``; settings not
    started before ``deadline`` (a ``time.time()`` value) are recorded as ``skipped``.

    Returns:
      ``{"arch", ..., "settings": [per-setting rows], "train_images_per_s", "train_ms",
      "train_setting", "infer_images_per_s", "infer_ms", "infer_setting", "forward_flops"}``,
      the two best taken over the settings that ran.
    """
    import torch
    import torch_reference

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if steps < 1 or warmup < 0 or batch < 1:
        raise ValueError("need steps >= 1, warmup >= 0, batch >= 1")
    for name, values, allowed in (
        ("layouts", layouts, TORCH_LAYOUTS),
        ("modes", modes, TORCH_MODES),
    ):
        if not values or set(values) - set(allowed):
            raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
    dev = torch.device(device)
    num_classes = torch_reference.default_num_classes(arch) if num_classes is None else num_classes
    image_size = torch_reference.default_image_size(arch) if image_size is None else image_size
    result = {
        "arch": arch,
        "framework": "torch",
        "device": str(dev),
        "dtype": dtype,
        "batch": batch,
        "image_size": image_size,
        "num_classes": num_classes,
        "formulation": formulation,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "forward_flops": torch_reference.forward_flops(
            arch, image_size=image_size, num_classes=num_classes
        ),
        "settings": [],
    }
    for mode in modes:
        for layout in layouts:
            name = f"{layout}+{mode}"
            if deadline is not None and time.time() > deadline:
                result["settings"].append({"layout": layout, "mode": mode, "skipped": "deadline"})
                continue
            try:
                row = torch_time_setting(
                    arch,
                    layout=layout,
                    mode=mode,
                    batch=batch,
                    steps=steps,
                    warmup=warmup,
                    image_size=image_size,
                    num_classes=num_classes,
                    device=dev,
                    dtype=dtype,
                    formulation=formulation,
                    train=train,
                    infer=infer,
                )
            except Exception as error:  # a backend that cannot compile this model, say
                if mode == "eager":
                    raise
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                row = {"layout": layout, "mode": mode, "error": message}
            result["settings"].append(row)
            if log is not None:
                log(_setting_line(arch, dtype, batch, name, row))
    for task in ("train", "infer"):
        ran = [r for r in result["settings"] if f"{task}_images_per_s" in r]
        if ran:
            best = max(ran, key=lambda r, task=task: r[f"{task}_images_per_s"])
            result[f"{task}_images_per_s"] = best[f"{task}_images_per_s"]
            result[f"{task}_ms"] = best[f"{task}_ms"]
            result[f"{task}_setting"] = f"{best['layout']}+{best['mode']}"
            result["source"] = best["source"]
            result["params"] = best["params"]
            if task == "train":
                result["peak_memory_mib"] = best["peak_memory_mib"]
                result["peak_memory_kind"] = best["peak_memory_kind"]
    return result


def _setting_line(arch: str, dtype: str, batch: int, name: str, row: dict) -> str:
    if "error" in row or "skipped" in row:
        return f"  {arch} {dtype} b{batch} {name}: {row.get('error', row.get('skipped'))}"
    parts = [f"  {arch} {dtype} b{batch} {name}:"]
    if "train_images_per_s" in row:
        parts.append(f"train {row['train_images_per_s']:.1f} img/s")
        parts.append(f"(first step {row['train_first_s']:.1f} s)")
    if "infer_images_per_s" in row:
        parts.append(f"infer {row['infer_images_per_s']:.1f} img/s")
    return " ".join(parts)


def torch_machine_record(device: str = "cpu") -> dict:
    """:func:`machine_record` plus torchvision and the CUDA device, when there is one."""
    import torch

    record = machine_record()
    record.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    record["cuda_device"] = None
    with contextlib.suppress(ImportError):
        import torchvision

        record["torchvision"] = torchvision.__version__
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        record["cuda_device"] = torch.cuda.get_device_name(torch.device(device).index or 0)
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    return record
