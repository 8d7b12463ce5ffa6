"""Masks are found by what they are, and any optax optimizer can train the weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mcjax
from mcjax import nnx as mnnx


def _block(rngs):
    return nnx.Sequential(nnx.Linear(8, 8, rngs=rngs), jax.nn.relu)


class _WithALayerNamedMasks(nnx.Module):
    """A mask-predictor head stored as ``self.masks``, next to real connectivity."""

    def __init__(self, rngs):
        self.masks = nnx.Linear(8, 8, rngs=rngs)
        self.body = mnnx.MultiBranch(_block, 2, num_inputs=2, fan_in=1, rngs=rngs)


def test_an_nnx_linear_named_masks_is_trained_as_a_weight():
    model = _WithALayerNamedMasks(nnx.Rngs(0))
    kernel, connectivity = model.masks.kernel[...], model.body.mix.masks[...]
    tx = mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=1.0, weight_decay=0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -10.0), nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    # SGD with weight decay, not clipped into [0, 1].
    np.testing.assert_allclose(
        model.masks.kernel[...], kernel - 0.1 * (-10.0 + 0.1 * kernel), rtol=1e-6
    )
    assert float(model.masks.kernel[...].max()) > 1.0
    np.testing.assert_array_equal(model.body.mix.masks[...], np.clip(connectivity + 10.0, 0, 1))


def test_a_linen_dense_named_masks_is_refused_with_its_path():
    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="masks")(x)

    params = Head().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    tx = mcjax.maskconnect(weight_learning_rate=0.1)
    with pytest.raises(ValueError, match=r"'masks/bias'.*layer named 'masks'"):
        tx.init(params)


def test_a_selector_testing_the_leaf_type_works_in_both_calls_of_nnx_optimizer():
    model = _WithALayerNamedMasks(nnx.Rngs(1))
    start = model.body.mix.masks[...]

    def selector(path, leaf):
        return isinstance(leaf, mnnx.Mask)

    tx = mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=1.0, mask_selector=selector)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -10.0), nnx.state(model, nnx.Param))
    nnx.jit(lambda model, optimizer, grads: optimizer.update(model, grads))(model, optimizer, grads)
    np.testing.assert_array_equal(model.body.mix.masks[...], np.clip(start + 10.0, 0, 1))


def _tree(key):
    k_masks, k_kernel = jax.random.split(key)
    return {
        "block": {"masks": jax.random.uniform(k_masks, (3, 3))},
        "dense": {"kernel": jax.random.normal(k_kernel, (3, 2))},
    }


def test_maskconnect_gives_any_optax_optimizer_the_weights_and_clipped_sgd_the_masks():
    params = _tree(jax.random.key(0))
    weights_tx = optax.adamw(0.05, weight_decay=0.1)
    tx = mcjax.maskconnect(weights=weights_tx, mask_learning_rate=0.3)
    state = tx.init(params)
    reference_params, reference_state = params["dense"], weights_tx.init(params["dense"])
    masks = params["block"]["masks"]
    for step in range(3):
        grads = jax.tree.map(lambda p, step=step: jnp.cos(p + step) * 4.0, params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        reference_updates, reference_state = weights_tx.update(
            grads["dense"], reference_state, reference_params
        )
        reference_params = optax.apply_updates(reference_params, reference_updates)
        masks = np.clip(masks - 0.3 * grads["block"]["masks"], 0, 1)
        np.testing.assert_allclose(params["dense"]["kernel"], reference_params["kernel"], rtol=1e-6)
        np.testing.assert_allclose(params["block"]["masks"], masks, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="weight_decay"):
        mcjax.maskconnect(weights=weights_tx, weight_decay=0.1)


class _Toy(nnx.Module):
    def __init__(self, rngs):
        self.body = mnnx.MultiBranch(_block, 4, num_inputs=4, fan_in=2, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.body(x).mean(axis=0))


def _train(model, tx, steps):
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, labels):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

        optimizer.update(model, nnx.grad(loss_fn)(model))

    for i in range(steps):
        x = jax.random.normal(jax.random.key(i), (4, 16, 8))
        step(model, optimizer, x, jnp.arange(16) % 2)


def test_a_plain_optax_optimizer_on_mcjax_modules_is_told_masks_left_unit_interval():
    # A jitted loop pays nothing: check_masks between steps, eager calls and freeze warn.
    model = _Toy(nnx.Rngs(0))
    _train(model, optax.sgd(5.0), steps=10)
    masks = model.body.mix.masks[...]
    assert float(masks.min()) < 0 or float(masks.max()) > 1
    with pytest.raises(ValueError, match=r"body/mix/masks.*outside"):
        mcjax.optim.check_masks(model)
    x = jax.random.normal(jax.random.key(0), (4, 16, 8))
    with pytest.warns(UserWarning, match=r"left \[0, 1\].*mcjax.maskconnect"):
        model(x)
    with pytest.warns(UserWarning, match=r"left \[0, 1\].*mcjax.maskconnect"):
        model.body.freeze()


def test_maskconnect_keeps_masks_inside_and_never_warns(recwarn):
    model = _Toy(nnx.Rngs(0))
    _train(model, mcjax.maskconnect(weight_learning_rate=0.5, mask_learning_rate=5.0), steps=10)
    mcjax.optim.check_masks(model)
    model(jax.random.normal(jax.random.key(0), (4, 16, 8)))
    model.body.freeze()
    assert not [w for w in recwarn if "left [0, 1]" in str(w.message)]
