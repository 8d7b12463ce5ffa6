"""The README is a front page that links into docs/; the docs pages' Python blocks run.

Each page's ``python`` blocks run as written, in order, in one namespace per page (like a
notebook), as tests/project/test_readme.py does for the README; docs/flax.md has its own
runner (tests/flax/test_flax_guide_blocks.py). The site itself (Sphinx, warnings as errors)
is built by `.ci/run`; the slow tier checks the same build without writing it.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The README is what a newcomer reads first: what mcjax is, the quick start with its output,
# the functional and Flax examples, links. Everything else is a docs page.
README_MAX_LINES = 180
TRAINING_PAGE = ROOT / "docs/training.md"
# Pages whose blocks another test file runs; the index, which the README need not link.
RUN_ELSEWHERE = {ROOT / "docs/flax.md"}
INDEX_PAGE = ROOT / "docs/index.md"

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
# A Markdown link or image: [text](target) or [text](target "title").
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _python_blocks(page: pathlib.Path) -> list[str]:
    return _PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))


def _pages_with_python_blocks() -> list[pathlib.Path]:
    return [
        page
        for page in sorted(DOCS.glob("*.md"))
        if page not in RUN_ELSEWHERE and _python_blocks(page)
    ]


def _run_page(page: pathlib.Path) -> dict:
    namespace: dict = {"__name__": page.stem}
    for index, block in enumerate(_python_blocks(page)):
        name = f"{page.relative_to(ROOT)} block {index + 1}"
        exec(compile(block, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", _pages_with_python_blocks(), ids=lambda page: page.name)
def test_every_python_block_of_a_docs_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write (an exported model) write here
    namespace = _run_page(page)
    if page == TRAINING_PAGE:
        # The inference example: the exported pruned network predicts 10 classes for 4 images.
        assert namespace["logits"].shape == (4, 10)
        assert np.isfinite(np.asarray(namespace["logits"])).all()
        np.testing.assert_array_equal(
            namespace["predictions"], np.argmax(namespace["logits"], axis=-1)
        )


def test_the_training_page_keeps_its_inference_example():
    # The README's inference example moved here; without a block, nothing above would run.
    assert TRAINING_PAGE in _pages_with_python_blocks()


# --- The README as a front page ---------------------------------------------------------


def _links(text: str) -> list[str]:
    """The targets of the Markdown links of ``text``, outside code blocks and code spans."""
    prose = _FENCE.sub("", text)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return _LINK.findall(prose)


def _heading_anchors(page: pathlib.Path) -> set[str]:
    """The anchors a Markdown renderer gives the headings of ``page`` (GitHub's and myst's
    rule: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _FENCE.sub("", page.read_text("utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _link_problems(text: str, base: pathlib.Path) -> list[str]:
    """What is wrong with the relative links of ``text`` (a file in ``base``): each must
    name an existing page under docs/, and its anchor, if any, a heading of that page.

    docs/index.md includes the README as the site's front page, where a link to a file
    outside docs/ would lead nowhere.
    """
    problems = []
    for target in _links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if not path or resolved.parent != DOCS or resolved.suffix != ".md":
            problems.append(f"{target}: the README links only to pages of docs/")
        elif not resolved.exists():
            problems.append(f"{target}: no such page")
        elif anchor and anchor not in _heading_anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {path}")
    return problems


def test_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the rest to docs/"
    )


def test_readme_links_only_to_docs_pages_that_exist():
    problems = _link_problems(README.read_text(encoding="utf-8"), ROOT)
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in _links(README.read_text(encoding="utf-8"))
    }
    pages = {page.resolve() for page in DOCS.glob("*.md") if page != INDEX_PAGE}
    assert pages - linked == set(), "pages the README does not link: " + ", ".join(
        sorted(page.name for page in pages - linked)
    )


def test_link_check_catches_a_missing_page_an_anchor_and_a_file_outside_docs():
    # The checker itself, on links that must fail and links that must pass. Missing names
    # are built in parts, so that this file cites no missing document.
    missing, in_code, in_fence = ("docs/" + name + ".md" for name in ("nowhere", "code", "fence"))
    text = (
        "[a](docs/design.md) [b](docs/design.md#11-where-code-lives) [w](https://x.org/y.md)\n"
        f"[c]({missing}) [d](docs/design.md#no-such-heading) [e](setup.py)\n"
        f"`[f]({in_code})`\n```\n[g]({in_fence})\n```\n"
    )
    assert _link_problems(text, ROOT) == [
        f"{missing}: no such page",
        "docs/design.md#no-such-heading: no heading #no-such-heading in docs/design.md",
        "setup.py: the README links only to pages of docs/",
    ]


# --- The site -----------------------------------------------------------------------------


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    # `.ci/run` builds the HTML; the dummy builder reads, resolves and checks the same
    # (every page, link, anchor and docstring) without writing it.
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "dummy"]
    command += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "out")]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
