"""From an ``ml_collections`` config to the library's objects."""

from __future__ import annotations

from mcjax.architectures import get_architecture
from mcjax.models import DTYPES, Network

__all__ = ["network"]


def _zero_init_residual(model) -> bool:
    value = model.get("zero_init_residual", "auto")
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
