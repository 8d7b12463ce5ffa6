r"""Where a compiled step's time goes, by class of operation.

:func:`trace_totals` sums the operations of a ``jax.profiler`` trace per operation name;
:func:`classify` puts each operation into a class (:data:`CLASSES`) by reading its
instruction in the compiled HLO (``compiled.as_text()``):

* what it computes: a convolution (with its window: 3x3 or 1x1), a matrix product, a
  reduction, a layout copy (transpose/copy), a concatenation or slice, elementwise work;
* where in the source it comes from: the HLO's stack frames name the Python functions, so
  the mask aggregation (``mcjax.masks``: ``aggregate``, ``_mix``), the shared projection
  (``mcjax.blocks.shortcut``) and the optimizer (optax) are told apart from the rest;
* forward or backward: JAX names the backward pass ``transpose(jvp(...))``.

XLA:CPU hands convolutions and matrix products to YNNPACK inside ``ynn_fusion`` operations;
a fusion is classed by everything it contains. Works on the HLO of any mcjax version.
"""

from __future__ import annotations

import collections
import glob
import os
import re

CLASSES = (
    "3x3 conv forward",
    "3x3 conv backward",
    "1x1 conv / matmul forward",
    "1x1 conv / matmul backward",
    "projection shortcut (forward and backward)",
    "mask aggregation (mix and its gradients)",
    "weight gradients (convolutions and products)",
    "BN statistics and other reductions",
    "elementwise (BN, ReLU, adds)",
    "elementwise written transposed (fused layout change)",
    "layout copies (transpose / copy)",
    "concatenate / slice / pad",
    "optimizer update",
    "other",
)

# Trace events of the runtime around the operations (dispatch, argument handling).
_NOT_OPERATIONS = (
    "PjitFunction",
    "PjRt",
    "CommonPjRt",
    "Thunk",
    "$",
    "jit_",
    "Execute",
    "ParseArguments",
    "Handle inputs",
)


def trace_totals(trace_dir: str) -> dict[str, float]:
    """Microseconds per XLA operation name in the profiler trace under ``trace_dir`` (its
    ``.xplane.pb``; events that are not operations are left out by :func:`classify`)."""
    from jax._src.lib import _profile_data  # the profiler's reader of its own files

    totals: dict[str, float] = collections.defaultdict(float)
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        data = _profile_data.ProfileData.from_file(path)
        for plane in data.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for event in line.events:
                    totals[event.name] += event.duration_ns / 1e3
    return {k: v for k, v in totals.items() if not k.startswith(_NOT_OPERATIONS)}


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([\w-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")
_WINDOW_TEXT = re.compile(r"window=\{[^}]*\}")
_OPERANDS = re.compile(r"%([\w.\-]+)")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")

_AGGREGATION = {"aggregate", "_aggregate", "_aggregate_fwd", "_aggregate_bwd", "_mix"}
_OPTIMIZER_FILES = ("optax", "optim.py")


class Hlo:
    """The parts of an HLO module's text that :func:`classify` reads."""

    def __init__(self, text: str) -> None:
        self.instructions: dict[str, dict] = {}
        self.computations: dict[str, list[str]] = collections.defaultdict(list)
        tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
        table = None
        current = None
        line_is_entry = False
        self.parameter_sizes: set[int] = set()
        for line in text.splitlines():
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                table = line
                continue
            if table is not None:
                row = _TABLE_ROW.match(line)
                if row:
                    tables[table][int(row.group(1))] = row.group(2)
                    continue
                table = None
            if not line.startswith(" ") and "{" in line and not line.startswith("HloModule"):
                match = _COMPUTATION.match(line)
                current = match.group(1) if match else None
                line_is_entry = line.startswith("ENTRY")
                continue
            match = _INSTRUCTION.match(line)
            if not match or current is None:
                continue
            name, shape, opcode = match.groups()
            dims = _SHAPE.match(shape)
            frame = _FRAME.search(line)
            calls = _CALLS.search(line)
            window = _WINDOW.search(line)
            op_name = _OP_NAME.search(line)
            operands = (
                _OPERANDS.findall(line.split("(", 1)[1].split(")", 1)[0]) if "(" in line else []
            )
            window_text = _WINDOW_TEXT.search(line)
            large_window = bool(window) and max(int(window.group(1)), int(window.group(2))) > 3
            self.instructions[name] = {
                "name": name,
                "operands": operands,
                "weight_gradient": opcode == "convolution"
                and (large_window or bool(window_text and "rhs_dilate" in window_text.group(0))),
                "opcode": opcode,
                "dims": tuple(int(d) for d in dims.group(1).split(",") if d) if dims else (),
                "calls": calls.group(1) if calls else None,
                "frame": int(frame.group(1)) if frame else None,
                "window": (int(window.group(1)), int(window.group(2))) if window else None,
                "op_name": op_name.group(1) if op_name else "",
            }
            self.computations[current].append(name)
            if (
                opcode == "parameter"
                and line_is_entry
                and len(self.instructions[name]["dims"]) >= 2
            ):
                size = 1
                for d in self.instructions[name]["dims"]:
                    size *= d
                self.parameter_sizes.add(size)
        self._frames = self._resolve_frames(tables)

    @staticmethod
    def _resolve_frames(tables) -> dict[int, tuple[set[str], set[str]]]:
        """stack frame id -> (function names, file names) of the frame and its parents."""
        files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
        functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
        locations = {
            k: {f: int(n) for f, n in _FIELD.findall(v)} for k, v in tables["FileLocations"].items()
        }
        frames = {
            k: {f: int(n) for f, n in _FIELD.findall(v)} for k, v in tables["StackFrames"].items()
        }
        resolved = {}
        for frame_id in frames:
            names, file_names, seen, current = set(), set(), set(), frame_id
            while current in frames and current not in seen:
                seen.add(current)
                location = locations.get(frames[current].get("file_location_id"), {})
                names.add(functions.get(location.get("function_name_id"), ""))
                file_names.add(files.get(location.get("file_name_id"), ""))
                current = frames[current].get("parent_frame_id")
            resolved[frame_id] = (names, file_names)
        return resolved

    def members(self, name: str, seen=None) -> list[dict]:
        """The instruction ``name`` and, for a fusion or call, every instruction inside."""
        seen = set() if seen is None else seen
        if name in seen or name not in self.instructions:
            return []
        seen.add(name)
        instruction = self.instructions[name]
        found = [instruction]
        if instruction["calls"]:
            for inner in self.computations.get(instruction["calls"], ()):
                found += self.members(inner, seen)
        return found

    def backward(self, name: str) -> bool:
        """Whether ``name`` (or what feeds it) belongs to the backward pass."""
        instruction = self.instructions[name]
        if "transpose(" in instruction["op_name"]:
            return True
        for member in self.members(name):
            if "transpose(" in member["op_name"]:
                return True
        for operand in instruction["operands"]:
            if "transpose(" in self.instructions.get(operand, {}).get("op_name", ""):
                return True
        return False

    def origin(self, instructions: list[dict]) -> tuple[set[str], set[str]]:
        names, files = set(), set()
        for instruction in instructions:
            frame = self._frames.get(instruction["frame"])
            if frame:
                names |= frame[0]
                files |= frame[1]
        return names, files


def classify_instruction(name: str, hlo: Hlo) -> str | None:
    """The class (:data:`CLASSES`) of the operation named ``name`` in ``hlo``; None when
    ``name`` is no instruction of it (a runtime event)."""
    if name not in hlo.instructions:
        return None
    instruction = hlo.instructions[name]
    members = hlo.members(name)
    opcodes = {m["opcode"] for m in members}
    key = [m for m in members if m["opcode"] in ("dot", "convolution")]
    if key:
        functions, _ = hlo.origin([instruction, *key])
        if functions & _AGGREGATION:
            return "mask aggregation (mix and its gradients)"
        if "shortcut" in functions:
            return "projection shortcut (forward and backward)"
        if any(m["weight_gradient"] for m in key) or _kernel_output(instruction, key, hlo):
            return "weight gradients (convolutions and products)"
        backward = hlo.backward(name)
        windows = {m["window"] for m in key if m["opcode"] == "convolution"}
        if windows and not windows <= {(1, 1)}:
            return "3x3 conv " + ("backward" if backward else "forward")
        return "1x1 conv / matmul " + ("backward" if backward else "forward")
    if any(marker in f for f in hlo.origin([instruction])[1] for marker in _OPTIMIZER_FILES):
        return "optimizer update"
    arithmetic = opcodes & {"add", "multiply", "subtract", "maximum", "select", "divide", "negate"}
    if opcodes & {"reduce", "reduce-window"}:
        return "BN statistics and other reductions"
    if opcodes & {"transpose", "copy"}:
        if arithmetic:
            return "elementwise written transposed (fused layout change)"
        return "layout copies (transpose / copy)"
    if opcodes & {"concatenate", "slice", "pad", "dynamic-slice", "dynamic-update-slice"}:
        return "elementwise (BN, ReLU, adds)" if arithmetic else "concatenate / slice / pad"
    if arithmetic:
        return "elementwise (BN, ReLU, adds)"
    return "other"


def _kernel_output(instruction: dict, key: list[dict], hlo: Hlo) -> bool:
    """A backward product whose output has as many elements as a parameter of the step
    (a weight gradient, whatever its layout)."""
    if any(m["opcode"] != "dot" for m in key) or not instruction["dims"]:
        return False
    size = 1
    for d in instruction["dims"]:
        size *= d
    return size in hlo.parameter_sizes and hlo.backward(instruction["name"])


def classify(per_op_us: dict[str, float], hlo_text: str, *, top: int = 25) -> dict:
    """Milliseconds per class and the ``top`` operations, from per-operation microseconds."""
    hlo = Hlo(hlo_text)
    by_class: dict[str, float] = dict.fromkeys(CLASSES, 0.0)
    rows = []
    for name, us in per_op_us.items():
        kind = classify_instruction(name, hlo)
        if kind is None:
            continue
        by_class[kind] += us / 1e3
        rows.append((us / 1e3, name, kind))
    rows.sort(reverse=True)
    return {
        "class_ms": by_class,
        "total_ms": sum(by_class.values()),
        "top": [{"name": n, "ms": ms, "class": k} for ms, n, k in rows[:top]],
    }
