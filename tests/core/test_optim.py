"""The MaskConnect optimizer: clipped mask SGD, weight SGD-momentum, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import freeze

from mcjax import nnx as mnnx
from mcjax import optim


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "conv": jax.random.normal(k1, (3, 4)),
        "bn": {"scale": jnp.ones(4), "bias": jax.random.normal(k2, (4,))},
        "masks": jax.random.uniform(k3, (2, 4, 4)),
    }


def test_masks_stay_in_unit_interval_and_follow_clipped_sgd():
    tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)
    params = _params(jax.random.key(0))
    state = tx.init(params)
    for step in range(50):
        grads = jax.tree.map(
            lambda p, s=step: 10.0 * jax.random.normal(jax.random.key(s), p.shape), params
        )
        updates, state = tx.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        expected = jnp.clip(params["masks"] - 0.2 * grads["masks"], 0.0, 1.0)
        np.testing.assert_allclose(new["masks"], expected, atol=1e-7)
        assert float(new["masks"].min()) >= 0.0 and float(new["masks"].max()) <= 1.0
        params = new
    # Large gradients push many entries onto the bounds: the clip was exercised.
    assert int((params["masks"] == 0).sum()) > 0 and int((params["masks"] == 1).sum()) > 0


def test_no_weight_decay_on_masks_but_on_weights():
    tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=0.5)
    params = _params(jax.random.key(1))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["masks"], params["masks"])
    np.testing.assert_allclose(new["conv"], params["conv"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(new["bn"]["scale"], params["bn"]["scale"] * (1 - 0.05), rtol=1e-6)


def test_decay_norm_and_bias_switch():
    tx = optim.maskconnect(weight_learning_rate=0.1, weight_decay=0.5, decay_norm_and_bias=False)
    params = _params(jax.random.key(2))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["bn"]["scale"], params["bn"]["scale"])
    np.testing.assert_array_equal(new["bn"]["bias"], params["bn"]["bias"])
    np.testing.assert_allclose(new["conv"], params["conv"] * 0.95, rtol=1e-6)


@pytest.mark.parametrize("how", ["freeze_masks", "zero_schedule"])
def test_frozen_masks_do_not_move(how):
    if how == "freeze_masks":
        tx = optim.maskconnect(weight_learning_rate=0.1, freeze_masks=True)
    else:
        tx = optim.maskconnect(
            weight_learning_rate=0.1,
            mask_learning_rate=optax.join_schedules(
                [optax.constant_schedule(0.2), optax.constant_schedule(0.0)], [2]
            ),
        )
    params = _params(jax.random.key(3))
    state = tx.init(params)
    start = params["masks"]
    for step in range(6):
        grads = jax.tree.map(lambda p: jnp.full(p.shape, 3.0), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if how == "zero_schedule" and step == 1:
            start = params["masks"]  # moved during the first two steps, frozen after
    np.testing.assert_array_equal(params["masks"], start)
    if how == "zero_schedule":
        assert not np.array_equal(start, _params(jax.random.key(3))["masks"])


def test_weights_follow_sgd_momentum_on_a_quadratic():
    lr, momentum, wd = 0.05, 0.9, 1e-2
    target = np.array([1.0, -2.0, 3.0], np.float32)
    tx = optim.maskconnect(weight_learning_rate=lr, weight_decay=wd, momentum=momentum)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    w, v = np.zeros(3, np.float64), np.zeros(3, np.float64)
    for _ in range(20):
        grads = jax.grad(lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        # Reference: PyTorch/Torch SGD with L2 decay added to the gradient.
        v = momentum * v + (w - target) + wd * w
        w = w - lr * v
    np.testing.assert_allclose(params["w"], w, rtol=1e-5, atol=1e-6)


def test_learning_rates_by_phase():
    # The training program's per-phase rates (optax.join_schedules of constants).
    from mcjax.training.schedule import Schedule, learning_rates

    weights, masks = learning_rates(
        Schedule(10, (10, 10, 5, 5)),
        weight_learning_rates=(0.1, 0.1, 0.01, 0.0),
        mask_learning_rate=0.2,
    )
    steps = (0, 9, 10, 19, 20, 24, 25, 1000)
    np.testing.assert_allclose(
        [float(weights(s)) for s in steps], [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.0, 0.0]
    )
    np.testing.assert_allclose([float(masks(s)) for s in steps], [0.2, 0.2] + [0.0] * 6)
    assert float(jax.jit(weights)(jnp.int32(22))) == pytest.approx(0.01)


def test_clip_params_needs_params():
    tx = optim.clip_params()
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"m": jnp.ones(2)}, tx.init(None))
    with pytest.raises(ValueError):
        optim.clip_params(1.0, 0.0)


# --- Masks anywhere: nested dicts, FrozenDicts, nnx.State ------------------------------


def _nested(key):
    """A Flax-like tree: the masks two levels down, beside weights of the same shapes."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "encoder": {
            "block": {
                "masks": jax.random.uniform(k1, (4, 4)),
                "dense": {"kernel": jax.random.normal(k2, (4, 4))},
            },
        },
        "head": {"kernel": jax.random.normal(k3, (4, 4)), "bias": jax.random.normal(k4, (4,))},
    }


def _check_one_update(tx, params, get_masks, get_kernel, grads):
    """Masks: clip(m - 0.5 g, 0, 1), no decay, no momentum; weights: SGD-momentum + decay."""
    state = tx.init(params)
    m0, w0 = np.asarray(get_masks(params)), np.asarray(get_kernel(params))
    gm, gw = np.asarray(get_masks(grads)), np.asarray(get_kernel(grads))
    for step in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if step == 0:
            np.testing.assert_allclose(get_masks(params), np.clip(m0 - 0.5 * gm, 0, 1), atol=1e-6)
            v = gw + 0.1 * w0
            w1 = w0 - 0.01 * v
            np.testing.assert_allclose(get_kernel(params), w1, rtol=1e-5, atol=1e-6)
            m1 = np.clip(m0 - 0.5 * gm, 0, 1)
    # Second step: no momentum on the masks, momentum 0.9 on the weights.
    np.testing.assert_allclose(get_masks(params), np.clip(m1 - 0.5 * gm, 0, 1), atol=1e-6)
    v = 0.9 * v + gw + 0.1 * w1
    np.testing.assert_allclose(get_kernel(params), w1 - 0.01 * v, rtol=1e-5, atol=1e-6)


def _tx(**kwargs):
    return optim.maskconnect(
        weight_learning_rate=0.01, mask_learning_rate=0.5, weight_decay=0.1, **kwargs
    )


@pytest.mark.parametrize("container", ["dict", "FrozenDict"])
def test_nested_masks_are_found(container):
    params = _nested(jax.random.key(0))
    grads = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p) - p, params)
    if container == "FrozenDict":
        params, grads = freeze(params), freeze(grads)
    labels = optim.param_labels(params)
    assert labels["encoder"]["block"]["masks"] == "masks"
    assert labels["encoder"]["block"]["dense"]["kernel"] == "weights"
    _check_one_update(
        _tx(),
        params,
        lambda t: t["encoder"]["block"]["masks"],
        lambda t: t["head"]["kernel"],
        grads,
    )


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.masks = mnnx.Mask(jax.random.uniform(rngs.params(), (4, 4)))
        self.dense = nnx.Linear(4, 4, rngs=rngs)


class _Model(nnx.Module):
    def __init__(self, rngs):
        self.block = _Block(rngs)
        self.head = nnx.Linear(4, 4, rngs=rngs)


def test_masks_in_nnx_state():
    model = _Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = optim.param_labels(params)
    assert labels["block"]["masks"] == "masks" and labels["head"]["kernel"] == "weights"
    # What nnx.Optimizer hands tx.update: plain arrays in an nnx.State.
    arrays = nnx.as_pure(params)
    grads = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p) - p, arrays)
    _check_one_update(
        _tx(), arrays, lambda t: t["block"]["masks"], lambda t: t["head"]["kernel"], grads
    )


def test_nnx_optimizer_trains_masks_as_masks():
    model = _Model(nnx.Rngs(1))
    start_masks, start_kernel = model.block.masks[...], model.head.kernel[...]
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -10.0), nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_allclose(model.block.masks[...], np.clip(start_masks + 5.0, 0, 1))
    np.testing.assert_allclose(
        model.head.kernel[...], start_kernel - 0.01 * (-10.0 + 0.1 * start_kernel), rtol=1e-5
    )


def test_a_mask_variable_under_any_name_is_a_mask():
    # The type decides, in tx.init (variables) and tx.update (plain arrays) alike.
    class Gate(nnx.Module):
        def __init__(self):
            self.gates = mnnx.Mask(jnp.full((2, 2), 0.5))

    model = Gate()
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -10.0), nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_array_equal(model.gates[...], 1.0)  # clipped mask SGD, no decay


def test_user_selector():
    params = {"gates": jnp.full((2, 2), 0.5), "kernel": jnp.ones((2, 2))}

    def selector(path, leaf):
        return path[-1].key == "gates"

    tx = _tx(mask_selector=selector)
    grads = {"gates": jnp.full((2, 2), -10.0), "kernel": jnp.zeros((2, 2))}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["gates"], 1.0)  # clipped mask SGD
    np.testing.assert_allclose(new["kernel"], 1.0 - 0.01 * 0.1, rtol=1e-6)  # decayed weight
    # Without the selector, "gates" would be a weight: say so in the labels.
    assert optim.param_labels(params)["gates"] == "weights"
