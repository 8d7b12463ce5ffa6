"""The exported model refuses what it cannot answer for: non-finite images, and files
whose metadata contradicts their arrays; and ``predict`` works in bounded chunks.

Before, ``predict`` returned finite logits for NaN images, 200,000 small images asked for
23 GB at once, and contradictory model files loaded silently or failed deep inside
(``ZeroDivisionError``, ``KeyError``, a reshape error in ``apply``).
"""

from __future__ import annotations

import io
import json
import shutil

import jax
import numpy as np
import pytest

from mcjax import export, masks, models, prune
from mcjax.architectures import get_architecture

SIZE, CHANNELS, CLASSES = 8, 3, 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The directory of a pruned ``11,2,4`` learned model (K = 2), 4 classes."""
    net = models.Network(
        get_architecture("11,2,4"), num_classes=CLASSES, fan_in=2, branch_impl="loop"
    )
    variables = models.init(jax.random.key(0), net)
    params = dict(variables["params"])
    params["head"] = {
        "kernel": jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape),
        "bias": params["head"]["bias"],
    }
    params["masks"] = jax.random.uniform(jax.random.key(2), net.masks_shape)
    pruned = prune.drop_dead_blocks(
        net, params, variables["batch_stats"], masks.top_k(params["masks"], net.fan_in)
    )
    path = tmp_path_factory.mktemp("export") / "pruned_model"
    mean = np.random.default_rng(0).uniform(size=(SIZE, SIZE, CHANNELS)).astype(np.float32)
    export.save(
        str(path),
        pruned.net,
        pruned.params,
        pruned.batch_stats,
        pruned.connectivity,
        mean_image=mean,
        std=0.25,
    )
    return path


@pytest.fixture(scope="module")
def model(saved):
    return export.load(str(saved))


def _images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, CHANNELS), np.uint8)


# ----------------------------------------------------------------- predict


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_refused_in_one_sentence(model, bad):
    images = _images(3).astype(np.float32) / 255.0
    images[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite") as info:
        export.predict(model, images)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="NaN or infinite"):
        export.predict(model, jax.numpy.asarray(images))  # on the device too


def test_predict_in_chunks_equals_predict_at_once(model, monkeypatch):
    images = _images(7)
    whole = np.asarray(export.predict(model, images))
    shapes = []
    real = export._jitted_logits

    def recording(loaded, batch):
        shapes.append(batch.shape[0])
        return real(loaded, batch)

    monkeypatch.setattr(export, "_jitted_logits", recording)
    chunked = np.asarray(export.predict(model, images, batch_size=3))
    assert shapes == [3, 3, 3]  # the last chunk padded: one compiled shape
    scale = float(np.abs(whole).max())
    assert chunked.shape == (7, CLASSES)
    assert float(np.abs(chunked - whole).max()) <= 1e-5 * scale


def test_predict_bounds_the_pixels_of_each_call(model, monkeypatch):
    """The default chunk holds PREDICT_PIXELS input pixels, whatever the number of images."""
    monkeypatch.setattr(export, "PREDICT_PIXELS", 4 * SIZE * SIZE)
    shapes = []
    real = export._jitted_logits

    def recording(loaded, batch):
        shapes.append(batch.shape)
        return real(loaded, batch)

    monkeypatch.setattr(export, "_jitted_logits", recording)
    logits = export.predict(model, _images(10))
    assert logits.shape == (10, CLASSES)
    assert {shape[0] for shape in shapes} == {4} and len(shapes) == 3


def test_a_bad_batch_size_is_refused(model):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        export.predict(model, _images(2), batch_size=0)


# ------------------------------------------------------------------- load


def _edit(saved, tmp_path, *, description=None, arrays=None):
    """A copy of the saved model with ``description(dict)`` / ``arrays(dict)`` applied."""
    path = tmp_path / "edited"
    shutil.copytree(saved, path)
    if description is not None:
        text = json.loads((path / "model.json").read_text())
        description(text)
        (path / "model.json").write_text(json.dumps(text))
    if arrays is not None:
        with np.load(path / "arrays.npz") as data:
            content = {k: data[k] for k in data.files}
        arrays(content)
        buffer = io.BytesIO()
        np.savez(buffer, **content)
        (path / "arrays.npz").write_bytes(buffer.getvalue())
    return str(path)


def _set(key, value):
    def edit(tree):
        tree[key] = value

    return edit


def _first_connectivity_entry(value):
    def edit(arrays):
        arrays["connectivity/0"] = arrays["connectivity/0"].copy()
        arrays["connectivity/0"][0, 0] = value

    return edit


def _integer_head(arrays):
    arrays["params/head/kernel"] = np.round(arrays["params/head/kernel"]).astype(np.int64)


def _drop(name):
    def edit(arrays):
        del arrays[name]

    return edit


def _module_cardinality(description):
    description["arch"]["modules"][1]["cardinality"] += 1


@pytest.mark.parametrize(
    "edits, words",
    [
        (dict(description=_set("num_classes", 5)), ["params/head/", "num_classes 5"]),
        (dict(description=_module_cardinality), ["cardinalities"]),
        (dict(description=_set("fan_in", "two")), ["fan_in", "positive int"]),
        (dict(description=lambda d: d.pop("num_classes")), ["lacks 'num_classes'"]),
        (dict(description=lambda d: d["arch"].pop("modules")), ["lacks 'modules'"]),
        (dict(description=_set("dtype", "float8")), ["dtype", "float32"]),
        (dict(description=_set("crop", -3)), ["crop"]),
        (dict(arrays=_first_connectivity_entry(0.5)), ["connectivity/0", "not binary"]),
        (dict(arrays=_drop("connectivity/1")), ["connectivity/1"]),
        (dict(arrays=_integer_head), ["params/head/kernel", "int64", "float32"]),
        (dict(arrays=_set("std", np.float32(0.0))), ["std", "> 0"]),
        (dict(arrays=_set("std", np.float32(np.nan))), ["std", "finite"]),
        (dict(arrays=_drop("params/head/bias")), ["lacks params/head/bias"]),
        (dict(arrays=_set("mean_image", np.zeros(2, np.float32))), ["mean_image"]),
    ],
    ids=[
        "num_classes",
        "cardinality",
        "fan_in-type",
        "no-num_classes",
        "no-modules",
        "dtype",
        "crop",
        "non-binary-connectivity",
        "missing-connectivity",
        "integer-params",
        "std-zero",
        "std-nan",
        "missing-array",
        "mean-channels",
    ],
)
def test_model_files_that_contradict_themselves_are_one_sentence(saved, tmp_path, edits, words):
    path = _edit(saved, tmp_path, **edits)
    with pytest.raises(ValueError) as info:
        export.load(path)
    message = str(info.value)
    assert isinstance(info.value, export.InvalidModel), repr(info.value)
    assert "\n" not in message and message.startswith(path)
    for word in words:
        assert word in message, message


def test_a_model_file_that_is_not_json_is_one_sentence(saved, tmp_path):
    path = _edit(saved, tmp_path)
    (tmp_path / "edited" / "model.json").write_text("{ not json")
    with pytest.raises(export.InvalidModel, match=r"model\.json is not JSON"):
        export.load(path)


def test_an_intact_model_still_loads_and_predicts(saved):
    loaded = export.load(str(saved))
    assert np.isfinite(np.asarray(export.predict(loaded, _images(2)))).all()


@pytest.mark.parametrize("mean_shape", [(), (4,), (SIZE, SIZE, 1)])
def test_save_refuses_a_mean_image_load_would_refuse(tmp_path, mean_shape):
    """A mean image that is neither ``[C]`` nor ``[H, W, C]`` is refused when saving, so no
    one exports a model that no one can load."""
    net = models.Network(get_architecture("11,2,4"), num_classes=CLASSES)
    variables = models.init(jax.random.key(0), net)
    with pytest.raises(ValueError, match=r"mean_image must be \[3\] or \[H, W, 3\]"):
        export.save(
            str(tmp_path),
            net,
            variables["params"],
            variables["batch_stats"],
            None,
            mean_image=np.zeros(mean_shape, np.float32),
        )
    assert not (tmp_path / "model.json").exists()
