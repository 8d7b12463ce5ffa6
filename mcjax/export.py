"""The pruned model as a reloadable artifact: ``model.json`` + ``arrays.npz``.

``model.json`` describes the network (architecture with its per-module
cardinalities, and every other field of :class:`mcjax.models.Network` but the
formulation of the branches, which is the loading machine's choice) and the test-time
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
import io
import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, struct, traverse_util

from mcjax import models, safe_files
from mcjax.architectures import Architecture, ModuleSpec
from mcjax.models import DTYPES

FORMAT = "mcjax-pruned-model-v1"

__all__ = [
    "PREDICT_PIXELS",
    "InvalidModel",
    "LoadedModel",
    "check_images",
    "load",
    "predict",
    "save",
]


# Fields of models.Network that model.json holds in a form of their own (arch, dtype) or
# not at all (branch_impl: the loading machine's choice); it holds each other one as it is.
_NOT_AS_IS = ("arch", "dtype", "branch_impl")
_AS_IS = tuple(f.name for f in dataclasses.fields(models.Network) if f.name not in _NOT_AS_IS)


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
    mean_shape = np.shape(mean_image)
    channels = net.in_channels
    if mean_shape != (channels,) and not (len(mean_shape) == 3 and mean_shape[2] == channels):
        # Refused here, not first when someone loads the model.
        raise ValueError(
            f"mean_image must be [{channels}] or [H, W, {channels}], got {list(mean_shape)}"
        )
    os.makedirs(path, exist_ok=True)
    description = {
        "format": FORMAT,
        "arch": {
            "name": net.arch.name,
            "stem": net.arch.stem,
            "stem_channels": net.arch.stem_channels,
            "modules": [dataclasses.asdict(m) for m in net.arch.modules],
        },
        **{name: getattr(net, name) for name in _AS_IS},
        "dtype": jnp.dtype(net.dtype).name,
        "crop": crop,
    }
    arrays = _flatten({"params": params, "batch_stats": batch_stats})
    if connectivity is not None:
        arrays.update(_flatten({"connectivity": list(connectivity)}))
    arrays["mean_image"] = np.asarray(mean_image, np.float32)
    arrays["std"] = np.asarray(std, np.float32)
    # Arrays first: a reader that finds the new model.json finds its arrays.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    safe_files.write_bytes(os.path.join(path, "arrays.npz"), buffer.getvalue())
    safe_files.write_json(os.path.join(path, "model.json"), description, indent=1)


class InvalidModel(ValueError):
    """An exported model whose files are unreadable or contradict each other; one sentence
    naming the path, the entry and what it must be."""


def _problem(path: str, text: str) -> InvalidModel:
    return InvalidModel(f"{path}: {text}; export the model again")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _read_description(path: str) -> dict:
    """``model.json``, each field checked for its kind (not yet against the arrays)."""
    file = os.path.join(path, "model.json")
    try:
        with open(file, encoding="utf-8") as f:
            description = json.load(f)
    except ValueError as error:
        raise _problem(path, f"model.json is not JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise InvalidModel(f"{path}: not a {FORMAT} artifact (model.json has no such format)")
    fields = {
        "arch": (lambda v: isinstance(v, dict), "an object"),
        "num_classes": (_positive_int, "a positive int"),
        "in_channels": (_positive_int, "a positive int"),
        "connectivity": (lambda v: v in models.CONNECTIVITIES, f"one of {models.CONNECTIVITIES}"),
        "fan_in": (_positive_int, "a positive int"),
        "aggregation": (lambda v: v in models.AGGREGATIONS, f"one of {models.AGGREGATIONS}"),
        "dtype": (lambda v: v in DTYPES, f"one of {tuple(DTYPES)}"),
        "crop": (lambda v: v is None or _positive_int(v), "null or a positive int"),
    }
    for name, (ok, allowed) in fields.items():
        if name not in description:
            raise _problem(path, f"model.json lacks {name!r}")
        if not ok(description[name]):
            raise _problem(path, f"model.json's {name} is {description[name]!r}, not {allowed}")
    # The other fields may be absent (written before they existed: their defaults).
    for field in dataclasses.fields(models.Network):
        if field.name in _AS_IS and field.name not in fields and field.name in description:
            value, kind = description[field.name], type(field.default)
            if not _of_kind(value, kind):
                raise _problem(
                    path, f"model.json's {field.name} is {value!r}, not a {kind.__name__}"
                )
    return description


def _of_kind(value: Any, kind: type) -> bool:
    """Whether a JSON ``value`` is of the ``kind`` of a field's default (an int is a
    float; a bool is nothing but a bool)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _architecture(path: str, arch: dict) -> Architecture:
    for name in ("name", "stem", "stem_channels", "modules"):
        if name not in arch:
            raise _problem(path, f"model.json's arch lacks {name!r}")
    spec_fields = [field.name for field in dataclasses.fields(ModuleSpec)]
    if not isinstance(arch["modules"], list) or not arch["modules"]:
        raise _problem(path, "model.json's arch.modules is not a non-empty list")
    for index, module in enumerate(arch["modules"]):
        if not isinstance(module, dict) or sorted(module) != sorted(spec_fields):
            raise _problem(
                path, f"model.json's arch.modules[{index}] must have exactly {spec_fields}"
            )
        bad = [k for k in spec_fields if not _positive_int(module[k])]
        if bad:
            raise _problem(
                path, f"model.json's arch.modules[{index}].{bad[0]} is not a positive int"
            )
    if not _positive_int(arch["stem_channels"]):
        raise _problem(path, "model.json's arch.stem_channels is not a positive int")
    try:
        return Architecture(
            name=str(arch["name"]),
            stem=arch["stem"],
            stem_channels=arch["stem_channels"],
            modules=tuple(ModuleSpec(**m) for m in arch["modules"]),
        )
    except ValueError as error:
        raise _problem(path, f"model.json's arch is not a valid architecture ({error})") from None


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise _problem(path, f"arrays.npz cannot be read ({error})") from None
    except zipfile.BadZipFile as error:
        raise _problem(path, f"arrays.npz is not an npz file ({error})") from None


def _expected_variables(net: models.Network) -> dict[str, jax.ShapeDtypeStruct]:
    """``{"params/...": ShapeDtypeStruct}`` (and ``batch_stats/...``) of ``net``'s variables.

    ``full``'s variables with the same per-branch BN layout: the modules' variables do not
    depend on the connectivity mode, and the masks (which ``full`` has none of) are not
    exported.
    """
    like_full = dataclasses.replace(
        net, connectivity="full", full_per_branch_bn=net.per_branch_bn3, branch_impl="auto"
    )
    shapes = jax.eval_shape(lambda: models.init(jax.random.key(0), like_full))
    tree = {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
    flat = traverse_util.flatten_dict(serialization.to_state_dict(tree), sep="/")
    return {name: leaf for name, leaf in flat.items() if leaf is not None}


def _describe(array) -> str:
    return f"{np.dtype(array.dtype).name}{list(array.shape)}"


def _check_variables(path: str, net: models.Network, arrays: dict[str, np.ndarray]) -> None:
    """The parameters and statistics of ``arrays`` against the network model.json describes."""
    expected = _expected_variables(net)
    have = {k: v for k, v in arrays.items() if k.startswith(("params/", "batch_stats/"))}
    for name in sorted(set(expected) | set(have)):
        if name not in have:
            raise _problem(path, f"arrays.npz lacks {name}, which the network of model.json has")
        if name not in expected:
            raise _problem(
                path, f"arrays.npz holds {name}, which the network of model.json does not have"
            )
        want, got = expected[name], have[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise _problem(
                path,
                f"arrays.npz's {name} is {_describe(got)} but the network of model.json "
                f"(num_classes {net.num_classes}, cardinalities "
                f"{[m.cardinality for m in net.arch.modules]}) needs {_describe(want)}",
            )
        if not np.isfinite(got).all():
            raise _problem(path, f"arrays.npz's {name} holds NaN or infinite values")


def _check_connectivity(path: str, net: models.Network, arrays: dict[str, np.ndarray]):
    """The fixed connectivity between live blocks (None for ``full``), checked."""
    names = sorted(k for k in arrays if k.startswith("connectivity/"))
    if net.connectivity == "full":
        if names:
            raise _problem(path, "arrays.npz holds a connectivity, but model.json's is 'full'")
        return None
    shapes = net.arch.mask_shapes
    expected = [f"connectivity/{i}" for i in range(len(shapes))]
    if sorted(names) != sorted(expected):
        raise _problem(
            path,
            f"arrays.npz holds {names or 'no connectivity'}, but the {net.connectivity!r} "
            f"network of model.json needs {expected}",
        )
    matrices = []
    for index, shape in enumerate(shapes):
        matrix = arrays[f"connectivity/{index}"]
        if matrix.shape != shape or not np.issubdtype(matrix.dtype, np.number):
            raise _problem(
                path,
                f"arrays.npz's connectivity/{index} is {_describe(matrix)}, but module "
                f"{index + 2} of model.json needs a numeric {list(shape)}",
            )
        if net.connectivity == "real":
            if not (np.isfinite(matrix).all() and matrix.min() >= 0 and matrix.max() <= 1):
                raise _problem(
                    path, f"arrays.npz's connectivity/{index} is not a real mask in [0, 1]"
                )
        elif not np.isin(matrix, (0, 1)).all():
            raise _problem(
                path,
                f"arrays.npz's connectivity/{index} is not binary, but the "
                f"{net.connectivity!r} connectivity of model.json is",
            )
        matrices.append(jnp.asarray(matrix))
    return matrices


def _check_preprocessing(path: str, net: models.Network, arrays, crop) -> tuple:
    channels = net.in_channels
    for name in ("mean_image", "std"):
        if name not in arrays:
            raise _problem(path, f"arrays.npz lacks {name}")
        if (
            not np.issubdtype(arrays[name].dtype, np.floating)
            or not np.isfinite(arrays[name]).all()
        ):
            raise _problem(path, f"arrays.npz's {name} is not finite floating point")
    mean, std = arrays["mean_image"], arrays["std"]
    per_channel = mean.ndim == 1 and mean.shape == (channels,)
    if not (per_channel or (mean.ndim == 3 and mean.shape[2] == channels)):
        raise _problem(
            path,
            f"arrays.npz's mean_image is {list(mean.shape)}, not [{channels}] or "
            f"[H, W, {channels}]",
        )
    if mean.ndim == 3 and crop is not None and min(mean.shape[:2]) < crop:
        raise _problem(path, f"the mean image {list(mean.shape)} is smaller than the crop {crop}")
    if std.shape not in ((), (1,), (channels,)):
        raise _problem(path, f"arrays.npz's std is {list(std.shape)}, not a scalar or [{channels}]")
    if (std <= 0).any():
        raise _problem(path, f"arrays.npz's std is {std.tolist()}; it must be > 0 (it divides)")
    return mean, std


def load(path: str) -> LoadedModel:
    """Reads a model written by :func:`save` (never unpickles anything).

    Every field of ``model.json`` and every array of ``arrays.npz`` is checked against
    the network ``model.json`` describes (shapes, dtypes, finite values, a binary
    connectivity for ``learned``/``random``, ``std > 0``) before anything is built.

    Raises:
      InvalidModel: (a ``ValueError``) one sentence naming the path, the entry and
        what it must be, for files that cannot be read or contradict each other.
      FileNotFoundError: ``model.json`` or ``arrays.npz`` is missing.
    """
    description = _read_description(path)
    arch = _architecture(path, description["arch"])
    arrays = _read_arrays(path)
    per_branch_bn = description.get("full_per_branch_bn")
    if per_branch_bn is None:  # written before the field existed: read the layout
        scale = arrays.get("params/modules/0/bn3/scale")
        per_branch_bn = description["connectivity"] == "full" and getattr(scale, "ndim", 1) == 2
    recorded = {name: description[name] for name in _AS_IS if name in description}
    recorded["full_per_branch_bn"] = bool(per_branch_bn)
    try:
        net = models.Network(arch=arch, dtype=DTYPES[description["dtype"]], **recorded)
    except ValueError as error:
        raise _problem(path, f"model.json describes no valid network ({error})") from None
    _check_variables(path, net, arrays)
    connectivity = _check_connectivity(path, net, arrays)
    mean, std = _check_preprocessing(path, net, arrays, description["crop"])
    tree = traverse_util.unflatten_dict(
        {k: v for k, v in arrays.items() if k.startswith(("params/", "batch_stats/"))}, sep="/"
    )

    def as_list(by_index: dict, length: int) -> list:
        return [by_index[str(i)] for i in range(length)]

    for variables in (tree["params"], tree["batch_stats"]):
        variables["modules"] = as_list(variables["modules"], arch.num_modules)
    return LoadedModel(
        net=net,
        params=jax.tree.map(jnp.asarray, tree["params"]),
        batch_stats=jax.tree.map(jnp.asarray, tree["batch_stats"]),
        connectivity=connectivity,
        mean_image=mean,
        std=std,
        crop=description["crop"],
    )


def _center_crop(x, size: int, *, height_axis: int):
    top = (x.shape[height_axis] - size) // 2
    left = (x.shape[height_axis + 1] - size) // 2
    index = [slice(None)] * x.ndim
    index[height_axis] = slice(top, top + size)
    index[height_axis + 1] = slice(left, left + size)
    return x[tuple(index)]


def _checked(model: LoadedModel, images: Any, chunk: int):
    """``images`` unchanged (numpy stays on the host) once :func:`check_images`' rules hold.

    Values are checked ``chunk`` images at a time, so the check itself never needs
    more memory than a chunk.
    """
    if not isinstance(images, (jax.Array, np.ndarray)):
        images = np.asarray(images)
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
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(
            f"images must be uint8 (0..255) or floating in [0, 1], got dtype {images.dtype}"
        )
    if isinstance(images, jax.core.Tracer) or not images.size:
        return images
    xp = jnp if isinstance(images, jax.Array) else np
    low, high, finite = np.inf, -np.inf, True
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        # NaN compares false with both bounds: finiteness is its own check.
        finite = finite and bool(xp.isfinite(part).all())
        low, high = min(low, float(xp.nanmin(part))), max(high, float(xp.nanmax(part)))
    if not finite:
        raise ValueError(
            "images hold NaN or infinite values; predict needs finite pixels (uint8 0..255, "
            "or floating in [0, 1])"
        )
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"floating images must lie in [0, 1] (uint8 / 255), got values in "
            f"[{low:g}, {high:g}]; pass uint8 images for 0..255"
        )
    return images


# Input pixels per call of the compiled network in predict(): its activations, not the
# number of images, decide the memory (200,000 images of 32x32 at once asked for 23 GB).
PREDICT_PIXELS = 2**21


def _chunk_size(model: LoadedModel, images_shape, batch_size: int | None) -> int:
    if batch_size is not None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return batch_size
    if len(images_shape) != 4:
        return 1  # refused by the checks anyway
    height, width = (model.crop, model.crop) if model.crop else images_shape[1:3]
    return max(1, PREDICT_PIXELS // max(1, int(height) * int(width)))


def check_images(model: LoadedModel, images: Any) -> jax.Array:
    """``images`` as an array :func:`predict` accepts, or a ``ValueError``/``TypeError``.

    Accepted: ``uint8 [N, H, W, C]`` (pixel values 0..255), or floating
    ``[N, H, W, C]`` already divided by 255 (finite values in ``[0, 1]``; checked when
    the values are concrete, not under an outer ``jit``). ``C`` is the network's input
    channels; ``H, W`` are at least the crop, or equal to a per-pixel mean's.
    """
    return jnp.asarray(_checked(model, images, _chunk_size(model, np.shape(images), None)))


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


def predict(model: LoadedModel, images: Any, *, batch_size: int | None = None) -> jax.Array:
    """Logits ``[N, classes]`` float32 for images ``[N, H, W, C]`` (test-time preprocessing).

    Args:
      model: from :func:`load`.
      images: uint8 ``[N, H, W, C]`` (0..255), or floating in ``[0, 1]`` (already
        divided by 255); anything else (NaN and inf included) is refused by
        :func:`check_images`. A numpy array stays on the host: each call of the
        network gets only its chunk.
      batch_size: images per call of the network; default: as many as make
        :data:`PREDICT_PIXELS` input pixels (after the crop), which bounds the memory
        whatever ``N`` is. The last chunk is padded to the same size, so the network
        is compiled once per chunk shape.

    Compiled with ``jax.jit`` (once per chunk shape and dtype). ImageNet models
    expect images already resized (shorter side 256) and centre-cropped to 224,
    as :mod:`mcjax.data.streaming` does for evaluation.
    """
    chunk = _chunk_size(model, np.shape(images), batch_size)
    images = _checked(model, images, chunk)
    count = images.shape[0]
    if isinstance(images, jax.core.Tracer) or count <= chunk:
        return _jitted_logits(model, jnp.asarray(images))
    xp = jnp if isinstance(images, jax.Array) else np
    outputs = []
    for start in range(0, count, chunk):
        part = images[start : start + chunk]
        if part.shape[0] < chunk:  # padded with copies of its first image, then cut
            part = xp.concatenate([part, xp.repeat(part[:1], chunk - part.shape[0], axis=0)])
        outputs.append(_jitted_logits(model, jnp.asarray(part))[: count - start])
    return jnp.concatenate(outputs)
