"""From an ``ml_collections`` config to the library's objects."""

from __future__ import annotations

from mcjax.architectures import get_architecture
from mcjax.models import DTYPES, Network

__all__ = ["compute_dtype", "network", "zero_init_residual"]


def zero_init_residual(value, *, connectivity: str) -> bool:
    """``config.model.zero_init_residual``: ``'auto'`` (on for ``full`` only), True or False."""
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
            model.get("zero_init_residual", "auto"), connectivity=model.connectivity
        ),
    )
