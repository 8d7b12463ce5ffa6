"""Mixed precision: bfloat16 compute, float32 parameters, statistics and optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import architectures, models, optim
from mcjax.training import steps

ARCH = architectures.get_architecture("11,2,4")


def _step(dtype, connectivity):
    net = models.Network(ARCH, num_classes=10, connectivity=connectivity, fan_in=2, dtype=dtype)
    tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=0.2, weight_decay=5e-4)
    state = steps.create_state(net, tx, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    labels = jnp.arange(8) % 10
    step = jax.jit(
        functools.partial(
            steps.train_step, net=net, tx=tx, key=jax.random.key(2), frozen=not net.has_masks
        )
    )
    return state, *step(state, images, labels)


@pytest.mark.parametrize("connectivity", [pytest.param("full", marks=pytest.mark.slow), "learned"])
def test_bfloat16_step_keeps_float32_state_and_follows_float32(connectivity):
    before, new32, metrics32 = _step(jnp.float32, connectivity)
    _, new16, metrics16 = _step(jnp.bfloat16, connectivity)
    # Everything that persists stays float32.
    for tree in (new16.params, new16.batch_stats, new16.opt_state):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    # The step computes (nearly) the same thing: loss within bfloat16 rounding, and
    # the same update direction.
    assert abs(float(metrics16["loss"]) - float(metrics32["loss"])) < 0.02 * float(
        metrics32["loss"]
    )
    delta32 = jax.tree.map(jnp.subtract, new32.params, before.params)
    delta16 = jax.tree.map(jnp.subtract, new16.params, before.params)
    flat32 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(delta32)])
    flat16 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(delta16)])
    cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
    assert cosine > 0.99, cosine
