"""The Flax modules say what is wrong when they are built or first called."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mcjax
from mcjax import linen as mlinen
from mcjax import nnx as mnnx


def _block(rngs):
    return nnx.Sequential(nnx.Linear(16, 16, rngs=rngs), jax.nn.relu)


def test_an_rngs_without_a_masks_stream_serves_evaluation():
    layer = mnnx.MultiBranch(_block, 4, num_inputs=4, fan_in=2, rngs=nnx.Rngs(params=0))
    x = jnp.ones((4, 8, 16))
    layer.eval()
    assert layer(x).shape == (4, 8, 16)
    layer.train()
    with pytest.raises(ValueError, match="needs an rng"):
        layer(x)
    assert layer(x, rngs=jax.random.key(0)).shape == (4, 8, 16)


@pytest.mark.parametrize("fan_in", [2.0, True])
def test_a_fan_in_that_is_not_an_integer_is_refused_at_construction(fan_in):
    with pytest.raises(TypeError, match="fan_in"):
        mnnx.MaskedAggregation(4, 4, fan_in=fan_in, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="fan_in"):
        mnnx.MultiBranch(_block, 4, num_inputs=4, fan_in=fan_in, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="fan_in"):
        mnnx.Network("11,2,4", num_classes=3, fan_in=fan_in, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="fan_in"):
        mlinen.MaskedAggregation(4, fan_in)
    with pytest.raises(TypeError, match="fan_in"):
        mlinen.MultiBranch(nn.Dense(4), 4, fan_in=fan_in)
    with pytest.raises(TypeError, match="fan_in"):
        mlinen.Network("11,2,4", num_classes=3, fan_in=fan_in)
    with pytest.raises(TypeError, match="fan_in"):
        mcjax.Network(mcjax.get_architecture("11,2,4"), num_classes=3, fan_in=fan_in)


def test_a_fan_in_without_a_mix_is_refused():
    with pytest.raises(ValueError, match="no effect with num_inputs=None"):
        mnnx.MultiBranch(_block, 4, num_inputs=None, fan_in=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no effect with shared_input=True"):
        mlinen.MultiBranch(nn.Dense(4), 4, shared_input=True, fan_in=2)


def test_the_generic_layers_have_no_default_fan_in():
    with pytest.raises(TypeError, match=r"fan_in= .* is required"):
        mnnx.MultiBranch(_block, 4, num_inputs=4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"fan_in= .* is required"):
        mnnx.MaskedAggregation(4, 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"fan_in= .* is required"):
        mlinen.MultiBranch(nn.Dense(4), 4)
    # full reads every input: no K to give.
    mnnx.MultiBranch(_block, 4, num_inputs=4, connectivity="full", rngs=nnx.Rngs(0))
    # The paper's networks default to its K = 4, as mcjax.Network.
    abstract = nnx.eval_shape(lambda: mnnx.Network("20,4,8", num_classes=3, rngs=nnx.Rngs(0)))
    assert abstract.net.fan_in == 4
    assert mlinen.Network("20,4,8", num_classes=3).functional.fan_in == 4


def test_an_unstacked_batch_is_not_read_as_branches():
    layer = mnnx.MultiBranch(_block, 4, num_inputs=4, fan_in=2, rngs=nnx.Rngs(0))
    batch = jnp.ones((4, 16))  # N = 4 = C_in examples, not 4 branches
    with pytest.raises(ValueError, match=r"plain batch \[N, \*features\] is one shared input"):
        layer(batch)
    module = mlinen.MultiBranch(nn.Dense(16), 4, fan_in=2)
    with pytest.raises(ValueError, match=r"plain batch \[N, \*features\] is one shared input"):
        module.init(jax.random.key(0), batch, train=False)


def _zeros(shapes):
    """Concrete variables of these shapes: zeros, and every ``masks`` param at 0.5."""

    def fill(path, leaf):
        name = getattr(path[-1], "key", None)
        in_params = getattr(path[0], "key", None) == "params"
        value = 0.5 if name == "masks" and in_params else 0
        return jnp.full(leaf.shape, value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_pruning_a_network_never_trained_is_refused():
    # Variables of the init's shapes (no compile), masks all 0.5 as at init.
    net = mcjax.Network(mcjax.get_architecture("11,2,4"), num_classes=3, fan_in=2)
    initial = _zeros(jax.eval_shape(lambda: mcjax.init(jax.random.key(0), net)))
    model = mnnx.Network.from_variables(net, initial)
    with pytest.raises(ValueError, match="tie at the K-th largest entry"):
        model.prune()
    module = mlinen.Network("11,2,4", num_classes=3, fan_in=2)
    variables = _zeros(
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False))
    )
    assert not variables["connectivity"]["frozen"]
    with pytest.raises(ValueError, match="tie at the K-th largest entry"):
        mlinen.prune(module, variables)
    # Freezing chooses explicitly (ties to the lower index): then it prunes.
    model.freeze()
    pruned = model.prune()
    assert [int(live.sum()) for live in pruned.live] == [2, 2, 4]
    np.testing.assert_array_equal(pruned.live[0], [True, True, False, False])
