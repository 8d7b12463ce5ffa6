"""The Flax networks take their fields from mcjax.models.Network, declared there once."""

import dataclasses

import jax.numpy as jnp
import pytest
from flax import nnx

from mcjax import architectures, models
from mcjax import linen as mlinen
from mcjax import nnx as mnnx

# A value other than the default for every field (and valid together).
CHOSEN = {
    "num_classes": 5,
    "in_channels": 1,
    "connectivity": "real",
    "fan_in": 2,
    "aggregation": "sum",
    "branch_impl": "grouped",
    "mask_init": 0.25,
    "dtype": jnp.bfloat16,
    "zero_init_residual": True,
    "full_per_branch_bn": True,
}


def _values() -> dict:
    """``CHOSEN``, with every boolean field of models.Network not listed there flipped."""
    values = dict(CHOSEN)
    for field in dataclasses.fields(models.Network):
        if field.name not in values and isinstance(field.default, bool):
            values[field.name] = not field.default
    return values


def test_every_chosen_value_differs_from_its_default():
    defaults = {f.name: f.default for f in dataclasses.fields(models.Network)}
    for name, value in _values().items():
        assert value != defaults[name], name


def test_the_linen_network_holds_every_field_of_the_functional_one():
    net_fields = [(f.name, f.default) for f in dataclasses.fields(models.Network)]
    linen_fields = [(f.name, f.default) for f in dataclasses.fields(mlinen.Network)]
    assert linen_fields[: len(net_fields)] == net_fields
    assert [name for name, _ in linen_fields[len(net_fields) :]] == ["parent", "name"]


def test_every_field_passes_through_linen_and_nnx():
    expected = models.Network("11,2,4", **_values())
    module = mlinen.Network("11,2,4", **_values())
    assert module.functional == expected
    assert mlinen.Network.from_functional(expected).functional == expected
    model = nnx.eval_shape(lambda: mnnx.Network("11,2,4", **_values(), rngs=nnx.Rngs(0)))
    assert model.net == expected
    model = nnx.eval_shape(lambda: mnnx.Network(expected, rngs=nnx.Rngs(0)))
    assert model.net is expected


def test_the_flax_networks_check_their_fields_as_the_functional_one():
    for build in (
        lambda: models.Network("11,2,4", num_classes=3, fan_in=2, mask_init=1.5),
        lambda: mlinen.Network("11,2,4", num_classes=3, fan_in=2, mask_init=1.5),
        lambda: mnnx.Network("11,2,4", num_classes=3, fan_in=2, mask_init=1.5, rngs=nnx.Rngs(0)),
    ):
        with pytest.raises(ValueError, match=r"mask_init must lie in \[0, 1\], got 1.5"):
            build()


def test_an_nnx_network_given_a_description_and_fields_is_refused():
    net = models.Network("11,2,4", num_classes=3, fan_in=2)
    with pytest.raises(TypeError, match=r"takes its fields from the models.Network given"):
        mnnx.Network(net, fan_in=1, rngs=nnx.Rngs(0))


def test_an_architecture_name_is_resolved_once():
    net = models.Network("20,4,8", num_classes=3)
    assert net.arch == architectures.get_architecture("20,4,8")
    assert net == models.Network(architectures.get_architecture("20,4,8"), num_classes=3)
    assert hash(net) == hash(models.Network(architectures.get_architecture("20,4,8"), 3))


def test_a_one_module_network_still_checks_the_kind_of_its_fan_in():
    # One module: no mask bounds K, but K must still be an integer.
    arch = architectures.get_architecture("11,2,4")
    one = dataclasses.replace(arch, modules=arch.modules[:1])
    with pytest.raises(TypeError, match="fan_in"):
        models.Network(one, num_classes=3, fan_in=2.0)
    assert models.Network(one, num_classes=3, fan_in=2).fan_in == 2
