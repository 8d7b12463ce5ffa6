"""Sphinx configuration: the pages of docs/ (Markdown, myst-parser) and the API reference.

Build (warnings are errors, as in .ci/run)::

    pip install -e '.[docs]'
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc imports this checkout's mcjax, installed or not

project = "mcjax"
author = "mcjax contributors"
copyright = "mcjax contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: headings get anchors (`reliability.md#resume-rules`) down to level 3.
myst_heading_anchors = 3

# The API reference: members in source order, as each module's __all__ lists them.
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "undoc-members": True,
    "show-inheritance": True,
}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: a dataclass field is not described twice

html_theme = "alabaster"
html_title = "mcjax"
