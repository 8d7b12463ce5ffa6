"""model.json holds every field of mcjax.models.Network (but the branches' formulation)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from mcjax import export, models, prune

# Values other than the defaults, valid together (full: nothing to prune, no masks).
NET = models.Network(
    "11,2,4",
    num_classes=3,
    in_channels=1,
    connectivity="full",
    fan_in=2,
    aggregation="sum",
    branch_impl="loop",
    mask_init=0.25,
    zero_init_residual=True,
    full_per_branch_bn=True,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, jit_init):
    variables = jit_init(jax.random.key(0), NET)
    pruned = prune.drop_dead_blocks(NET, variables["params"], variables["batch_stats"], None)
    path = tmp_path_factory.mktemp("export") / "model"
    pruned.save(str(path), mean_image=np.zeros(1, np.float32))
    return path


def _copy(saved, path):
    path.mkdir()
    for name in ("model.json", "arrays.npz"):
        (path / name).write_bytes((saved / name).read_bytes())
    return path


def _rewrite(path, edit):
    description = json.loads((path / "model.json").read_text())
    edit(description)
    (path / "model.json").write_text(json.dumps(description))


def test_every_field_but_the_formulation_round_trips(saved):
    assert export.load(str(saved)).net == dataclasses.replace(NET, branch_impl="auto")


def test_a_model_json_without_the_later_fields_loads_their_defaults(saved, tmp_path):
    path = _copy(saved, tmp_path / "older")
    _rewrite(path, lambda d: [d.pop(name) for name in ("mask_init", "zero_init_residual")])
    loaded = export.load(str(path)).net
    assert (loaded.mask_init, loaded.zero_init_residual) == (0.5, False)
    assert loaded.full_per_branch_bn and loaded.aggregation == "sum"


@pytest.mark.parametrize(
    "name, value, kind",
    [
        ("zero_init_residual", 1, "bool"),
        ("mask_init", "half", "float"),
        ("mask_init", True, "float"),
    ],
)
def test_a_field_of_the_wrong_kind_is_one_sentence(saved, tmp_path, name, value, kind):
    path = _copy(saved, tmp_path / "edited")
    _rewrite(path, lambda d: d.__setitem__(name, value))
    with pytest.raises(export.InvalidModel, match=rf"model.json's {name} is .*, not a {kind};"):
        export.load(str(path))


def test_a_field_out_of_its_range_is_refused_by_the_network(saved, tmp_path):
    path = _copy(saved, tmp_path / "edited")
    _rewrite(path, lambda d: d.__setitem__("mask_init", 1.5))
    with pytest.raises(export.InvalidModel, match=r"describes no valid network \(mask_init"):
        export.load(str(path))
