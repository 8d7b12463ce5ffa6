"""Up-front checks of a training config, before anything is compiled or loaded.

:func:`validate_config` checks every field of a config (see ``mcjax/training/defaults.py``)
and raises :class:`ConfigError` listing **every** problem it found, one sentence
per problem and one problem per line (``error.problems`` holds them as a tuple).
Each sentence names the field as it is written on the command line (e.g.
``config.model.fan_in``), the value it has, and what is allowed. A config with one
bad field gives exactly one line: checks that depend on another field (the fan-in
range on the architecture, the image size on the data set, ...) are skipped while
that field is itself wrong, so one mistake is never reported twice.

:func:`check_workdir_matches` compares a config with the ``config.json`` that an
earlier run wrote into the same workdir, so that a run is never resumed from a
checkpoint of a different network by accident.

Typical use (``mcjax/main.py``)::

    try:
        validation.validate_config(config, num_devices=jax.device_count())
        validation.check_workdir_matches(workdir, config, force=force_resume)
    except validation.ConfigError as error:
        ...  # print it, exit with status 2
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Sequence
from typing import Any

from mcjax.architectures import STEMS, Architecture, get_architecture
from mcjax.models import Network
from mcjax.training import from_config

__all__ = [
    "DATASETS",
    "MAX_SEED",
    "NUM_PHASES",
    "RESUMABLE_FIELDS",
    "ConfigError",
    "check_batches_fit",
    "check_workdir_matches",
    "validate_config",
]

DATASETS = ("digits", "cifar10", "cifar100", "mini_imagenet", "imagenet")

# The protocol (paper appendix E): phase 1 trains weights and masks jointly,
# phases 2-4 fine-tune the weights with the connectivity frozen.
NUM_PHASES = 4

# What each data set's loader produces: (image_size, channels); None = any size.
# Mini-ImageNet and ImageNet are cropped to config.data.image_size, so any size works.
_IMAGE_SHAPES: dict[str, tuple[int | None, int]] = {
    "digits": (8, 1),
    "cifar10": (32, 3),
    "cifar100": (32, 3),
    "mini_imagenet": (None, 3),
    "imagenet": (None, 3),
}

# Classes of the data sets whose class count is fixed (a Mini-ImageNet folder may hold
# any number of class subfolders).
_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


# The config fields that may change when a run is resumed: bookkeeping that does not
# change what is trained, how the same function of the same parameters is computed
# (mcjax.blocks.BRANCH_IMPLS; parameters stay float32), and the initial values, which a
# resumed run reads from its checkpoint instead. Every other field is compared.
RESUMABLE_FIELDS = (
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
    "debug_inject_nan_at_step",
    "data.data_dir",
    "model.branch_impl",
    "model.dtype",
    "model.zero_init_residual",
)

# Seeds that both jax.random.key and numpy accept.
MAX_SEED = 2**32 - 1

_MISSING = object()


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


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


class _Checker:
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
        self.problems.append(_sentence(f"config.{path} is {value!r}, but it must be {allowed}"))

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
                        f"config.{path}[{index}] (phase {index + 1}) is {entry!r} in "
                        f"{tuple(value)!r}, but it must be {allowed}"
                    )
                )

    # ------------------------------------------------------------------ sections

    def refused(self, path: str, value: Any, error: Exception, context: str = "") -> None:
        """Records an object's refusal of ``config.<path>`` as the field's sentence.

        ``"fan_in K must satisfy 1 <= K <= C = 8, got 9"`` becomes
        ``"config.model.fan_in is 9, but it must satisfy 1 <= K <= C = 8."``.
        """
        reason = re.sub(r",? got .*$", "", str(error).strip().rstrip("."), flags=re.S)
        if " must " in reason:
            text = f"config.{path} is {value!r}, but it must {reason.split(' must ', 1)[1]}"
        else:
            text = f"config.{path} is {value!r}, which is not valid: {reason}"
        self.problems.append(_sentence(text + context))

    def model(self) -> tuple[Architecture | None, str | None]:
        """Checks ``config.model`` by building its objects; returns the architecture and
        connectivity if valid.

        The rules live in the objects (:func:`~mcjax.architectures.get_architecture`,
        :class:`~mcjax.models.Network`, :mod:`mcjax.training.from_config`); each field
        is tried on its own (the others left at the objects' defaults), so every bad
        field gives one sentence and one bad field gives exactly one.
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
                        _sentence(f"config.model.arch is {name!r}, which is not valid: {reason}")
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
                from_config.compute_dtype(values["dtype"])
            except ValueError as error:
                self.refused("model.dtype", values["dtype"], error)

        zero_init = self.present("model.zero_init_residual", "'auto', True or False")
        if zero_init is not _MISSING:
            try:
                from_config.zero_init_residual(zero_init, connectivity="learned")
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
        expected_size, expected_channels = _IMAGE_SHAPES[name]
        if expected_size is not None and image_size is not None and image_size != expected_size:
            self.bad(
                "data.image_size",
                image_size,
                f"{expected_size} for {name} (its images are {expected_size}x{expected_size})",
            )
        if channels is not None and channels != expected_channels:
            self.bad(
                "data.channels",
                channels,
                f"{expected_channels} for {name} "
                f"({'grayscale' if expected_channels == 1 else 'RGB'} images)",
            )
        expected_classes = _NUM_CLASSES.get(name)
        if None not in (expected_classes, num_classes) and num_classes != expected_classes:
            self.bad("data.num_classes", num_classes, f"{expected_classes}, the classes of {name}")
        if name == "mini_imagenet":
            folder_size = 84  # mcjax.data.sources.load's default
            if self.get("data.folder_image_size") is not _MISSING:
                folder_size = self.positive_int("data.folder_image_size")
            for field in ("train_per_class", "test_per_class"):
                if self.get(f"data.{field}") is not _MISSING:
                    self.positive_int(f"data.{field}")
            if None not in (image_size, folder_size) and image_size > folder_size:
                self.bad(
                    "data.image_size",
                    image_size,
                    f"at most config.data.folder_image_size = {folder_size} "
                    "(the crop is taken from the resized images)",
                )

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

    def optimizer(self, connectivity: str | None) -> None:
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
        self.number("weight_decay", "a number >= 0", lambda v: v >= 0)
        self.number("momentum", "a number in [0, 1)", lambda v: 0 <= v < 1)
        self.boolean("decay_norm_and_bias")

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


def validate_config(config: Any, *, num_devices: int = 1) -> None:
    """Checks every field of ``config`` before anything is compiled or loaded.

    Args:
      config: a training config (``ml_collections.ConfigDict`` as in ``configs/``, or
        any object with the same attributes).
      num_devices: devices the global batch is split over (``jax.device_count()``);
        ``batch_size`` and ``eval_batch_size`` must be multiples of it.

    Raises:
      ConfigError: listing every problem found, one sentence per line, each naming
        the field, its value and what is allowed (``error.problems`` is the tuple of
        sentences). One bad field gives exactly one line.
    """
    checker = _Checker(config)
    if not _is_int(num_devices) or num_devices < 1:
        checker.problems.append(
            _sentence(f"num_devices is {num_devices!r}, but it must be a positive int")
        )
        num_devices = None
    for section in ("model", "data"):
        if checker.get(section) is _MISSING:
            checker.problems.append(f"config.{section} is missing; it must be a section.")
    connectivity = None
    if checker.get("model") is not _MISSING:
        _, connectivity = checker.model()
    if checker.get("data") is not _MISSING:
        checker.data()
    checker.batches(num_devices)
    checker.optimizer(connectivity)
    checker.bookkeeping()
    if checker.problems:
        raise ConfigError(checker.problems)


def check_batches_fit(config: Any, *, num_train: int, num_test: int, data_name: str) -> None:
    """Refuses batches larger than the data (known once the data set is loaded).

    Raises:
      ConfigError: one sentence per field naming the most it may be.
    """
    problems = []
    for field, count, what in (
        ("batch_size", num_train, "training"),
        ("eval_batch_size", num_test, "test"),
    ):
        size = int(config[field])
        if size > count:
            problems.append(
                f"config.{field} is {size}, but it must be at most {count}, the {what} "
                f"examples of {data_name}."
            )
    if problems:
        raise ConfigError(problems)


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


def check_workdir_matches(workdir: str, config: Any, *, force: bool = False) -> None:
    """Refuses to resume the run in ``workdir`` with a config that would train another run.

    ``workdir/config.json`` is written by :func:`mcjax.training.loop.train_and_evaluate`
    (``config.to_dict()``). When it exists, every field is compared with ``config``
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
        when ``config.json`` cannot be read.
    """
    if force:
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    override = "pass --force_resume to resume it anyway, or use a new --workdir"
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{path} (the config of the run in this workdir) cannot be read ({error}); {override}."
        ) from error
    if not isinstance(previous, dict):
        raise ConfigError(f"{path} does not hold a config; {override}.")

    current = _flat(_plain(config.to_dict() if hasattr(config, "to_dict") else dict(config)))
    before = _flat(previous)
    both_full = before.get("model.connectivity") == "full" == current.get("model.connectivity")
    for field, now in current.items():
        if field in RESUMABLE_FIELDS or field not in before:
            continue
        if field == "model.fan_in" and both_full:
            continue
        then = before[field]
        if now != then:
            shown = tuple(then) if isinstance(then, list) else then
            raise ConfigError(
                f"config.{field} is {now!r}, but the run in {workdir} used {then!r} "
                f"(see {path}); a resumed run must continue that run exactly: set "
                f"--config.{field}={shown}, {override}."
            )
