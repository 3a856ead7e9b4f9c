"""Sphinx configuration of the stmodels documentation.

Build with ``make docs`` or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Autodoc imports :mod:`stmodels` from this checkout; the compiled extension ``stmodels._C`` is not
needed (the package imports without it, and the docs describe every backend either way).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The docs never need the compiled kernels; not loading them keeps the build the same whether or
# not (and against whichever torch) stmodels._C was built.
os.environ.setdefault("STMODELS_DISABLE_EXT", "1")

import stmodels  # noqa: E402

project = "stmodels"
author = "stmodels developers"
copyright = "stmodels developers"  # noqa: A001
version = stmodels.__version__
release = stmodels.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
# Every cross-reference must resolve (`sphinx -n -W`, run by the tests); these targets live in other
# projects' docs (no intersphinx: the build is offline) or are private to stmodels.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:(class|func|data|exc)", r"(torch|numpy|os|pathlib|collections\.abc)\..*"),
    (r"py:class", r"(Module|Tensor)"),
    (r"py:mod", r"stmodels\.ops\._backend"),
    (r"py:(class|func)", r"(DiTFinalLayer|ddim_timesteps|LatentMambaBlock)"),  # internal helpers of stmodels.nn
]

# Google-style docstrings (Args:, Returns:, Raises:, Example:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Summary tables only; the entries are documented on the API page itself.
autosummary_generate = False

html_theme = "alabaster"
html_title = f"stmodels {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Fast selective-scan and AdaLN kernels for PyTorch",
    "fixed_sidebar": True,
}


def _drop_inherited_data_docstrings(app, what, name, obj, options, lines):
    """Module-level data without a doc comment would show its type's docstring (dict's); drop it."""
    import inspect

    type_doc = inspect.getdoc(type(obj)) or ""
    if what == "data" and lines and "\n".join(lines).strip() == type_doc.strip():
        lines.clear()


def setup(app):
    app.connect("autodoc-process-docstring", _drop_inherited_data_docstrings)
