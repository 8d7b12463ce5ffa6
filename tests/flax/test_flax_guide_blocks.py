"""docs/flax.md's Python blocks run as written, in order, in one namespace (like a notebook)."""

import pathlib
import re

import numpy as np

GUIDE = pathlib.Path(__file__).resolve().parents[2] / "docs/flax.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.M | re.S)


def test_every_python_block_of_the_flax_guide_runs(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "flax_guide"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/flax.md block {index + 1}", "exec"), namespace)
    # The guide's claims, checked on what it left: frozen through the restore, pruned blocks.
    assert namespace["restored"].second.is_frozen
    assert len(namespace["pruned"].first.blocks) == 2
    assert np.isfinite(float(namespace["loss"]))
