"""A PrunedModel runs and saves itself: no caller unpacks its fields."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import export, masks, models, prune

SIZE, CHANNELS, CLASSES = 8, 3, 4


@pytest.fixture(scope="module")
def networks(jit_init):
    """``(net, params, batch_stats, binary, pruned)``: random head and masks, top-K pruned."""
    net = models.Network("11,2,4", num_classes=CLASSES, fan_in=2, branch_impl="loop")
    variables = jit_init(jax.random.key(0), net)
    params = dict(variables["params"])
    params["head"] = {
        "kernel": jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape),
        "bias": params["head"]["bias"],
    }
    # Module 2 reads only blocks 0 and 1 of module 1: blocks 2 and 3 there are dead.
    real = jax.random.uniform(jax.random.key(2), net.masks_shape)
    params["masks"] = real.at[0, :, :2].add(1.0) / 2.0
    binary = masks.top_k(params["masks"], net.fan_in)
    pruned = prune.drop_dead_blocks(net, params, variables["batch_stats"], binary)
    assert int(pruned.live[0].sum()) == 2
    return net, params, variables["batch_stats"], binary, pruned


def _images(n=5):
    return np.random.default_rng(1).integers(0, 256, (n, SIZE, SIZE, CHANNELS), dtype=np.uint8)


def _max_error(a, b) -> float:
    """Max error relative to the norm of ``b`` (not of one element)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.linalg.norm(b))


def test_pruned_logits_are_the_unpruned_networks_in_eval_mode(networks, jit_apply):
    net, params, batch_stats, binary, pruned = networks
    images = jnp.asarray(_images(), jnp.float32) / 255.0
    expected, _ = jit_apply(net, params, batch_stats, images, connectivity=binary, train=False)
    logits = jax.jit(pruned.logits)(images)
    assert logits.shape == (5, CLASSES) and logits.dtype == jnp.float32
    # Removing blocks multiplied by 0 changes only the order of float32 sums.
    assert _max_error(logits, expected) < prune.PRUNED_OUTPUT_RTOL


def test_a_saved_pruned_model_loads_and_predicts_its_logits(networks, tmp_path):
    *_, pruned = networks
    mean = np.random.default_rng(0).uniform(size=(SIZE, SIZE, CHANNELS)).astype(np.float32)
    path = str(tmp_path / "pruned_model")
    pruned.save(path, mean_image=mean, std=0.25)
    loaded = export.load(path)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, pruned.params)
    jax.tree.map(np.testing.assert_array_equal, loaded.batch_stats, pruned.batch_stats)
    for a, b in zip(loaded.connectivity, pruned.connectivity, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.net == dataclasses.replace(pruned.net, branch_impl="auto")
    assert loaded.crop is None
    # export's preprocessing, (images / 255 - mean) / std, then the pruned network.
    images = _images()
    x = (images.astype(np.float32) / 255.0 - mean) / 0.25
    expected = jax.jit(pruned.logits)(jnp.asarray(x))
    assert _max_error(export.predict(loaded, images), expected) < 1e-5
