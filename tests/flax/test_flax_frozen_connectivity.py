"""Freezing is state: a frozen Flax model keeps its connectivity under any optimizer,
through nnx.split / orbax / nnx.merge and in Linen's variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import mcjax
from mcjax import linen as mlinen
from mcjax import nnx as mnnx

FROZEN_AT = np.array([[1.0, 1.0, 0.0, 0.0]] * 4, np.float32)
# Masks whose top-2 is FROZEN_AT by a small margin, so that any update can flip it.
NEAR_TIE = jnp.asarray([[0.52, 0.51, 0.5, 0.49]] * 4, jnp.float32)
X = jax.random.normal(jax.random.key(0), (32, 16))
LABELS = jnp.arange(32) % 10


class Model(nnx.Module):
    """The README's model: a shared-input MultiBranch, a mixing one (K = 2), a head."""

    def __init__(self, rngs: nnx.Rngs):
        def block(rngs):
            return nnx.Sequential(nnx.Linear(16, 16, rngs=rngs), jax.nn.relu)

        self.first = mnnx.MultiBranch(block, 4, num_inputs=None, rngs=rngs)
        self.second = mnnx.MultiBranch(block, 4, num_inputs=4, fan_in=2, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(self.second(self.first(x)).mean(axis=0))


def _frozen_model():
    model = Model(nnx.Rngs(0))
    model.second.mix.masks[...] = NEAR_TIE
    model.second.freeze()
    return model


@nnx.jit
def _train_step(model, optimizer, x, labels):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _forward(model, x):
    return model(x)


def _train(model, tx, steps=30):
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for i in range(steps):
        key = jax.random.key(100 + i)
        _train_step(model, optimizer, jax.random.normal(key, (32, 16)), LABELS)


def _assert_frozen_at(model, expected):
    model.train()
    np.testing.assert_array_equal(model.second.mix.binary_masks(), expected)
    # Training-mode calls draw no masks: two calls give the same logits.
    np.testing.assert_array_equal(_forward(model, X), _forward(model, X))


def test_frozen_connectivity_holds_for_30_steps_of_maskconnect():
    model = _frozen_model()
    _train(model, mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2))
    _assert_frozen_at(model, FROZEN_AT)


def test_frozen_masks_get_no_gradient_and_maskconnect_leaves_them_unchanged():
    model = _frozen_model()
    grads = nnx.grad(lambda m: m(X).sum())(model)
    np.testing.assert_array_equal(grads["second"]["mix"]["masks"][...], 0.0)
    _train(model, mcjax.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2), steps=5)
    np.testing.assert_array_equal(model.second.mix.masks[...], NEAR_TIE)


def test_frozen_connectivity_holds_under_adamw_given_the_whole_model():
    model = _frozen_model()
    _train(model, optax.adamw(1e-2))
    _assert_frozen_at(model, FROZEN_AT)


def test_frozen_connectivity_survives_split_orbax_and_merge(tmp_path):
    model = _frozen_model()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model))
    checkpointer.wait_until_finished()
    # A fresh model (another seed, not frozen) as the restore target, as a resumed run.
    abstract = nnx.eval_shape(lambda: Model(nnx.Rngs(1)))
    graphdef, abstract_state = nnx.split(abstract)
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract_state))
    _assert_frozen_at(restored, FROZEN_AT)
    np.testing.assert_array_equal(_forward(restored, X), _forward(model, X))


def test_unfreezing_is_explicit_and_samples_again():
    model = _frozen_model()
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, state)
    _assert_frozen_at(model, FROZEN_AT)
    model.second.unfreeze()
    draws = {tuple(np.asarray(model.second.mix.binary_masks()).ravel()) for _ in range(8)}
    assert len(draws) > 1


def test_linen_frozen_connectivity_holds_under_adamw_and_travels_with_variables():
    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            y = mlinen.MultiBranch(nn.Dense(16), 4, shared_input=True, name="first")(x, train=train)
            y = mlinen.MultiBranch(nn.Dense(16), 4, fan_in=2, name="second")(y, train=train)
            return nn.Dense(10)(y.mean(axis=0))

    body = Body()
    variables = body.init(jax.random.key(0), X, train=False)
    params = jax.tree.map(lambda p: p, variables["params"])
    params["second"]["mix"]["masks"] = NEAR_TIE
    variables = mlinen.freeze({**variables, "params": params})
    record = variables["connectivity"]
    np.testing.assert_array_equal(record["second"]["mix"]["masks"], FROZEN_AT)
    tx = optax.adamw(1e-2)

    def logits(params, key, train=True, collections=None):
        collections = {"connectivity": record} if collections is None else collections
        return body.apply({"params": params, **collections}, X, train=train, rngs={"masks": key})

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(params):
            return optax.softmax_cross_entropy_with_integer_labels(
                logits(params, key), LABELS
            ).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = variables["params"], tx.init(variables["params"])
    for i in range(30):
        params, opt_state = step(params, opt_state, jax.random.key(i))
    first, second = (jax.jit(logits)(params, jax.random.key(k)) for k in (1, 2))
    np.testing.assert_array_equal(first, second)
    # The connectivity used is FROZEN_AT: the evaluation of the same weights with the
    # masks whose top-2 it is, without any record.
    at_frozen = jax.tree.map(lambda p: p, params)
    at_frozen["second"]["mix"]["masks"] = NEAR_TIE
    reference = logits(at_frozen, jax.random.key(3), train=False, collections={})
    # Two compiled programs: float32 sums in another order, relative to the logits' size.
    np.testing.assert_allclose(first, reference, rtol=0, atol=1e-5 * float(np.abs(reference).max()))
