"""The pruned model: save/load, a pytree, jitted predict, and refused inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mcjax
from mcjax import export, masks, models, prune
from mcjax.architectures import get_architecture

SIZE, CHANNELS, CLASSES = 8, 3, 4


@pytest.fixture(scope="module")
def model(tmp_path_factory, jit_init):
    net = models.Network(
        get_architecture("11,2,4"), num_classes=CLASSES, fan_in=2, branch_impl="loop"
    )
    variables = jit_init(jax.random.key(0), net)
    params = dict(variables["params"])
    params["head"] = {
        "kernel": jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape),
        "bias": params["head"]["bias"],
    }
    params["masks"] = jax.random.uniform(jax.random.key(2), net.masks_shape)
    pruned = prune.drop_dead_blocks(
        net, params, variables["batch_stats"], masks.top_k(params["masks"], net.fan_in)
    )
    path = str(tmp_path_factory.mktemp("export") / "pruned_model")
    mean = np.random.default_rng(0).uniform(size=(SIZE, SIZE, CHANNELS)).astype(np.float32)
    export.save(
        path,
        pruned.net,
        pruned.params,
        pruned.batch_stats,
        pruned.connectivity,
        mean_image=mean,
        std=0.25,
    )
    return export.load(path), pruned


def _images(n=5):
    return np.random.default_rng(1).integers(0, 256, (n, SIZE, SIZE, CHANNELS), dtype=np.uint8)


def test_export_is_public_after_import_mcjax():
    assert mcjax.export.predict is export.predict


def test_load_round_trips_the_pruned_variables(model):
    loaded, pruned = model
    jax.tree.map(np.testing.assert_array_equal, loaded.params, pruned.params)
    jax.tree.map(np.testing.assert_array_equal, loaded.batch_stats, pruned.batch_stats)
    for a, b in zip(loaded.connectivity, pruned.connectivity, strict=True):
        np.testing.assert_array_equal(a, b)
    # The formulation of the branches is the loading machine's choice ("auto").
    assert loaded.net == dataclasses.replace(pruned.net, branch_impl="auto")


def test_loaded_model_is_a_pytree(model):
    loaded, _ = model
    leaves, treedef = jax.tree.flatten(loaded)
    assert all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.net == loaded.net and rebuilt.crop == loaded.crop
    # Usable as an argument of a jitted function of the user's own.
    logits = jax.jit(export.predict)(loaded, _images())
    np.testing.assert_allclose(logits, export.predict(loaded, _images()), rtol=1e-5, atol=1e-6)


def test_predict_jitted_equals_eager_and_the_network(model, jit_apply):
    loaded, pruned = model
    images = _images()
    logits = export.predict(loaded, images)
    with jax.disable_jit():
        eager = export._logits(loaded, jnp.asarray(images))
    scale = float(np.linalg.norm(eager))
    assert scale > 0
    assert float(np.abs(np.asarray(logits) - np.asarray(eager)).max()) < 1e-5 * scale
    # The documented preprocessing: (images / 255 - mean) / std, then the network.
    x = (images.astype(np.float32) / 255.0 - np.asarray(loaded.mean_image)) / 0.25
    expected, _ = jit_apply(
        pruned.net,
        pruned.params,
        pruned.batch_stats,
        jnp.asarray(x),
        connectivity=pruned.connectivity,
        train=False,
    )
    assert float(np.abs(np.asarray(logits) - np.asarray(expected)).max()) < 1e-5 * scale
    # Floats in [0, 1] are the same images already divided by 255.
    as_float = export.predict(loaded, images.astype(np.float32) / 255.0)
    assert float(np.abs(np.asarray(as_float) - np.asarray(logits)).max()) < 1e-5 * scale


@pytest.mark.parametrize(
    "images, error, match",
    [
        (np.zeros((2, SIZE, SIZE), np.uint8), ValueError, r"\[N, H, W, 3\]"),
        (np.zeros((2, SIZE, SIZE, 1), np.uint8), ValueError, r"\[N, H, W, 3\]"),
        (np.zeros((2, SIZE + 2, SIZE, 3), np.uint8), ValueError, "per-pixel mean"),
        (np.full((2, SIZE, SIZE, 3), 200.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((2, SIZE, SIZE, 3), -0.5, np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros((2, SIZE, SIZE, 3), np.int32), TypeError, "uint8"),
    ],
    ids=["no-channels", "channels", "size", "float-0-255", "negative", "int32"],
)
def test_bad_images_are_refused(model, images, error, match):
    loaded, _ = model
    with pytest.raises(error, match=match):
        export.predict(loaded, images)
