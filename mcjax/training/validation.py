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
        resume_rules.check_workdir_matches(workdir, config, force=force_resume)
    except validation.ConfigError as error:
        ...  # print it, exit with status 2
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mcjax.architectures import STEMS, Architecture, get_architecture
from mcjax.data import registry
from mcjax.models import Network
from mcjax.training import from_config
from mcjax.training.config_fields import (
    _MISSING,
    ConfigError,
    FieldChecker,
    _choices,
    _is_int,
    _is_number,
    _is_sequence,
    _sentence,
    shown,
)

__all__ = [
    "DATASETS",
    "MAX_SEED",
    "MAX_STEPS",
    "NUM_PHASES",
    "ConfigError",
    "check_batches_fit",
    "check_schedule_fits",
    "validate_config",
]

# The data sets: every name of the table (mcjax.data.registry).
DATASETS = tuple(registry.DATASETS)

# The protocol (paper appendix E): phase 1 trains weights and masks jointly,
# phases 2-4 fine-tune the weights with the connectivity frozen.
NUM_PHASES = 4


# Seeds that both jax.random.key and numpy accept.
MAX_SEED = 2**32 - 1

# The most steps a run may take: the step counter (TrainState.step, optax's counts) is int32.
MAX_STEPS = 2**31 - 1


class _Checker(FieldChecker):
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
        spec = registry.get(name)
        if spec.crops and spec.load is not None:  # an image folder: resized, then cropped
            if self.get("data.folder_image_size") is not _MISSING:
                spec = dataclasses.replace(
                    spec, stored_size=self.positive_int("data.folder_image_size")
                )
            for field in ("train_per_class", "test_per_class"):
                if self.get(f"data.{field}") is not _MISSING:
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


def check_schedule_fits(config: Any, *, num_train: int) -> None:
    """Refuses ``phase_epochs`` that make more steps than the int32 step counter holds.

    Known once the data set is loaded (the steps per epoch are ``num_train //
    batch_size``); run after :func:`check_batches_fit`.

    Raises:
      ConfigError: one sentence with the steps it would take and the most allowed.
    """
    steps_per_epoch = num_train // int(config.batch_size)
    total = sum(float(epochs) * steps_per_epoch for epochs in config.phase_epochs)
    if not total <= MAX_STEPS:  # also catches inf from 1e308 epochs
        epochs = tuple(config.phase_epochs)
        raise ConfigError(
            f"config.phase_epochs is {shown(epochs)}, which makes {total:.3g} steps at "
            f"{steps_per_epoch} steps per epoch ({num_train} examples // batch_size "
            f"{int(config.batch_size)}); a run takes at most {MAX_STEPS} steps (2**31 - 1, "
            "its step counter is int32): use fewer epochs."
        )
