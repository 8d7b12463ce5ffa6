"""README.md's Python blocks run as written, in order, in one namespace (like a notebook)."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 4  # functional, NNX, Linen, inference
    monkeypatch.chdir(tmp_path)  # the inference block writes a pruned model
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md block {index + 1}", "exec"), namespace)
        if index == 0:
            # The functional example shows the masks learning: they left their init of 0.5.
            moved = np.abs(np.asarray(namespace["params"]["masks"]) - 0.5).max()
            assert moved > 1e-3, moved
    assert namespace["logits"].shape == (4, 10)  # the exported Linen network's predictions
    assert np.isfinite(float(namespace["loss"]))
