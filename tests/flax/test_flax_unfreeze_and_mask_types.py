"""Two guarantees of the Flax layers that no other test reaches: Linen's ``unfreeze`` makes
a frozen layer sample again, and an NNX ``Mask`` is a mask under any attribute name (the
type decides, not the name), while a layer named ``masks`` that is not one trains as a
weight."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mcjax
from mcjax import linen as mlinen

X = jax.random.normal(jax.random.key(0), (32, 16))


def test_linen_unfreeze_makes_a_frozen_layer_sample_again():
    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            y = mlinen.MultiBranch(nn.Dense(16), 4, shared_input=True, name="first")(x, train=train)
            return mlinen.MultiBranch(nn.Dense(16), 4, fan_in=1, name="second")(y, train=train)

    body = Body()
    variables = body.init(jax.random.key(0), X, train=False)

    def outputs(variables, seeds):
        return [
            np.asarray(body.apply(variables, X, train=True, rngs={"masks": jax.random.key(s)}))
            for s in seeds
        ]

    frozen = mlinen.freeze(variables)
    first, *others = outputs(frozen, range(4))
    for other in others:  # frozen: every draw reads the record
        np.testing.assert_array_equal(first, other)
    thawed = mlinen.unfreeze(frozen)
    # The record is kept; only the flag changes, so train-mode passes draw again (with
    # K = 1 of 4 per block, four draws that all agree would be a 1-in-4^12 chance).
    first, *others = outputs(thawed, range(4))
    assert any(not np.array_equal(first, other) for other in others)
    np.testing.assert_array_equal(
        thawed["connectivity"]["second"]["mix"]["masks"],
        frozen["connectivity"]["second"]["mix"]["masks"],
    )


def test_a_mask_under_any_name_is_clipped_and_a_dense_named_masks_is_a_weight():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.conn = mcjax.nnx.Mask(jnp.full((4, 4), 0.5))  # a mask, not named "masks"
            self.masks = nnx.Linear(4, 4, rngs=rngs)  # a weight, named "masks"

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, mcjax.maskconnect(weight_learning_rate=1.0, weight_decay=0.0), wrt=nnx.Param
    )

    def loss_fn(model):  # pushes both up, by far more than 1
        return -10.0 * (model.conn[...].sum() + model.masks.kernel[...].sum())

    kernel_before = np.asarray(model.masks.kernel[...])
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)
    np.testing.assert_array_equal(model.conn[...], np.ones((4, 4), np.float32))  # clipped
    # The weight took its SGD step of 10 per entry, unclipped.
    np.testing.assert_allclose(model.masks.kernel[...], kernel_before + 10.0, rtol=1e-6)
