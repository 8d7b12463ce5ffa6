"""Run as a script with simulated CPU devices: two steps on N devices vs. one device.

    python parallel_check.py N [learn|fixed ...]

Started by tests/training/test_parallel.py as a process of its own, because the device
count is fixed when JAX starts; checks the masks learning (``learn``, phase 1) or fixed
(``fixed``, phases 2-4), both by default. Prints one JSON object with the largest
relative differences.
"""

import os
import sys

# Added to the flags of the tests' environment (their faster compiles).
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={sys.argv[1]}"
)

import functools
import json

import jax
import numpy as np

from mcjax import models, optim, parallel
from mcjax.architectures import get_architecture
from mcjax.training import steps as training_steps


def run(mesh, steps, frozen):
    """``steps`` steps on ``mesh``, or without shard_map at all when ``mesh`` is None."""
    net = models.Network(get_architecture("11,2,4"), num_classes=5, fan_in=2)
    tx = optim.maskconnect(weight_learning_rate=0.1, mask_learning_rate=1.0, weight_decay=5e-4)
    state = training_steps.create_state(net, tx, jax.random.key(0))
    initial_masks = jax.device_get(state.params["masks"])
    static = dict(net=net, tx=tx, key=jax.random.key(1), frozen=frozen)
    if mesh is None:
        step = jax.jit(functools.partial(training_steps.train_step, **static))
    else:
        step = parallel.data_parallel_train_step(training_steps.train_step, mesh, **static)
        state = jax.device_put(state, parallel.state_sharding(mesh))
    metrics = None
    for i in range(steps):
        images = jax.random.normal(jax.random.key(10 + i), (16, 8, 8, 3))
        labels = jax.random.randint(jax.random.key(20 + i), (16,), 0, 5)
        if mesh is not None:
            images = jax.device_put(images, parallel.batch_sharding(mesh))
            labels = jax.device_put(labels, parallel.batch_sharding(mesh))
        state, metrics = step(state, images, labels)
    return jax.device_get(state), jax.device_get(metrics), initial_masks


def rel(a, b):
    """||a - b|| / ||b|| over every array of two trees together (the norm of the whole
    state, so that no near-zero element decides the comparison)."""
    a = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
    b = [np.asarray(x, np.float64) for x in jax.tree.leaves(b)]
    diff = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
    norm = sum(float(np.sum(y**2)) for y in b)
    return float(np.sqrt(diff / max(norm, 1e-30)))


def main():
    devices = jax.devices()
    result = {"devices": len(devices)}
    for tag in sys.argv[2:] or ("learn", "fixed"):
        learn = tag == "learn"
        plain, m_plain, initial_masks = run(None, 2, not learn)
        for label, mesh in ((f"{len(devices)}dev", parallel.make_mesh(devices)),):
            state, metrics, _ = run(mesh, 2, not learn)
            for name in ("params", "batch_stats"):
                result[f"{tag}/{label}/{name}"] = rel(getattr(state, name), getattr(plain, name))
            result[f"{tag}/{label}/masks"] = rel(state.params["masks"], plain.params["masks"])
            result[f"{tag}/{label}/loss"] = rel(metrics["loss"], m_plain["loss"])
        # How far the masks moved, in the same norm as the differences above.
        result[f"{tag}/masks_moved"] = rel(plain.params["masks"], initial_masks)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
