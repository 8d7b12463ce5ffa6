"""The tiny digits run: a small network and a few steps per phase, in one place.

``digits_config()`` is the run in this process (the session's ``tiny_run`` fixture of
tests/conftest.py trains it once); ``tiny_flags()`` is its command-line twin, so that a
run started as ``python -m mcjax.main`` ends in the same state, bit for bit.
"""

from __future__ import annotations

# K = 1 (of C = 4): the learned connectivity leaves dead blocks, so pruning removes some.
# Phases of 9, 5, 4 and 4 steps of 8 images; checkpoints every 3 steps and at each phase
# end.
TINY = {
    "model.arch": "11,2,4",
    "model.fan_in": 1,
    "batch_size": 8,
    "eval_batch_size": 6,
    "log_every_steps": 2,
    "eval_every_epochs": 100.0,
    "checkpoint_every_steps": 3,
    "keep_checkpoints": 20,
}
PHASE_EPOCHS = (0.05, 0.03, 0.02, 0.02)
CHECKPOINT_STEPS = [3, 6, 9, 12, 14, 15, 18, 21, 22]
TOTAL_STEPS = 22
PHASE_ONE_END = 9
DIGITS_TEST_EXAMPLES = 360


def _set(config, field: str, value) -> None:
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def tiny(config, **data):
    """``TINY`` on top of a data set's own config; ``data`` sets ``config.data`` fields."""
    for field, value in TINY.items():
        _set(config, field, value)
    for key, value in data.items():
        config.data[key] = value
    return config


def digits_config(**model):
    """The tiny digits run; ``model`` overrides ``config.model`` fields."""
    from configs import digits

    config = tiny(digits.get_config())
    config.phase_epochs = PHASE_EPOCHS
    for key, value in model.items():
        config.model[key] = value
    return config


def _flag(field: str, value) -> str:
    if isinstance(value, tuple):
        value = "(" + ",".join(str(v) for v in value) + ")"
    return f"--config.{field}={value}"


TINY_FLAGS = [_flag(f, v) for f, v in {**TINY, "phase_epochs": PHASE_EPOCHS}.items()]


def tiny_flags(*overrides: str) -> list[str]:
    """TINY_FLAGS with ``overrides`` in place of the flags they name (repeating a tuple
    flag would append to it)."""
    names = {flag.split("=")[0] for flag in overrides}
    return [f for f in TINY_FLAGS if f.split("=")[0] not in names] + list(overrides)
