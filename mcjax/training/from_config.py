"""From an ``ml_collections`` config to the library's objects."""

from __future__ import annotations

from mcjax.architectures import get_architecture
from mcjax.data import in_memory
from mcjax.models import DTYPES, Network

__all__ = ["data_input", "network"]


def _zero_init_residual(model) -> bool:
    value = model.get("zero_init_residual", False)
    if value == "auto":
        return model.connectivity == "full"
    if not isinstance(value, bool):
        raise ValueError(
            f"config.model.zero_init_residual must be 'auto', True or False, got {value!r}"
        )
    return value


def network(config) -> Network:
    """The :class:`~mcjax.models.Network` that ``config.model`` and ``config.data`` describe."""
    model, data = config.model, config.data
    if model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {model.dtype!r}")
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
        dtype=DTYPES[model.dtype],
        zero_init_residual=_zero_init_residual(model),
        full_per_branch_bn=bool(model.get("full_per_branch_bn", False)),
    )


# config.data fields that are options of a data set's loader (mcjax.data.sources.load).
_LOADER_OPTIONS = ("folder_image_size", "train_per_class", "test_per_class")


def data_input(config, *, key):
    """The training and evaluation input that ``config.data`` describes (see
    :func:`mcjax.data.in_memory.make_input`); raises ``DataError`` for missing data."""
    data = config.data
    return in_memory.make_input(
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
