"""The training config: typed, checked once at the program's edge, and its resume rules.

``configs/*.py`` are ``ml_collections`` files with dotted overrides on the command line.
The entry points (``mcjax/main.py``, the sweep) turn the ``ConfigDict`` into a frozen
:class:`Config` with :func:`from_config_dict`, exactly once; the loop and everything below
it take the typed sections:

* :class:`ModelConfig` (``config.model``): the network; :meth:`ModelConfig.network` builds
  the :class:`~mcjax.models.Network`.
* :class:`DataConfig` (``config.data``): the data set and where it is read from.
* :class:`ScheduleConfig` (the top-level ``phase_epochs``, learning rates, batches and
  optimizer): the paper's four phases (appendix E).
* :class:`RunConfig` (``seed`` and the bookkeeping: logging, evaluation, checkpoints).

Each section checks itself on construction and raises :class:`ConfigError`, one sentence
per bad field, each naming the field as it is written on the command line (e.g.
``config.model.fan_in``), its value and what is allowed. :func:`from_config_dict` checks
every field of a ``ConfigDict`` first and reports **every** problem it found, one per line;
a field that depends on another one (the fan-in range on the architecture, the image size
on the data set, ...) is skipped while that field is itself wrong, so one mistake is never
reported twice.

Whether a field may change when a run is resumed is declared beside the field
(``_resumable()``); :data:`RESUMABLE_FIELDS` lists them. The resume rules
(:func:`check_workdir_matches`, :func:`check_checkpoint_meta`, :func:`record_start`)
compare a config with the run's history in its workdir (docs/design.md §10).

Typical use (``mcjax/main.py``)::

    try:
        config = training_config.from_config_dict(config_dict, num_devices=jax.device_count())
        training_config.check_workdir_matches(workdir, config, force=force_resume)
    except training_config.ConfigError as error:
        ...  # print it, exit with status 2
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import os
import re
import types
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import optax

from mcjax import safe_files
from mcjax.architectures import STEMS, Architecture, get_architecture
from mcjax.data import inputs, registry
from mcjax.data.types import Input
from mcjax.models import DTYPES, Network
from mcjax.training import schedule as schedule_lib
from mcjax.training.metrics import read_records
from mcjax.training.schedule import Schedule

__all__ = [
    "CONFIG_NAME",
    "DATASETS",
    "LONGEST_SHOWN",
    "MAX_SEED",
    "MAX_STEPS",
    "NUM_PHASES",
    "RESUMABLE_FIELDS",
    "RESUME_LOG_NAME",
    "Config",
    "ConfigError",
    "DataConfig",
    "FieldChecker",
    "ModelConfig",
    "RunConfig",
    "ScheduleConfig",
    "check_checkpoint_meta",
    "check_workdir_matches",
    "compute_dtype",
    "from_config_dict",
    "record_start",
    "recorded_config",
    "shown",
    "zero_init_residual",
]

_MISSING = object()

# ======================================================================== field primitives


class ConfigError(ValueError):
    """A config field has a value that cannot work.

    ``str(error)`` is one sentence per problem, one per line; each names the field
    (e.g. ``config.model.fan_in``), its value and what is allowed. ``problems`` holds
    the sentences as a tuple.
    """

    def __init__(self, problems: str | Sequence[str]):
        if isinstance(problems, str):
            problems = (problems,)
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (``bool`` and NaN/inf are not)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _choices(options: Sequence[Any]) -> str:
    return ", ".join(repr(option) for option in options)


# The longest value an error sentence echoes whole (a 100,000-character override is cut).
LONGEST_SHOWN = 200


def shown(value: Any, *, limit: int = LONGEST_SHOWN) -> str:
    """``repr(value)`` for an error sentence: at most ``limit`` characters, the rest counted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text)} characters)"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


class FieldChecker:
    """Collects the problems of one config."""

    def __init__(self, config: Any):
        self.config = config
        self.problems: list[str] = []

    # ------------------------------------------------------------------ helpers

    def get(self, path: str) -> Any:
        """The value at ``path`` (e.g. ``"model.fan_in"``), or ``_MISSING``."""
        node = self.config
        for part in path.split("."):
            node = getattr(node, part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    def bad(self, path: str, value: Any, allowed: str) -> None:
        """Records ``config.<path> is <value>, but it must be <allowed>.``."""
        self.problems.append(
            _sentence(f"config.{path} is {shown(value)}, but it must be {allowed}")
        )

    def present(self, path: str, allowed: str) -> Any:
        """The value at ``path``; records a problem and returns ``_MISSING`` if absent."""
        value = self.get(path)
        if value is _MISSING:
            self.problems.append(_sentence(f"config.{path} is missing; it must be {allowed}"))
        return value

    def positive_int(self, path: str) -> int | None:
        value = self.present(path, "a positive int")
        if value is _MISSING:
            return None
        if not _is_int(value) or value < 1:
            self.bad(path, value, "a positive int")
            return None
        return int(value)

    def number(self, path: str, allowed: str, ok) -> float | None:
        """A finite number for which ``ok(value)`` holds; else records ``allowed``."""
        value = self.present(path, allowed)
        if value is _MISSING:
            return None
        if not _is_number(value) or not ok(value):
            self.bad(path, value, allowed)
            return None
        return float(value)

    def choice(self, path: str, options: Sequence[str]) -> str | None:
        allowed = f"one of {_choices(options)}"
        value = self.present(path, allowed)
        if value is _MISSING:
            return None
        if not isinstance(value, str) or value not in options:
            self.bad(path, value, allowed)
            return None
        return value

    def boolean(self, path: str) -> None:
        value = self.present(path, "True or False")
        if value is not _MISSING and not isinstance(value, bool):
            self.bad(path, value, "True or False")

    def refused(self, path: str, value: Any, error: Exception, context: str = "") -> None:
        """Records an object's refusal of ``config.<path>`` as the field's sentence.

        ``"fan_in K must satisfy 1 <= K <= C = 8, got 9"`` becomes
        ``"config.model.fan_in is 9, but it must satisfy 1 <= K <= C = 8."``.
        """
        reason = re.sub(r",? got .*$", "", str(error).strip().rstrip("."), flags=re.S)
        if " must " in reason:
            text = f"config.{path} is {shown(value)}, but it must {reason.split(' must ', 1)[1]}"
        else:
            text = f"config.{path} is {shown(value)}, which is not valid: {reason}"
        self.problems.append(_sentence(text + context))


# ======================================================================== the rules

# The data sets: every name of the table (mcjax.data.registry).
DATASETS = tuple(registry.DATASETS)

# The protocol (paper appendix E): phase 1 trains weights and masks jointly,
# phases 2-4 fine-tune the weights with the connectivity frozen.
NUM_PHASES = 4


# Seeds that both jax.random.key and numpy accept.
MAX_SEED = 2**32 - 1

# The most steps a run may take: the step counter (TrainState.step, optax's counts) is int32.
MAX_STEPS = 2**31 - 1


class _Rules(FieldChecker):
    """The rules of mcjax's training config, one method per part of it."""

    def per_phase(self, path: str, what: str, allowed: str, ok) -> None:
        """A sequence of ``NUM_PHASES`` numbers, each with ``ok(number)``."""
        shape = (
            f"a sequence of {NUM_PHASES} numbers, {what} (phase 1: joint training of "
            "weights and masks; phases 2-4: fine-tuning with the connectivity frozen)"
        )
        value = self.present(path, shape)
        if value is _MISSING:
            return
        if not _is_sequence(value) or len(value) != NUM_PHASES:
            self.bad(path, value, shape)
            return
        for index, entry in enumerate(value):
            if not _is_number(entry) or not ok(entry):
                self.problems.append(
                    _sentence(
                        f"config.{path}[{index}] (phase {index + 1}) is {shown(entry)} in "
                        f"{shown(tuple(value))}, but it must be {allowed}"
                    )
                )

    # ------------------------------------------------------------------ sections

    def model(self) -> tuple[Architecture | None, str | None]:
        """Checks ``config.model`` by building its objects; returns the architecture and
        connectivity if valid.

        The rules live in the objects (:func:`~mcjax.architectures.get_architecture`,
        :class:`~mcjax.models.Network`, :func:`compute_dtype`, :func:`zero_init_residual`);
        each field is tried on its own (the others left at the objects' defaults), so every
        bad field gives one sentence and one bad field gives exactly one.
        """
        stems = f"'' (the architecture's own) or one of {_choices(STEMS)}"
        stem = self.present("model.stem", stems)
        stem_ok = stem is _MISSING or stem is None or stem == "" or stem in STEMS
        if stem is not _MISSING and not stem_ok:
            self.bad("model.stem", stem, stems)

        arch = None
        name = self.present("model.arch", "an architecture name such as '29,8,8'")
        if name is not _MISSING:
            if not isinstance(name, str):
                self.bad(
                    "model.arch",
                    name,
                    "a string: 'D,w,C' (e.g. '29,8,8') or 'resnext{50,101,152}_{C}x{w}d'",
                )
            else:
                try:
                    arch = get_architecture(name, stem=(stem or None) if stem_ok else None)
                except ValueError as error:
                    reason = str(error).rstrip(".")
                    self.problems.append(
                        _sentence(
                            f"config.model.arch is {shown(name)}, which is not valid: {reason}"
                        )
                    )

        # Types first: the objects compare values, they do not check types.
        strings = ("connectivity", "aggregation", "branch_impl", "dtype")
        values = {field: self.present(f"model.{field}", "a string") for field in strings}
        for field, value in values.items():
            if value is not _MISSING and not isinstance(value, str):
                self.bad(f"model.{field}", value, "a string")
                values[field] = _MISSING
        mask_init = self.present("model.mask_init", "a number in [0, 1]")
        if mask_init is not _MISSING and not _is_number(mask_init):
            self.bad("model.mask_init", mask_init, "a number in [0, 1]")
            mask_init = _MISSING

        # Each field on a network that is otherwise the objects' defaults.
        probe = arch or get_architecture("11,2,4")
        network_fields = {
            "connectivity": values["connectivity"],
            "aggregation": values["aggregation"],
            "branch_impl": values["branch_impl"],
            "mask_init": mask_init,
        }
        valid: dict[str, Any] = {}
        for field, value in network_fields.items():
            if value is _MISSING:
                continue
            kwargs = {field: float(value) if field == "mask_init" else value}
            if field == "connectivity":
                kwargs["fan_in"] = 1  # every cardinality allows K = 1
            try:
                Network(probe, num_classes=1, **kwargs)
            except ValueError as error:
                self.refused(f"model.{field}", value, error)
            else:
                valid[field] = value
        if values["dtype"] is not _MISSING:
            try:
                compute_dtype(values["dtype"])
            except ValueError as error:
                self.refused("model.dtype", values["dtype"], error)

        zero_init = self.present("model.zero_init_residual", "'auto', True or False")
        if zero_init is not _MISSING:
            try:
                zero_init_residual(zero_init, connectivity="learned")
            except ValueError as error:
                self.refused("model.zero_init_residual", zero_init, error)

        self.boolean("model.full_per_branch_bn")

        connectivity = valid.get("connectivity")
        fan_in = self.present("model.fan_in", "an int K with 1 <= K <= C")
        if fan_in is not _MISSING:
            if not _is_int(fan_in):
                self.bad("model.fan_in", fan_in, "an int K with 1 <= K <= C")
            elif connectivity is not None and arch is not None:
                try:
                    Network(arch, num_classes=1, connectivity=connectivity, fan_in=int(fan_in))
                except ValueError as error:
                    self.refused(
                        "model.fan_in",
                        fan_in,
                        error,
                        f" (C is the cardinality of architecture {arch.name!r}; connectivity "
                        f"{connectivity!r}; only 'full' ignores K)",
                    )
        return arch, connectivity

    def data(self) -> None:
        name = self.choice("data.name", DATASETS)
        num_classes = self.positive_int("data.num_classes")
        image_size = self.positive_int("data.image_size")
        channels = self.positive_int("data.channels")
        data_dir = self.get("data.data_dir")  # optional
        if data_dir not in (_MISSING, None) and not isinstance(data_dir, str):
            self.bad("data.data_dir", data_dir, "a string ('' for the default)")
        if name is None:
            return
        spec = registry.get(name)
        if spec.crops and spec.load is not None:  # an image folder: resized, then cropped
            # Options a config may leave out (None in a DataConfig: the loader's default).
            if self.get("data.folder_image_size") not in (_MISSING, None):
                spec = dataclasses.replace(
                    spec, stored_size=self.positive_int("data.folder_image_size")
                )
            for field in ("train_per_class", "test_per_class"):
                if self.get(f"data.{field}") not in (_MISSING, None):
                    self.positive_int(f"data.{field}")
        problem = (
            None
            if None in (image_size, spec.stored_size) and spec.crops
            else (spec.image_size_problem(image_size) if image_size is not None else None)
        )
        if problem:
            self.bad("data.image_size", image_size, problem)
        if channels is not None and channels != spec.channels:
            kind = "grayscale" if spec.channels == 1 else "RGB"
            self.bad("data.channels", channels, f"{spec.channels} for {name} ({kind} images)")
        if None not in (spec.num_classes, num_classes) and num_classes != spec.num_classes:
            self.bad("data.num_classes", num_classes, f"{spec.num_classes}, the classes of {name}")

    def batches(self, num_devices: int | None) -> None:
        for field in ("batch_size", "eval_batch_size"):
            size = self.positive_int(field)
            if size is not None and num_devices is not None and size % num_devices:
                lower = size // num_devices * num_devices
                options = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
                self.bad(
                    field,
                    size,
                    f"a multiple of the number of devices, num_devices = {num_devices}, so "
                    f"that every device gets an equal share (e.g. {options})",
                )

    def schedule(self, connectivity: str | None) -> None:
        self.per_phase(
            "phase_epochs",
            "the epochs of each phase",
            "a number of epochs > 0",
            lambda v: v > 0,
        )
        self.per_phase(
            "weight_learning_rates",
            "one weight learning rate per phase",
            "a learning rate > 0",
            lambda v: v > 0,
        )
        self.mask_learning_rate(connectivity)
        self.number("weight_decay", "a number >= 0", lambda v: v >= 0)
        self.number("momentum", "a number in [0, 1)", lambda v: 0 <= v < 1)
        self.boolean("decay_norm_and_bias")

    def mask_learning_rate(self, connectivity: str | None) -> None:
        """``> 0`` where the connectivity trains masks, else ``>= 0`` (also when unknown)."""
        masked = (
            connectivity is not None
            and Network(
                get_architecture("11,2,4"), num_classes=1, connectivity=connectivity, fan_in=1
            ).has_masks
        )
        if masked:
            self.number(
                "mask_learning_rate",
                f"a number > 0 with connectivity {connectivity!r} (the masks are trained "
                "in phase 1)",
                lambda v: v > 0,
            )
        else:
            self.number("mask_learning_rate", "a number >= 0", lambda v: v >= 0)

    def bookkeeping(self) -> None:
        self.positive_int("log_every_steps")
        self.positive_int("checkpoint_every_steps")
        self.positive_int("keep_checkpoints")
        self.number("eval_every_epochs", "a number of epochs > 0", lambda v: v > 0)
        allowed = f"an int in [0, {MAX_SEED}]"
        seed = self.present("seed", allowed)
        if seed is not _MISSING and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
            self.bad("seed", seed, allowed)
        nan_step = self.get("debug_inject_nan_at_step")
        if nan_step is not _MISSING and (not _is_int(nan_step) or nan_step < -1):
            self.bad("debug_inject_nan_at_step", nan_step, "-1 (off) or a step >= 0")


def zero_init_residual(value, *, connectivity: str) -> bool:
    """``config.model.zero_init_residual``: True, False (the default) or ``'auto'`` (on for
    ``full`` only)."""
    if isinstance(value, str) and value == "auto":
        return connectivity == "full"
    if not isinstance(value, bool):
        raise ValueError(
            "zero_init_residual must be 'auto' (on for connectivity 'full' only), True or "
            f"False, got {value!r}"
        )
    return value


def compute_dtype(name: str):
    """``config.model.dtype``: a name of :data:`mcjax.models.DTYPES`."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


# ======================================================================== the typed config


def _resumable(**kwargs) -> Any:
    """A field that may change when a run is resumed (see :data:`RESUMABLE_FIELDS`).

    Such a field does not change what is trained: bookkeeping, how the same function of the
    same parameters is computed (:data:`mcjax.blocks.BRANCH_IMPLS`; parameters stay
    float32), or an initial value, which a resumed run reads from its checkpoint instead.
    """
    return dataclasses.field(metadata={"resumable": True}, **kwargs)


def _raise_problems(rules: FieldChecker) -> None:
    if rules.problems:
        raise ConfigError(rules.problems)


class _Section:
    """What the four sections share: their place in the config file and their dict."""

    # How the section's fields are named in the config file: "model." for config.model.fan_in,
    # "" for the top-level fields.
    PREFIX: ClassVar[str] = ""

    @classmethod
    def _from_node(cls, node: Any):
        """The section from a ``ConfigDict`` node (or any object with the attributes); a field
        the node lacks takes its default (a field without one is checked before this)."""
        values = {}
        for field in dataclasses.fields(cls):
            value = getattr(node, field.name, _MISSING)
            if value is not _MISSING:
                values[field.name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as the config file names them; optional fields left out are omitted."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if not (field.default is None and getattr(self, field.name) is None)
        }


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """``config.model``: the network (see ``mcjax/configs/defaults.py`` for each field)."""

    PREFIX: ClassVar[str] = "model."

    arch: str
    stem: str
    connectivity: str
    fan_in: int
    aggregation: str
    branch_impl: str = _resumable()
    mask_init: float
    zero_init_residual: bool | str = _resumable()
    full_per_branch_bn: bool
    dtype: str = _resumable()

    def __post_init__(self):
        rules = _Rules(types.SimpleNamespace(model=self))
        rules.model()
        _raise_problems(rules)

    def network(self, data: DataConfig) -> Network:
        """The :class:`~mcjax.models.Network` of this model on ``data``'s images and classes."""
        return Network(
            arch=get_architecture(self.arch, stem=self.stem or None),
            num_classes=int(data.num_classes),
            in_channels=int(data.channels),
            connectivity=self.connectivity,
            fan_in=int(self.fan_in),
            aggregation=self.aggregation,
            branch_impl=self.branch_impl,
            mask_init=float(self.mask_init),
            dtype=compute_dtype(self.dtype),
            zero_init_residual=zero_init_residual(
                self.zero_init_residual, connectivity=self.connectivity
            ),
            full_per_branch_bn=bool(self.full_per_branch_bn),
        )


# config.data fields that are options of a data set's loader (mcjax.data.sources.load).
_LOADER_OPTIONS = ("folder_image_size", "train_per_class", "test_per_class")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """``config.data``: the data set, where it is read from, and its images' shape.

    ``folder_image_size``, ``train_per_class`` and ``test_per_class`` are options of an
    image folder's loader (None: the data set's own).
    """

    PREFIX: ClassVar[str] = "data."

    name: str
    data_dir: str = _resumable()
    image_size: int
    channels: int
    num_classes: int
    folder_image_size: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None

    def __post_init__(self):
        rules = _Rules(types.SimpleNamespace(data=self))
        rules.data()
        _raise_problems(rules)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """The paper's protocol (appendix E): four phases in epochs, their learning rates, the
    batches and the optimizer (top-level fields of the config file).

    ``mask_learning_rate`` is checked ``>= 0`` here; :class:`Config` requires ``> 0`` where
    the model trains masks.
    """

    phase_epochs: tuple[float, ...]
    weight_learning_rates: tuple[float, ...]
    mask_learning_rate: float
    batch_size: int
    eval_batch_size: int = _resumable()
    momentum: float
    weight_decay: float
    decay_norm_and_bias: bool

    def __post_init__(self):
        rules = _Rules(self)
        rules.batches(None)
        rules.schedule(None)
        _raise_problems(rules)
        for field in ("phase_epochs", "weight_learning_rates"):  # lists read back from JSON
            object.__setattr__(self, field, tuple(getattr(self, field)))

    def check_devices(self, num_devices: int) -> None:
        """Refuses batches that ``num_devices`` devices cannot share equally.

        Raises:
          ConfigError: one sentence per batch, naming the nearest sizes that work.
        """
        rules = _Rules(self)
        rules.batches(num_devices)
        _raise_problems(rules)

    def check_fits(self, *, num_train: int, num_test: int, data_name: str) -> None:
        """Refuses batches larger than the data, and more steps than the int32 step counter
        holds (both known once the data set is loaded).

        Raises:
          ConfigError: one sentence per batch naming the most it may be; or one sentence
            with the steps it would take and the most allowed.
        """
        problems = []
        for field, count, what in (
            ("batch_size", num_train, "training"),
            ("eval_batch_size", num_test, "test"),
        ):
            size = int(getattr(self, field))
            if size > count:
                problems.append(
                    f"config.{field} is {size}, but it must be at most {count}, the {what} "
                    f"examples of {data_name}."
                )
        if problems:
            raise ConfigError(problems)
        steps_per_epoch = num_train // int(self.batch_size)
        total = sum(float(epochs) * steps_per_epoch for epochs in self.phase_epochs)
        if not total <= MAX_STEPS:  # also catches inf from 1e308 epochs
            raise ConfigError(
                f"config.phase_epochs is {shown(self.phase_epochs)}, which makes {total:.3g} "
                f"steps at {steps_per_epoch} steps per epoch ({num_train} examples // "
                f"batch_size {int(self.batch_size)}); a run takes at most {MAX_STEPS} steps "
                "(2**31 - 1, its step counter is int32): use fewer epochs."
            )

    def phases(self, num_train: int) -> Schedule:
        """The phases of ``phase_epochs`` in steps of ``batch_size``."""
        return Schedule.from_epochs(
            self.phase_epochs, num_train=num_train, batch_size=int(self.batch_size)
        )

    def learning_rates(self, phases: Schedule) -> tuple[optax.Schedule, optax.Schedule]:
        """``(weights, masks)`` learning rates (:func:`mcjax.training.schedule.learning_rates`)."""
        return schedule_lib.learning_rates(
            phases,
            weight_learning_rates=tuple(self.weight_learning_rates),
            mask_learning_rate=float(self.mask_learning_rate),
        )

    def optimizer(self, phases: Schedule) -> optax.GradientTransformation:
        """The optimizer (:func:`mcjax.training.schedule.make_optimizer`)."""
        return schedule_lib.make_optimizer(
            phases,
            weight_learning_rates=tuple(self.weight_learning_rates),
            mask_learning_rate=float(self.mask_learning_rate),
            weight_decay=float(self.weight_decay),
            momentum=float(self.momentum),
            decay_norm_and_bias=bool(self.decay_norm_and_bias),
        )


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """The seed and the bookkeeping (top-level fields of the config file).

    ``debug_inject_nan_at_step`` (tests only) makes the loss NaN at that step (-1: never).
    """

    seed: int
    log_every_steps: int = _resumable()
    eval_every_epochs: float = _resumable()
    checkpoint_every_steps: int = _resumable()
    keep_checkpoints: int = _resumable()
    debug_inject_nan_at_step: int = _resumable(default=-1)

    def __post_init__(self):
        rules = _Rules(self)
        rules.bookkeeping()
        _raise_problems(rules)


_SECTIONS = (("model", ModelConfig), ("data", DataConfig), ("", ScheduleConfig), ("", RunConfig))

# The config fields that may change when a run is resumed, as the config file names them
# (declared beside each field with _resumable()). Every other field is compared.
RESUMABLE_FIELDS: tuple[str, ...] = tuple(
    f"{section.PREFIX}{field.name}"
    for _, section in _SECTIONS
    for field in dataclasses.fields(section)
    if field.metadata.get("resumable")
)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole training config: what ``configs/*.py`` describe, typed and checked.

    Made by :func:`from_config_dict` at the program's edge. Construction checks what
    crosses the sections (a connectivity with masks needs ``mask_learning_rate > 0``).
    """

    model: ModelConfig
    data: DataConfig
    schedule: ScheduleConfig
    run: RunConfig

    def __post_init__(self):
        rules = _Rules(self.schedule)
        rules.mask_learning_rate(self.model.connectivity)
        _raise_problems(rules)

    def make_input(self, *, key: jax.Array) -> Input:
        """The training and evaluation input: ``data``'s data set in ``schedule``'s batches,
        in the order of ``run.seed``, augmented with ``key``
        (:func:`mcjax.data.inputs.make_input`); raises ``DataError`` for missing data."""
        data = self.data
        return inputs.make_input(
            data.name,
            data_dir=data.data_dir or None,
            image_size=int(data.image_size),
            seed=int(self.run.seed),
            batch_size=int(self.schedule.batch_size),
            eval_batch_size=int(self.schedule.eval_batch_size),
            key=key,
            num_classes=int(data.num_classes),
            options={
                field: getattr(data, field)
                for field in _LOADER_OPTIONS
                if getattr(data, field) is not None
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as its file names the fields (``config.json``, the sweep's records)."""
        return {
            **self.run.to_dict(),
            **self.schedule.to_dict(),
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
        }


def from_config_dict(config: Any, *, num_devices: int = 1) -> Config:
    """Checks every field of ``config`` and returns it typed; the program's edge calls it once.

    Args:
      config: a training config (``ml_collections.ConfigDict`` as in ``configs/``, or any
        object with the same attributes).
      num_devices: devices the global batch is split over (``jax.device_count()``);
        ``batch_size`` and ``eval_batch_size`` must be multiples of it.

    Raises:
      ConfigError: listing every problem found, one sentence per line, each naming the
        field, its value and what is allowed (``error.problems`` is the tuple of
        sentences). One bad field gives exactly one line.
    """
    rules = _Rules(config)
    if not _is_int(num_devices) or num_devices < 1:
        rules.problems.append(
            _sentence(f"num_devices is {num_devices!r}, but it must be a positive int")
        )
        num_devices = None
    for section in ("model", "data"):
        if rules.get(section) is _MISSING:
            rules.problems.append(f"config.{section} is missing; it must be a section.")
    connectivity = None
    if rules.get("model") is not _MISSING:
        _, connectivity = rules.model()
    if rules.get("data") is not _MISSING:
        rules.data()
    rules.batches(num_devices)
    rules.schedule(connectivity)
    rules.bookkeeping()
    _raise_problems(rules)
    return Config(
        model=ModelConfig._from_node(config.model),
        data=DataConfig._from_node(config.data),
        schedule=ScheduleConfig._from_node(config),
        run=RunConfig._from_node(config),
    )


# ======================================================================== the resume rules

CONFIG_NAME = "config.json"
RESUME_LOG_NAME = "resume_log.jsonl"


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.fan_in": 4, ...}`` of a nested dict, in its order."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_json(path: str, what: str, override: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} ({what}) cannot be read ({error}); {override}.") from error


_OVERRIDE = "pass --force_resume to resume it anyway, or use a new --workdir"


def recorded_config(workdir: str) -> tuple[dict, str] | None:
    """``(config, where)``: the config the run in ``workdir`` runs with, or None if none.

    The ``config`` of the last record of ``resume_log.jsonl`` if there is one, else
    ``config.json``; ``where`` names the file (for messages).

    Raises:
      ConfigError: the file cannot be read or does not hold a config.
    """
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(path):
        return None
    log_path = os.path.join(workdir, RESUME_LOG_NAME)
    if os.path.exists(log_path):
        try:
            records = [r for r in read_records(log_path) if isinstance(r.get("config"), dict)]
        except OSError as error:
            raise ConfigError(
                f"{log_path} (the history of the run in this workdir) cannot be read "
                f"({error}); {_OVERRIDE}."
            ) from error
        if records:
            return records[-1]["config"], f"the last record of {log_path}"
    previous = _read_json(path, "the config of the run in this workdir", _OVERRIDE)
    if not isinstance(previous, dict):
        raise ConfigError(f"{path} does not hold a config; {_OVERRIDE}.")
    return previous, path


def _compared(field: str, before: dict, current: dict) -> bool:
    """Whether a difference in ``field`` refuses a resume (see check_workdir_matches)."""
    if field in RESUMABLE_FIELDS or field not in before or field not in current:
        return False
    both_full = before.get("model.connectivity") == "full" == current.get("model.connectivity")
    return not (field == "model.fan_in" and both_full)


def check_workdir_matches(workdir: str, config: Any, *, force: bool = False) -> None:
    """Refuses to resume the run in ``workdir`` with a config that would train another run.

    The config the run runs with (:func:`recorded_config`: ``config.json``, written by
    :func:`mcjax.training.loop.train_and_evaluate` as ``config.to_dict()``, updated by
    the records of ``resume_log.jsonl``) is compared field by field with ``config``
    except :data:`RESUMABLE_FIELDS`, the bookkeeping that does not change what is
    trained (logging, evaluation and checkpoint intervals, checkpoints kept, the eval
    batch, the data's location) and the two ``config.model`` fields that choose how the
    same function of the same parameters is computed. So the network, the data, the
    schedule (``phase_epochs``, ``batch_size``, learning rates, ...), the optimizer and
    the seed must be those of the run that is resumed. ``fan_in`` is not compared when
    both runs use connectivity ``'full'`` (which ignores it), nor is a field that one
    of the two configs does not have (a file written before the field existed).

    Args:
      workdir: the run's directory.
      config: the config about to run.
      force: skip the check (``--force_resume``).

    Raises:
      ConfigError: one sentence naming the first differing field, both values, and
        how to override (``--force_resume``) or avoid it (a new ``--workdir``); also
        when the recorded config cannot be read.
    """
    if force:
        return
    recorded = recorded_config(workdir)
    if recorded is None:
        return
    previous, where = recorded
    current = _flat(_plain(config.to_dict() if hasattr(config, "to_dict") else dict(config)))
    before = _flat(previous)
    for field, now in current.items():
        if not _compared(field, before, current):
            continue
        then = before[field]
        if now != then:
            restore = tuple(then) if isinstance(then, list) else then
            raise ConfigError(
                f"config.{field} is {shown(now)}, but the run in {workdir} used "
                f"{shown(then)} (see {where}); a resumed run must continue that run "
                f"exactly: set --config.{field}={str(restore)[:LONGEST_SHOWN]}, {_OVERRIDE}."
            )


def check_checkpoint_meta(meta: dict, expected: dict, step: int) -> None:
    """Refuses a checkpoint made with another seed, model, data set or data.

    ``meta`` is the checkpoint's, ``expected`` this run's (the same keys). Keys the
    checkpoint lacks (written before they were recorded) are not compared.

    Raises:
      ConfigError: one sentence naming what differs and how to override it.
    """
    for key in ("seed", "data", "model"):
        then, now = meta.get(key), expected[key]
        if key == "model" and isinstance(then, dict):
            then = {k: v for k, v in then.items() if f"model.{k}" not in RESUMABLE_FIELDS}
            now = {k: v for k, v in now.items() if f"model.{k}" not in RESUMABLE_FIELDS}
        if then is not None and json.loads(json.dumps(now)) != then:
            raise ConfigError(
                f"config.{key} is {shown(now)}, but the checkpoint of step {step} was made "
                f"with {shown(then)}; a resumed run must continue that run exactly: pass "
                "--force_resume to resume it anyway, or use a new --workdir."
            )
    then, now = meta.get("data_fingerprint"), expected.get("data_fingerprint")
    if then is not None and now is not None and then != now:
        raise ConfigError(
            f"the data in config.data.data_dir={expected.get('data_dir')!r} is not the data "
            f"the checkpoint of step {step} was trained on (fingerprint {now[:23]}, "
            f"recorded {then[:23]}), though the data set ({expected['data']}) is the same; "
            "a resumed run must continue that run exactly: point data_dir back at that "
            "data, pass --force_resume to train on this data from here on (recorded in "
            f"{RESUME_LOG_NAME}), or use a new --workdir."
        )


def record_start(
    workdir: str,
    config: Any,
    *,
    step: int,
    forced: bool,
    data_fingerprints: tuple[str | None, str] | None = None,
) -> None:
    """Writes the run's history at a start in ``workdir`` (see the module docstring).

    The first start writes ``config.json``. Every later one (a ``config.json``
    exists) appends a record to ``resume_log.jsonl`` instead: ``step`` (where training
    continues), ``time``, ``forced``, ``changes`` (``{field: [before, now]}``, every
    field that differs from the recorded config, allowed or forced), the
    ``data_fingerprint`` ``[recorded, now]`` when they differ, and ``config`` (the
    whole config in effect from here on).

    Args:
      workdir: the run's directory.
      config: the config this start runs with.
      step: the step training continues from (0: no usable checkpoint).
      forced: whether ``--force_resume`` was given.
      data_fingerprints: ``(the checkpoint's, this run's)`` data fingerprints.
    """
    current = _plain(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    recorded = recorded_config(workdir) if os.path.exists(workdir) else None
    if recorded is None:
        safe_files.write_json(os.path.join(workdir, CONFIG_NAME), current, indent=1)
        return
    before, now = _flat(recorded[0]), _flat(current)
    changes = {
        field: [before.get(field), now.get(field)]
        for field in sorted(set(before) | set(now))
        if before.get(field) != now.get(field)
    }
    record = {
        "step": int(step),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "forced": bool(forced),
        "changes": changes,
    }
    recorded_data, data_now = data_fingerprints or (None, None)
    if recorded_data is not None and recorded_data != data_now:
        record["data_fingerprint"] = [recorded_data, data_now]
    record["config"] = current
    line = json.dumps(record) + "\n"
    safe_files.append_bytes(os.path.join(workdir, RESUME_LOG_NAME), line.encode())
