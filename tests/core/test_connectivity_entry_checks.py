"""A connectivity is checked where it enters: apply, prune and the Flax modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mcjax
from mcjax import checks, masks, prune
from mcjax import nnx as mnnx

K = 2


@functools.cache
def _setup():
    net = mcjax.Network(mcjax.get_architecture("11,2,4"), num_classes=3, fan_in=K)
    variables = mcjax.init(jax.random.key(0), net)
    real = jax.random.uniform(jax.random.key(1), net.masks_shape)
    params = dict(variables["params"], masks=real)
    return net, params, variables["batch_stats"]


IMAGES = jnp.ones((2, 8, 8, 3))


def _apply_with(connectivity):
    # The connectivity is a constant of the traced function: concrete, checked at trace.
    net, params, stats = _setup()
    return jax.jit(
        lambda p, s, x: mcjax.apply(net, p, s, x, connectivity=connectivity, train=False)[0]
    )(params, stats, IMAGES)


def test_apply_refuses_real_valued_masks_as_connectivity():
    _, params, _ = _setup()
    with pytest.raises(ValueError, match=r"module 2 is not binary.*top_k"):
        _apply_with(params["masks"])


def test_apply_refuses_a_connectivity_with_another_fan_in():
    _, params, _ = _setup()
    with pytest.raises(ValueError, match=r"module 2 has 1 ones in row \[0\].*K = 2"):
        _apply_with(masks.top_k(params["masks"], 1))
    assert np.isfinite(np.asarray(_apply_with(masks.top_k(params["masks"], K)))).all()


def test_drop_dead_blocks_refuses_real_valued_masks():
    net, params, stats = _setup()
    with pytest.raises(ValueError, match="not binary"):
        prune.drop_dead_blocks(net, params, stats, params["masks"])


def test_pruning_with_the_wrong_fan_in_says_so_in_one_sentence():
    net, params, stats = _setup()
    with pytest.raises(ValueError, match=r"has 1 ones in row \[0\], but every block reads K = 2"):
        prune.drop_dead_blocks(net, params, stats, masks.top_k(params["masks"], 1))


def test_checked_mode_catches_a_bad_connectivity_under_jit():
    net, params, stats = _setup()

    def logits(params, connectivity):
        return mcjax.apply(net, params, stats, IMAGES, connectivity=connectivity, train=False)[0]

    checked = jax.jit(checks.checked(logits))
    error, _ = checked(params, params["masks"])  # traced: only the checked mode sees it
    with pytest.raises(Exception, match="module 2 is not binary"):
        error.throw()
    error, out = checked(params, masks.top_k(params["masks"], K))
    error.throw()
    np.testing.assert_allclose(out, jax.jit(logits)(params, masks.top_k(params["masks"], K)))


def test_a_jitted_apply_stages_no_check_outside_checked_mode():
    net, params, stats = _setup()

    def logits(connectivity):
        return mcjax.apply(net, params, stats, IMAGES, connectivity=connectivity, train=False)[0]

    jaxpr = str(jax.make_jaxpr(logits)(masks.top_k(params["masks"], K)))
    assert "check" not in jaxpr and "callback" not in jaxpr


def test_nnx_freeze_checks_the_connectivity_it_is_given():
    def block(rngs):
        return nnx.Linear(4, 4, rngs=rngs)

    layer = mnnx.MultiBranch(block, 3, num_inputs=4, fan_in=K, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not binary"):
        layer.freeze(jnp.full((3, 4), 0.5))
    with pytest.raises(ValueError, match=r"3 ones in row \[1\].*K = 2"):
        layer.freeze(jnp.array([[1.0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="shape"):
        layer.freeze(jnp.ones((4, 4)))
    layer.freeze(jnp.array([[1.0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]))
    assert layer.is_frozen
