r"""A benchmark worker process, driven one request at a time by ``harness.Worker``.

    python benchmarks/worker.py [--malloc tuned] [--torch_threads N]   # (started by harness)

Reads JSON requests from stdin, one a line, and answers each with one line
``@@reply {json}`` on stdout (errors as ``{"error": ...}``; logs go to stderr). It imports
``mcjax`` from its ``PYTHONPATH`` (the harness points it at the checkout under test: the
"before" code of a comparison runs in a worker of its own), and uses only what every
version of mcjax here has: ``mcjax.models``, ``mcjax.optim``, ``mcjax.costs``,
``mcjax.training.steps``.

Requests (``op``):

* ``hello``: the process id and where ``mcjax`` will be imported from; ``machine``: the
  machine record (``harness.machine_record``);
* ``build``: ``entry`` (a name), ``kind`` and its spec; compiles and keeps one step:

  - ``train``: the real train step (``mcjax.training.steps.train_step``, donated state) of
    ``arch``, ``connectivity`` (a mode, or ``full_per_branch_bn``), ``dtype``, ``batch``,
    ``impl``, ``fan_in``, ``image_size``, ``num_classes``; replies with the compile time,
    the compiled peak memory, the resolved formulation and the step's FLOPs;
  - ``api``: the same step written from the public API alone (``api_timing.build_step``);
  - ``torch``: a PyTorch baseline train step (``harness.torch_steps``) of ``arch``,
    ``layout``, ``batch``, ``formulation``;
  - ``matmul``: ``[n, k] @ [k, m]`` in float32 (the machine's matmul rate);
  - ``write``: writes ``mib`` MiB, into a fresh buffer (``fresh: true``) or in place (a
    donated buffer): the memory bandwidth for fresh and reused buffers;

* ``step``: one synchronised step of ``entry``, replies ``seconds`` and ``page_faults``
  (minor page faults during the step: freshly mapped pages it touched);
* ``profile``: a ``jax.profiler`` trace of ``steps`` steps of a ``train``/``api`` entry,
  replies the time per operation class (``op_classes.classify``);
* ``drop``: forget ``entry``; ``quit``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


def _reply(message: dict) -> None:
    sys.stdout.write(harness.REPLY + json.dumps(message, default=float) + "\n")
    sys.stdout.flush()


class Server:
    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}

    # --- requests ---

    def hello(self, request) -> dict:
        spec = importlib.util.find_spec("mcjax")
        return {"pid": os.getpid(), "mcjax": os.path.dirname(spec.origin) if spec else None}

    def machine(self, request) -> dict:
        """The machine record, with the versions of jax (and torch, if loaded)."""
        import contextlib

        import jax  # noqa: F401  (the record names its version)

        with contextlib.suppress(ImportError):
            import torch  # noqa: F401

        return {"machine": harness.machine_record()}

    def build(self, request) -> dict:
        kind = request["kind"]
        builder = getattr(self, f"_build_{kind}")
        start = time.perf_counter()
        entry, info = builder(request)
        info["build_s"] = time.perf_counter() - start
        self.entries[request["entry"]] = entry
        return info

    def step(self, request) -> dict:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = self.entries[request["entry"]]["stepper"].step()
        # Minor page faults: pages of freshly mapped memory touched during the step.
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return {"seconds": seconds, "page_faults": faults}

    def drop(self, request) -> dict:
        self.entries.pop(request["entry"], None)
        import gc

        gc.collect()
        return {}

    def profile(self, request) -> dict:
        import jax
        import op_classes

        entry = self.entries[request["entry"]]
        steps = request.get("steps", 2)
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp):
                for _ in range(steps):
                    entry["stepper"].step()
            per_op = op_classes.trace_totals(tmp)
        per_op = {name: us / steps for name, us in per_op.items()}
        return op_classes.classify(per_op, entry["hlo"])

    # --- builders ---

    def _build_train(self, request):
        import functools

        import jax

        from mcjax import blocks, costs, models, optim
        from mcjax.architectures import get_architecture
        from mcjax.training import steps as training_steps

        connectivity = request["connectivity"]
        per_branch_bn = connectivity == "full_per_branch_bn"
        mode = "full" if per_branch_bn else connectivity
        net = models.Network(
            get_architecture(request["arch"]),
            num_classes=request.get("num_classes", 100),
            connectivity=mode,
            fan_in=request.get("fan_in", 4),
            dtype=models.DTYPES[request.get("dtype", "float32")],
            branch_impl=request.get("impl", "auto"),
            full_per_branch_bn=per_branch_bn,
        )
        tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)
        state = jax.jit(training_steps.create_state, static_argnums=(0, 1))(
            net, tx, jax.random.key(0)
        )
        images, labels = _batch(request)
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
        compile_s = time.perf_counter() - start
        flops = costs.network_costs(
            net.arch,
            image_size=request.get("image_size", 32),
            num_classes=net.num_classes,
            per_block_inputs=mode != "full",
            per_branch_bn=net.per_branch_bn3,
        )["flops_per_image"]
        entry = {
            "stepper": harness.Stepper(compiled, (state, images, labels), carry=True),
            "hlo": compiled.as_text(),
        }
        info = {
            "compile_s": compile_s,
            "impl": blocks.resolve_branch_impl(net.branch_impl),
            "train_flops": 3 * flops * request["batch"],
            **harness.compiled_peak(compiled),
            **_cost_analysis(compiled),
        }
        return entry, info

    def _build_api(self, request):
        import api_timing

        step, state, images, labels = api_timing.build_step(
            request["arch"],
            request["connectivity"],
            batch=request["batch"],
            fan_in=request.get("fan_in", 4),
            num_classes=request.get("num_classes", 100),
        )
        start = time.perf_counter()
        compiled = step.lower(state, images, labels).compile()
        compile_s = time.perf_counter() - start
        entry = {
            "stepper": harness.Stepper(compiled, (state, images, labels), carry=True),
            "hlo": compiled.as_text(),
        }
        return entry, {"compile_s": compile_s, **harness.compiled_peak(compiled)}

    def _build_torch(self, request):
        import torch

        train_step, infer_step, info = harness.torch_steps(
            request["arch"],
            layout=request.get("layout", "channels_last"),
            mode="eager",
            batch=request["batch"],
            image_size=request.get("image_size", 32),
            num_classes=request.get("num_classes", 100),
            device=torch.device("cpu"),
            dtype=request.get("dtype", "float32"),
            formulation=request.get("formulation", "grouped"),
        )
        fn = infer_step if request.get("task") == "infer" else train_step
        entry = {"stepper": _Timed(fn)}
        return entry, {
            "source": info["source"],
            "params": info["params"],
            "threads": torch.get_num_threads(),
        }

    def _build_matmul(self, request):
        import jax
        import jax.numpy as jnp

        n, k, m = request["n"], request["k"], request["m"]
        a = jax.random.normal(jax.random.key(0), (n, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, m), jnp.float32)
        fn = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
        return {"stepper": harness.Stepper(fn, (a, b), carry=False)}, {"flops": 2 * n * k * m}

    def _build_write(self, request):
        import jax
        import jax.numpy as jnp

        size = int(request["mib"] * 2**20) // 4
        x = jnp.ones((size,), jnp.float32)
        if request.get("fresh", True):
            fn = jax.jit(lambda x: x * 0.5 + 1.0).lower(x).compile()
            stepper = harness.Stepper(fn, (x,), carry=False)
        else:
            fn = jax.jit(lambda x: (x * 0.5 + 1.0,), donate_argnums=0).lower(x).compile()
            stepper = harness.Stepper(fn, (x,), carry=True)
        # Read once and written once per call.
        return {"stepper": stepper}, {"bytes": 2 * 4 * size}


class _Timed:
    """A PyTorch step with the :class:`harness.Stepper` interface."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def step(self) -> float:
        start = time.perf_counter()
        self.fn()
        return time.perf_counter() - start


def _batch(request):
    import jax

    size, classes = request.get("image_size", 32), request.get("num_classes", 100)
    images = jax.random.normal(jax.random.key(1), (request["batch"], size, size, 3))
    labels = jax.random.randint(jax.random.key(2), (request["batch"],), 0, classes)
    return images, labels


def _cost_analysis(compiled) -> dict:
    """XLA's own count of the compiled step: FLOPs and bytes accessed by its operations."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend has one
        return {}
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return {
        "xla_flops": float(analysis.get("flops", 0.0)),
        "xla_bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--malloc", default="default", choices=harness.MALLOC_SETTINGS)
    parser.add_argument("--torch_threads", type=int, default=None)
    args = parser.parse_args(argv)
    harness.apply_malloc(args.malloc)  # before JAX starts its threads
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            _reply({})
            break
        try:
            _reply(getattr(server, op)(request))
        except Exception as error:
            traceback.print_exc()
            _reply({"error": f"{type(error).__name__}: {error}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
