"""The pruned model as a reloadable artifact: ``model.json`` + ``arrays.npz``.

``model.json`` describes the network (architecture with its per-module
cardinalities, head, connectivity mode, fan-in, aggregation) and the test-time
preprocessing; ``arrays.npz`` holds the parameters, BN statistics, the fixed
connectivity between live blocks and the mean image, loaded with
``allow_pickle=False`` (no code is ever unpickled). Inference::

    model = mcjax.export.load("runs/digits/pruned_model")
    logits = mcjax.export.predict(model, images_uint8)   # [N, H, W, C] uint8
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcjax import models
from mcjax.architectures import Architecture, ModuleSpec
from mcjax.models import DTYPES

FORMAT = "mcjax-pruned-model-v1"

__all__ = ["LoadedModel", "load", "predict", "save"]


@dataclasses.dataclass
class LoadedModel:
    net: models.Network
    params: dict
    batch_stats: dict
    connectivity: list[np.ndarray] | None
    mean_image: np.ndarray  # float32 [H, W, C] or [C] in [0, 1] units, subtracted after /255
    std: np.ndarray  # float32, broadcastable; the result is divided by it
    crop: int | None  # centre crop applied before the network, or None


def _flatten(tree, prefix=""):
    flat = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}/"))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            flat.update(_flatten(value, f"{prefix}{index}/"))
    elif tree is not None:
        flat[prefix.rstrip("/")] = np.asarray(tree)
    return flat


def _unflatten(flat: dict[str, np.ndarray]):
    root: dict = {}
    for path, value in flat.items():
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [listify(node[str(i)]) for i in range(len(node))]
        return {k: listify(v) for k, v in node.items()}

    return listify(root)


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
        tree = _unflatten({k: data[k] for k in data.files})
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


def predict(model: LoadedModel, images: Any) -> jax.Array:
    """Logits ``[N, classes]`` for uint8 images ``[N, H, W, C]`` (test-time preprocessing).

    ImageNet models expect images already resized (shorter side 256) and
    centre-cropped to 224, as :mod:`mcjax.data.streaming` does for evaluation.
    """
    images = jnp.asarray(images)
    mean = jnp.asarray(model.mean_image)
    if model.crop is not None:
        images = _center_crop(images, model.crop, height_axis=1)
        if mean.ndim == 3:  # a per-pixel mean is cropped like the images
            mean = _center_crop(mean, model.crop, height_axis=0)
    x = (images.astype(jnp.float32) / 255.0 - mean) / jnp.asarray(model.std)
    logits, _ = models.apply(
        model.net,
        model.params,
        model.batch_stats,
        x,
        connectivity=model.connectivity,
        train=False,
    )
    return logits
