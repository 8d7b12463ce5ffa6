"""Test-session settings.

The tests compile many small XLA programs and run each a few times, so compile time
dominates. ``jax_disable_most_optimizations`` cuts it about in half. Measured on the
2-core CPU machine: the whole suite took 107 s with it and 221 s without, with the same
results (201 passed, 3 xfailed; before tests/test_train.py existed). The catch is that
the compiled code runs slower (a ``20,4,8`` train step on 32 images took 5.1 s instead of
2.8 s): tests/test_train.py, which trains for many steps, took about as long either way
(218 s with it, 195 s without, on a loaded machine).
"""

import jax
import pytest

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The tiny digits run of ``test_faults.TINY_FLAGS``, in this process.

    ``(config, workdir, state_digest)``; shared by the fault and run-safety tests.
    """
    from test_train import digits_config

    from mcjax.training import loop

    workdir = tmp_path_factory.mktemp("whole")
    config = digits_config()
    summary = loop.train_and_evaluate(config, str(workdir))
    checkpoints = (workdir / "checkpoints").iterdir()
    steps = sorted(int(path.name) for path in checkpoints if path.name.isdigit())
    assert steps == [3, 6, 9, 12, 14, 15, 18, 21, 22]
    return config, workdir, summary["state_digest"]
