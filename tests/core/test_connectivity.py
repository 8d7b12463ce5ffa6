"""mcjax.connectivity: one policy decides the masks of every mode, and when they freeze."""

import jax
import numpy as np
from support import tiny

from mcjax import connectivity
from mcjax.training import steps
from mcjax.training.config import from_config_dict


def test_one_policy_decides_the_masks_of_every_mode():
    table = {
        ("learned", False, True): connectivity.SAMPLED,
        ("learned", False, False): connectivity.TOP_K,
        ("learned", True, True): connectivity.FROZEN_TOP_K,
        ("learned", True, False): connectivity.FROZEN_TOP_K,
        ("random", False, True): connectivity.FIXED_RANDOM,
        ("real", True, False): connectivity.REAL,
        ("full", True, True): connectivity.NONE,
    }
    for (mode, frozen, train), expected in table.items():
        assert connectivity.source(mode, frozen=frozen, train=train) == expected
    config = tiny.digits_config()
    typed = from_config_dict(config)
    net = typed.model.network(typed.data)
    schedule = typed.schedule.phases(1437)
    state = steps.create_state(net, typed.schedule.optimizer(schedule), jax.random.key(0))
    assert not bool(state.masks_frozen) and float(np.asarray(state.fixed_masks).sum()) > 0
    assert connectivity.must_freeze(net, phase=2, frozen=False)
    assert not connectivity.must_freeze(net, phase=1, frozen=False)
    assert not connectivity.must_freeze(net, phase=3, frozen=True)
