"""README.md's Python blocks run as written, in order, in one namespace (like a notebook)."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 2  # functional, NNX (Linen: docs/flax.md; export: docs/training.md)
    monkeypatch.chdir(tmp_path)  # a block that writes a file writes it here
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md block {index + 1}", "exec"), namespace)
        if index == 0:
            # The functional example shows the masks learning: they left their init of 0.5.
            moved = np.abs(np.asarray(namespace["params"]["masks"]) - 0.5).max()
            assert moved > 1e-3, moved
    # The NNX example's pruned copy computes the frozen model's function (both evaluate).
    x = namespace["x"]
    np.testing.assert_allclose(
        namespace["pruned_model"](x), namespace["model"](x), rtol=1e-5, atol=1e-5
    )
    assert np.isfinite(float(namespace["loss"]))
