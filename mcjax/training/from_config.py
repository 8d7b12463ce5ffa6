"""From an ``ml_collections`` config to the library's objects."""

from __future__ import annotations

from mcjax.architectures import get_architecture
from mcjax.data import inputs
from mcjax.data.types import Input
from mcjax.models import DTYPES, Network
from mcjax.training import schedule as schedule_lib
from mcjax.training.schedule import Schedule

__all__ = [
    "compute_dtype",
    "data_input",
    "learning_rates",
    "network",
    "optimizer",
    "schedule",
    "zero_init_residual",
]


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


def network(config) -> Network:
    """The :class:`~mcjax.models.Network` that ``config.model`` and ``config.data`` describe."""
    model, data = config.model, config.data
    arch = get_architecture(model.arch, stem=model.stem or None)
    return Network(
        arch=arch,
        num_classes=int(data.num_classes),
        in_channels=int(data.channels),
        connectivity=model.connectivity,
        fan_in=int(model.fan_in),
        aggregation=model.aggregation,
        branch_impl=model.branch_impl,
        mask_init=float(model.mask_init),
        dtype=compute_dtype(model.dtype),
        zero_init_residual=zero_init_residual(
            model.get("zero_init_residual", False), connectivity=model.connectivity
        ),
        full_per_branch_bn=bool(model.get("full_per_branch_bn", False)),
    )


# config.data fields that are options of a data set's loader (mcjax.data.registry.load).
_LOADER_OPTIONS = ("folder_image_size", "train_per_class", "test_per_class")


def data_input(config, *, key) -> Input:
    """The training and evaluation input that ``config.data`` describes (see
    :func:`mcjax.data.inputs.make_input`); raises ``DataError`` for missing data."""
    data = config.data
    return inputs.make_input(
        data.name,
        data_dir=data.data_dir or None,
        image_size=int(data.image_size),
        seed=int(config.seed),
        batch_size=int(config.batch_size),
        eval_batch_size=int(config.eval_batch_size),
        key=key,
        num_classes=int(data.num_classes),
        options={field: data[field] for field in _LOADER_OPTIONS if field in data},
    )


def schedule(config, num_train: int) -> Schedule:
    """The phases of ``config.phase_epochs`` in steps of ``config.batch_size``."""
    return Schedule.from_epochs(
        config.phase_epochs, num_train=num_train, batch_size=int(config.batch_size)
    )


def learning_rates(config, phases: Schedule):
    """``(weights, masks)`` learning rates (:func:`mcjax.training.schedule.learning_rates`)."""
    return schedule_lib.learning_rates(
        phases,
        weight_learning_rates=tuple(config.weight_learning_rates),
        mask_learning_rate=float(config.mask_learning_rate),
    )


def optimizer(config, phases: Schedule):
    """The optimizer of ``config`` (:func:`mcjax.training.schedule.make_optimizer`)."""
    return schedule_lib.make_optimizer(
        phases,
        weight_learning_rates=tuple(config.weight_learning_rates),
        mask_learning_rate=float(config.mask_learning_rate),
        weight_decay=float(config.weight_decay),
        momentum=float(config.momentum),
        decay_norm_and_bias=bool(config.decay_norm_and_bias),
    )
