"""The pruned model as a reloadable artifact: ``model.json`` + ``arrays.npz``.

``model.json`` describes the network (architecture with its per-module
cardinalities, head, connectivity mode, fan-in, aggregation) and the test-time
preprocessing; ``arrays.npz`` holds the parameters, BN statistics, the fixed
connectivity between live blocks and the mean image, loaded with
``allow_pickle=False`` (no code is ever unpickled). Inference::

    model = mcjax.export.load("runs/digits/pruned_model")
    logits = mcjax.export.predict(model, images_uint8)   # [N, H, W, C] uint8, jitted

The loaded :class:`LoadedModel` is a pytree (its network description and crop
are static), so it can be passed to ``jax.jit``-ed functions, ``device_put``
or ``jax.tree.map``; :func:`predict` compiles once per input shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, struct, traverse_util

from mcjax import models
from mcjax.architectures import Architecture, ModuleSpec
from mcjax.models import DTYPES

FORMAT = "mcjax-pruned-model-v1"

__all__ = ["LoadedModel", "check_images", "load", "predict", "save"]


@struct.dataclass
class LoadedModel:
    """A pruned network ready for :func:`predict` (a pytree; ``net`` and ``crop`` static).

    Attributes:
      net: the :class:`~mcjax.models.Network` of the live blocks.
      params, batch_stats: its variables (float32).
      connectivity: per module ``i >= 2`` the ``[C'_i, C'_{i-1}]`` masks, or ``None``.
      mean_image: float32 ``[H, W, C]`` or ``[C]``, in ``[0, 1]`` units.
      std: float32, broadcastable against the images; the result is divided by it.
      crop: centre crop applied before the network, or ``None``.
    """

    net: models.Network = struct.field(pytree_node=False)
    params: dict
    batch_stats: dict
    connectivity: list | None
    mean_image: Any
    std: Any
    crop: int | None = struct.field(pytree_node=False, default=None)


def _flatten(tree) -> dict[str, np.ndarray]:
    """``{"a/0/b": array}``: lists become their indices (flax's state-dict form)."""
    flat = traverse_util.flatten_dict(serialization.to_state_dict(tree), sep="/")
    return {path: np.asarray(value) for path, value in flat.items() if value is not None}


def save(
    path: str,
    net: models.Network,
    params: dict,
    batch_stats: dict,
    connectivity,
    *,
    mean_image: np.ndarray,
    std: np.ndarray | float = 1.0,
    crop: int | None = None,
) -> None:
    """Writes ``path/model.json`` and ``path/arrays.npz``.

    Test-time preprocessing recorded with it: centre ``crop`` (if any), then
    ``(images / 255 - mean_image) / std``.
    """
    os.makedirs(path, exist_ok=True)
    description = {
        "format": FORMAT,
        "arch": {
            "name": net.arch.name,
            "stem": net.arch.stem,
            "stem_channels": net.arch.stem_channels,
            "modules": [dataclasses.asdict(m) for m in net.arch.modules],
        },
        "num_classes": net.num_classes,
        "in_channels": net.in_channels,
        "connectivity": net.connectivity,
        "fan_in": net.fan_in,
        "aggregation": net.aggregation,
        "full_per_branch_bn": net.full_per_branch_bn,
        "dtype": jnp.dtype(net.dtype).name,
        "crop": crop,
    }
    arrays = _flatten({"params": params, "batch_stats": batch_stats})
    if connectivity is not None:
        arrays.update(_flatten({"connectivity": list(connectivity)}))
    arrays["mean_image"] = np.asarray(mean_image, np.float32)
    arrays["std"] = np.asarray(std, np.float32)
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump(description, f, indent=1)
    np.savez(os.path.join(path, "arrays.npz"), **arrays)


def load(path: str) -> LoadedModel:
    """Reads a model written by :func:`save` (never unpickles anything)."""
    with open(os.path.join(path, "model.json")) as f:
        description = json.load(f)
    if description.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} artifact")
    arch_desc = description["arch"]
    arch = Architecture(
        name=arch_desc["name"],
        stem=arch_desc["stem"],
        stem_channels=arch_desc["stem_channels"],
        modules=tuple(ModuleSpec(**m) for m in arch_desc["modules"]),
    )
    with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as data:
        tree = traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")

    def as_list(by_index: dict, length: int) -> list:
        return [by_index[str(i)] for i in range(length)]

    num_modules = arch.num_modules
    for variables in (tree["params"], tree["batch_stats"]):
        variables["modules"] = as_list(variables["modules"], num_modules)
    per_branch_bn = description.get("full_per_branch_bn")
    if per_branch_bn is None:  # written before the field existed: read the layout
        per_branch_bn = (
            description["connectivity"] == "full"
            and tree["params"]["modules"][0]["bn3"]["scale"].ndim == 2
        )
    net = models.Network(
        arch=arch,
        num_classes=description["num_classes"],
        in_channels=description["in_channels"],
        connectivity=description["connectivity"],
        fan_in=description["fan_in"],
        aggregation=description["aggregation"],
        dtype=DTYPES[description["dtype"]],
        full_per_branch_bn=bool(per_branch_bn),
    )
    connectivity = tree.get("connectivity")
    if connectivity is not None:
        connectivity = [jnp.asarray(m) for m in as_list(connectivity, num_modules - 1)]
    return LoadedModel(
        net=net,
        params=jax.tree.map(jnp.asarray, tree["params"]),
        batch_stats=jax.tree.map(jnp.asarray, tree["batch_stats"]),
        connectivity=connectivity,
        mean_image=tree["mean_image"],
        std=tree["std"],
        crop=description["crop"],
    )


def _center_crop(x, size: int, *, height_axis: int):
    top = (x.shape[height_axis] - size) // 2
    left = (x.shape[height_axis + 1] - size) // 2
    index = [slice(None)] * x.ndim
    index[height_axis] = slice(top, top + size)
    index[height_axis + 1] = slice(left, left + size)
    return x[tuple(index)]


def check_images(model: LoadedModel, images: Any) -> jax.Array:
    """``images`` as an array :func:`predict` accepts, or a ``ValueError``/``TypeError``.

    Accepted: ``uint8 [N, H, W, C]`` (pixel values 0..255), or floating
    ``[N, H, W, C]`` already divided by 255 (values in ``[0, 1]``; checked when the
    values are concrete, not under an outer ``jit``). ``C`` is the network's input
    channels; ``H, W`` are at least the crop, or equal to a per-pixel mean's.
    """
    images = jnp.asarray(images) if not isinstance(images, jax.Array) else images
    channels = model.net.in_channels
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(
            f"images must be [N, H, W, {channels}] (batch, height, width, channels), "
            f"got shape {images.shape}"
        )
    height, width = images.shape[1:3]
    if model.crop is not None and min(height, width) < model.crop:
        raise ValueError(
            f"images of {height}x{width} are smaller than the centre crop {model.crop}"
        )
    mean = np.shape(model.mean_image)
    if model.crop is None and len(mean) == 3 and (height, width) != mean[:2]:
        raise ValueError(
            f"images must be {mean[0]}x{mean[1]} (the per-pixel mean image), got {height}x{width}"
        )
    if images.dtype == jnp.uint8:
        return images
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be uint8 (0..255) or floating in [0, 1], got dtype {images.dtype}"
        )
    if not isinstance(images, jax.core.Tracer) and images.size:
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"floating images must lie in [0, 1] (uint8 / 255), got values in "
                f"[{low:g}, {high:g}]; pass uint8 images for 0..255"
            )
    return images


def _logits(model: LoadedModel, images: jax.Array) -> jax.Array:
    mean = jnp.asarray(model.mean_image)
    if model.crop is not None:
        images = _center_crop(images, model.crop, height_axis=1)
        if mean.ndim == 3:  # a per-pixel mean is cropped like the images
            mean = _center_crop(mean, model.crop, height_axis=0)
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    x = (x - mean) / jnp.asarray(model.std)
    logits, _ = models.apply(
        model.net,
        model.params,
        model.batch_stats,
        x,
        connectivity=model.connectivity,
        train=False,
    )
    return logits


_jitted_logits = jax.jit(_logits)


def predict(model: LoadedModel, images: Any) -> jax.Array:
    """Logits ``[N, classes]`` float32 for images ``[N, H, W, C]`` (test-time preprocessing).

    Args:
      model: from :func:`load`.
      images: uint8 ``[N, H, W, C]`` (0..255), or floating in ``[0, 1]`` (already
        divided by 255); anything else is refused by :func:`check_images`.

    Compiled with ``jax.jit`` (once per input shape and dtype). ImageNet models
    expect images already resized (shorter side 256) and centre-cropped to 224,
    as :mod:`mcjax.data.streaming` does for evaluation.
    """
    return _jitted_logits(model, check_images(model, images))
