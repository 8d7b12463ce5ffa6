"""The typed config (mcjax.training.config): made once from a ConfigDict, each section
checking itself on construction, and written back as the config file names its fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from configs import cifar10, cifar100, digits, imagenet, mini_imagenet
from mcjax import models
from mcjax.training import config as training_config
from mcjax.training.config import ConfigError, from_config_dict

_CONFIGS = (cifar10, cifar100, digits, imagenet, mini_imagenet)


@pytest.mark.parametrize("module", _CONFIGS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_typed_config_writes_the_config_file_fields_back_unchanged(module):
    # config.json and the sweep's records are the typed config's to_dict(): a workdir made
    # before the typed config must compare equal field by field.
    config_dict = module.get_config()
    typed = from_config_dict(config_dict, num_devices=1)
    assert json.loads(json.dumps(typed.to_dict())) == json.loads(json.dumps(config_dict.to_dict()))


def test_model_section_checks_itself_with_the_edge_sentence():
    config_dict = digits.get_config()
    config_dict.model.fan_in = 9
    with pytest.raises(ConfigError) as at_the_edge:
        from_config_dict(config_dict)
    fields = {**config_dict.model.to_dict()}
    with pytest.raises(ConfigError) as constructed:
        training_config.ModelConfig(**fields)
    assert constructed.value.problems == at_the_edge.value.problems
    assert len(constructed.value.problems) == 1
    assert constructed.value.problems[0].startswith("config.model.fan_in is 9, but it must")


def test_a_connectivity_with_masks_needs_a_mask_learning_rate():
    typed = from_config_dict(digits.get_config())
    frozen_masks = dataclasses.replace(typed.schedule, mask_learning_rate=0.0)  # >= 0: fine
    with pytest.raises(ConfigError, match=r"config\.mask_learning_rate is 0\.0, .* 'learned'"):
        dataclasses.replace(typed, schedule=frozen_masks)
    full = dataclasses.replace(typed.model, connectivity="full")
    dataclasses.replace(typed, model=full, schedule=frozen_masks)  # no masks to learn


def test_typed_config_is_frozen_and_builds_the_network():
    typed = from_config_dict(digits.get_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.run.seed = 1  # type: ignore[misc]
    net = typed.model.network(typed.data)
    assert isinstance(net, models.Network)
    assert (net.arch.name, net.fan_in, net.num_classes, net.in_channels) == ("20,4,8", 4, 10, 1)


def test_resumable_fields_name_config_file_fields_that_do_not_change_what_is_trained():
    # RESUMABLE_FIELDS is derived from the declarations beside the fields; the resume rules
    # compare config files by these names, so each must be one of theirs.
    flat = training_config._flat(digits.get_config().to_dict())
    assert set(training_config.RESUMABLE_FIELDS) <= set(flat)
    trained = {"seed", "phase_epochs", "batch_size", "model.arch", "model.fan_in", "data.name"}
    assert not trained & set(training_config.RESUMABLE_FIELDS)
