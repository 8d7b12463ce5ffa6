"""One call prunes any model built of MultiBranch layers (NNX and Linen), same logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax import linen as mlinen
from mcjax import nnx as mnnx

X = jax.random.normal(jax.random.key(0), (8, 16))


def _block(rngs):
    return nnx.Sequential(nnx.Linear(16, 16, rngs=rngs), jax.nn.relu)


class Chain(nnx.Module):
    """Shared-input MultiBranch, then two mixing ones (K = 1), then a head."""

    def __init__(self, rngs, *, skip=False):
        self.first = mnnx.MultiBranch(_block, 4, num_inputs=None, rngs=rngs)
        self.second = mnnx.MultiBranch(_block, 4, num_inputs=4, fan_in=1, rngs=rngs)
        self.third = mnnx.MultiBranch(_block, 3, num_inputs=4, fan_in=1, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)
        self.skip = skip

    def __call__(self, x):
        first = self.first(x)
        out = self.third(self.second(first)).mean(axis=0)
        if self.skip:  # reads every branch of first outside the chain
            out = out + first.mean(axis=0)
        return self.head(out)


# third reads second's 0 and 1 only; those read first's 2 and 3.
SECOND = [[0.0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0]]
THIRD = [[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]


def _frozen_chain(**kwargs):
    model = Chain(nnx.Rngs(0), **kwargs)
    model.second.freeze(jnp.asarray(SECOND))
    model.third.freeze(jnp.asarray(THIRD))
    return model


def _eval_logits(model):
    model.eval()
    return np.asarray(model(X))


def test_nnx_prune_removes_dead_blocks_through_the_chain_with_equal_logits():
    model = _frozen_chain()
    pruned = mnnx.prune(model, X)
    assert [len(m.blocks) for m in (pruned.first, pruned.second, pruned.third)] == [2, 2, 3]
    np.testing.assert_array_equal(pruned.second.mix.binary_masks(), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(pruned.third.mix.binary_masks(), [[1, 0], [0, 1], [1, 0]])
    assert pruned.second.is_frozen and pruned.third.is_frozen
    expected = _eval_logits(model)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(_eval_logits(pruned), expected, rtol=0, atol=1e-5 * scale)
    assert len(model.first.blocks) == 4  # the model itself is untouched


def test_nnx_prune_refuses_a_model_that_reads_branches_outside_the_chain():
    with pytest.raises(ValueError, match="differs from the model's"):
        mnnx.prune(_frozen_chain(skip=True), X)


class LinenChain(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        y = mlinen.MultiBranch(nn.Dense(16), 4, shared_input=True, name="first")(x, train=train)
        y = mlinen.MultiBranch(nn.Dense(16), 4, fan_in=1, name="second")(y, train=train)
        y = mlinen.MultiBranch(nn.Dense(16), 3, fan_in=1, name="third")(y, train=train)
        return nn.Dense(10)(y.mean(axis=0))


def test_linen_prune_returns_variables_of_the_live_blocks_with_equal_logits():
    module = LinenChain()
    variables = module.init(jax.random.key(0), X, train=False)
    params = jax.tree.map(lambda p: p, variables["params"])
    # Masks whose top-1 is SECOND / THIRD, then freeze to them.
    params["second"]["mix"]["masks"] = jnp.asarray(SECOND) * 0.5 + 0.25
    params["third"]["mix"]["masks"] = jnp.asarray(THIRD) * 0.5 + 0.25
    variables = mlinen.freeze({**variables, "params": params})
    pruned = mlinen.prune(module, variables, X, train=False)
    assert sorted(pruned["params"]["first"]) == ["branch_0", "branch_1"]
    np.testing.assert_array_equal(pruned["connectivity"]["first"]["branches"], [2, 3])
    np.testing.assert_array_equal(pruned["connectivity"]["second"]["branches"], [0, 1])
    expected = np.asarray(module.apply(variables, X, train=False))
    got = np.asarray(module.apply(pruned, X, train=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
