"""The MaskConnect optimizer: clipped mask SGD, weight SGD-momentum, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
            weight_learning_rate=0.1, mask_learning_rate=optim.piecewise_constant([2], [0.2, 0.0])
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


def test_piecewise_constant():
    schedule = optim.piecewise_constant([10, 20, 25], [0.1, 0.1, 0.01, 0.0])
    got = [float(schedule(s)) for s in (0, 9, 10, 19, 20, 24, 25, 1000)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.0, 0.0])
    assert float(jax.jit(schedule)(jnp.int32(22))) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="one more value"):
        optim.piecewise_constant([1, 2], [0.1])
    with pytest.raises(ValueError, match="increase"):
        optim.piecewise_constant([2, 2], [0.1, 0.2, 0.3])


def test_clip_params_needs_params():
    tx = optim.clip_params()
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"m": jnp.ones(2)}, tx.init(None))
    with pytest.raises(ValueError):
        optim.clip_params(1.0, 0.0)
