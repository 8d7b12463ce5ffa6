"""Tests of mcjax.training.config: up-front config checks and the resume guard."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import ml_collections
import pytest

from configs import cifar10, cifar100, digits, imagenet, mini_imagenet
from mcjax.training.config import ConfigError, check_workdir_matches, from_config_dict

_CONFIGS = {
    "digits": digits,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "mini_imagenet": mini_imagenet,
    "imagenet": imagenet,
}
_DELETE = object()


def _broken(field: str, value: Any, base: str = "digits") -> ml_collections.ConfigDict:
    """``base``'s config with ``field`` (e.g. ``"model.fan_in"``) set to ``value``.

    The copy is not type-safe, so a field can take a value of another type (as a
    hand-written config file can); ``_DELETE`` removes the field.
    """
    tree = _CONFIGS[base].get_config().to_dict()
    *parents, leaf = field.split(".")
    node = tree
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return ml_collections.ConfigDict(tree, type_safe=False)


# (base config, field, bad value, substrings the message must contain besides the
# field name; None = repr(value)).
_BAD = [
    ("digits", "model.arch", "foo", None),
    ("digits", "model.arch", "21,4,8", None),
    ("digits", "model.arch", "20,4,0", None),
    ("digits", "model.arch", "resnext77_32x4d", None),
    ("digits", "model.arch", 2048, None),
    ("digits", "model.stem", "resnet", None),
    ("digits", "model.connectivity", "dense", None),
    ("digits", "model.aggregation", "max", None),
    ("digits", "model.branch_impl", "fast", None),
    ("digits", "model.dtype", "float16", None),
    ("digits", "model.mask_init", 1.5, None),
    ("digits", "model.mask_init", -0.1, None),
    ("digits", "model.mask_init", float("nan"), None),
    ("digits", "model.zero_init_residual", "yes", None),
    ("digits", "model.zero_init_residual", 1, None),
    ("digits", "model.fan_in", 0, None),
    ("digits", "model.fan_in", 9, ("C = 8",)),
    ("digits", "model.fan_in", -1, None),
    ("digits", "model.fan_in", 2.5, None),
    ("digits", "model.fan_in", True, None),
    ("imagenet", "model.fan_in", 33, ("C = 32",)),
    ("digits", "data.name", "mnist", None),
    ("digits", "data.num_classes", 0, None),
    ("digits", "data.num_classes", 100, None),
    ("digits", "data.num_classes", 10.0, None),
    ("digits", "data.image_size", -8, None),
    ("digits", "data.image_size", 32, None),
    ("digits", "data.channels", 0, None),
    ("digits", "data.channels", 3, None),
    ("digits", "data.data_dir", 7, None),
    ("cifar10", "data.image_size", 64, None),
    ("cifar10", "data.channels", 1, None),
    ("cifar100", "data.num_classes", 10, None),
    ("imagenet", "data.num_classes", 100, None),
    ("imagenet", "data.channels", 1, None),
    ("mini_imagenet", "data.image_size", 96, None),
    ("mini_imagenet", "data.train_per_class", 0, None),
    ("digits", "batch_size", 0, None),
    ("digits", "batch_size", -64, None),
    ("digits", "batch_size", 64.0, None),
    ("digits", "eval_batch_size", 0, None),
    ("digits", "eval_batch_size", "256", None),
    ("digits", "phase_epochs", (10, 5, 3), None),
    ("digits", "phase_epochs", (10, 5, 3, 2, 1), None),
    ("digits", "phase_epochs", (), None),
    ("digits", "phase_epochs", "10,5,3,2", None),
    ("digits", "phase_epochs", (10, 0, 3, 2), ("config.phase_epochs[1]", "is 0")),
    ("digits", "phase_epochs", (10, 5, -3, 2), ("config.phase_epochs[2]", "is -3")),
    ("digits", "weight_learning_rates", (0.1, 0.1, 0.01), None),
    ("digits", "weight_learning_rates", (0.1, 0.1, 0.0, 0.001), ("[2]", "is 0.0")),
    ("digits", "mask_learning_rate", 0.0, ("'learned'",)),
    ("digits", "mask_learning_rate", -0.2, None),
    ("digits", "weight_decay", -1e-4, None),
    ("digits", "momentum", 1.0, None),
    ("digits", "momentum", -0.1, None),
    ("digits", "decay_norm_and_bias", "yes", None),
    ("digits", "log_every_steps", 0, None),
    ("digits", "checkpoint_every_steps", 0, None),
    ("digits", "checkpoint_every_steps", 1.5, None),
    ("digits", "keep_checkpoints", 0, None),
    ("digits", "eval_every_epochs", 0.0, None),
    ("digits", "eval_every_epochs", -1.0, None),
    ("digits", "seed", 1.5, None),
    ("digits", "seed", -1, ("[0, 4294967295]",)),  # the data order's SeedSequence needs >= 0
    ("digits", "seed", 2**64, ("[0, 4294967295]",)),
    ("digits", "seed", "0", None),
    ("digits", "seed", _DELETE, ("is missing",)),
]


@pytest.mark.parametrize(
    "base, field, value, expected",
    _BAD,
    # Stable ids (an object's repr holds its address): pytest-xdist's workers must agree.
    ids=[
        f"{base}-{field}={'<deleted>' if value is _DELETE else repr(value)}"[:60]
        for base, field, value, _ in _BAD
    ],
)
def test_bad_field_is_one_problem_naming_field_and_value(base, field, value, expected):
    config = _broken(field, value, base)
    with pytest.raises(ConfigError) as info:
        from_config_dict(config)
    message = str(info.value)
    assert f"config.{field}" in message
    for text in expected or (repr(value),):
        assert text in message
    # One mistake, one sentence: no cascade of follow-up problems.
    assert info.value.problems == (message,)
    assert "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size"])
def test_batch_not_divisible_by_devices(field):
    config = _broken(field, 66)  # 64 and 256 are multiples of 4, 66 is not
    with pytest.raises(ConfigError) as info:
        from_config_dict(config, num_devices=4)
    message = str(info.value)
    assert info.value.problems == (message,)
    assert f"config.{field} is 66" in message and "num_devices = 4" in message
    assert "64 or 68" in message


def test_bad_num_devices():
    with pytest.raises(ConfigError, match="num_devices is 0"):
        from_config_dict(digits.get_config(), num_devices=0)


def test_every_problem_reported_one_per_line():
    config = _broken("model.fan_in", 2.5)
    config.batch_size = 0
    config.model.connectivity = "dense"
    with pytest.raises(ConfigError) as info:
        from_config_dict(config)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems) == 3
    for name in ("config.model.fan_in", "config.batch_size", "config.model.connectivity"):
        assert sum(name in line for line in lines) == 1


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert ConfigError("one.").problems == ("one.",)


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_shipped_configs_are_valid(name):
    from_config_dict(_CONFIGS[name].get_config())


def test_imagenet_on_eight_devices_is_valid():
    from_config_dict(imagenet.get_config(), num_devices=8)


@pytest.mark.parametrize(
    "changes",
    [
        {"model.connectivity": "full", "model.fan_in": 9},  # full ignores K
        {"model.connectivity": "full", "mask_learning_rate": 0.0},  # no masks to learn
        {"model.connectivity": "random", "mask_learning_rate": 0.0},
        {"model.fan_in": 8},  # K = C
        {"model.fan_in": 1, "model.connectivity": "real"},
        {"model.arch": "29,64,8", "model.fan_in": 8},
        {"model.arch": "resnext50_32x4d", "model.fan_in": 32, "model.stem": "cifar"},
        {"model.stem": "cifar_maxpool", "model.dtype": "bfloat16"},
        {"model.zero_init_residual": True, "model.aggregation": "sum"},
        {"model.zero_init_residual": False, "model.branch_impl": "einsum"},
        {"model.mask_init": 0, "momentum": 0.0, "weight_decay": 0},
        {"phase_epochs": [0.5, 0.25, 1, 2], "seed": 2**32 - 1},  # fractional epochs, lists
    ],
)
def test_valid_variations(changes):
    config = ml_collections.ConfigDict(digits.get_config().to_dict(), type_safe=False)
    for field, value in changes.items():
        section, _, leaf = field.rpartition(".")
        setattr(config[section] if section else config, leaf, value)
    from_config_dict(config)


# ----------------------------------------------------------------------------- resume guard


def _write_config_json(workdir: pathlib.Path, config) -> None:
    # As mcjax.training.loop.train_and_evaluate writes it (tuples become lists).
    with open(workdir / "config.json", "w") as f:
        json.dump(config.to_dict(), f, indent=1)


def test_resume_of_a_different_model_is_refused(tmp_path):
    previous = digits.get_config()
    previous.model.fan_in = 2
    _write_config_json(tmp_path, previous)
    with pytest.raises(ConfigError) as info:
        check_workdir_matches(str(tmp_path), digits.get_config())
    message = str(info.value)
    assert "config.model.fan_in is 4" in message and "used 2" in message
    assert "--force_resume" in message and "--workdir" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "field, value",
    [("data.name", "cifar10"), ("data.num_classes", 100), ("data.image_size", 16)],
)
def test_resume_with_different_data_is_refused(tmp_path, field, value):
    previous = _broken(field, value)
    _write_config_json(tmp_path, previous)
    with pytest.raises(ConfigError, match=re.escape(f"config.{field} is ")):
        check_workdir_matches(str(tmp_path), digits.get_config())


def test_resume_with_other_bookkeeping_is_fine(tmp_path):
    _write_config_json(tmp_path, digits.get_config())
    config = digits.get_config()
    config.log_every_steps = 7
    config.checkpoint_every_steps = 50
    config.model.branch_impl = "grouped"  # same function of the same parameters
    check_workdir_matches(str(tmp_path), config)


def test_resume_of_full_ignores_fan_in(tmp_path):
    previous = digits.get_config()
    previous.model.connectivity = "full"
    _write_config_json(tmp_path, previous)
    config = digits.get_config()
    config.model.connectivity = "full"
    config.model.fan_in = 1
    check_workdir_matches(str(tmp_path), config)


def test_force_resume_skips_the_check(tmp_path):
    previous = digits.get_config()
    previous.model.arch = "29,8,8"
    _write_config_json(tmp_path, previous)
    check_workdir_matches(str(tmp_path), digits.get_config(), force=True)
    with pytest.raises(ConfigError, match=r"config\.model\.arch is '20,4,8'.*'29,8,8'"):
        check_workdir_matches(str(tmp_path), digits.get_config())


def test_no_previous_config_is_fine(tmp_path):
    check_workdir_matches(str(tmp_path), digits.get_config())
    check_workdir_matches(str(tmp_path / "does-not-exist"), digits.get_config())


def test_unreadable_previous_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot be read.*--force_resume"):
        check_workdir_matches(str(tmp_path), digits.get_config())


@pytest.mark.parametrize("value", [-2, 1.5, "3"])
def test_bad_nan_injection_step(value):
    with pytest.raises(ConfigError, match=r"config\.debug_inject_nan_at_step"):
        from_config_dict(_broken("debug_inject_nan_at_step", value))
