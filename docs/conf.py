"""Sphinx configuration of the art-jacreg documentation.

Build (warnings are errors) from the repository root::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The examples in ``docs/examples/`` are executed at build time by sphinx-gallery on the embedded MNIST subset.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # for the docs-local helper module ``_results``

# Headless, deterministic, quiet example runs.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
# One intra-op thread: the models are small, and on a shared machine torch's thread pool slows down badly when the
# cores are oversubscribed. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _cli_help import write_cli_help  # noqa: E402
from _results import write_results_fragments  # noqa: E402

import art_jacreg  # noqa: E402

project = "art-jacreg"
author = "art-jacreg developers"
copyright = "2024-2025, art-jacreg developers"  # noqa: A001
release = art_jacreg.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    # MathJax bundled into _static/mathjax: the pages render their mathematics offline (no CDN).
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "examples/GALLERY_HEADER.rst",
    # Files of the results folder are pulled in by results.rst (through _generated/), not built as pages.
    "results/**",
    "_generated/**",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
]

# Values quoted in the prose come from the code, so the pages cannot drift from it.
from art_jacreg.trainer import DEFAULT_REG_WEIGHTS  # noqa: E402

rst_prolog = f"""
.. |default_reg_l2| replace:: ``{DEFAULT_REG_WEIGHTS[2.0]:g}``
.. |default_reg_linf| replace:: ``{DEFAULT_REG_WEIGHTS[float("inf")]:g}``
"""

# -- autodoc ---------------------------------------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
# The package imports torch and ART lazily; both are installed, so nothing needs mocking.
autodoc_mock_imports: list[str] = []

# -- MyST (CHANGELOG.md and the harness's markdown tables) ---------------------------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = [
    # The changelog is included from the repository root; its reference-style links are plain text on purpose.
    "myst.xref_missing",
]

# -- sphinx-gallery ------------------------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "min_reported_time": 1,
    "capture_repr": (),
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_signature": False,
}

# -- HTML ------------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"art-jacreg {release}"
html_show_sourcelink = False

mathjax3_config = {
    "tex": {
        "macros": {
            "R": r"\mathbb{R}",
            "E": r"\mathbb{E}",
            "eps": r"\varepsilon",
        }
    }
}


def setup(app):  # noqa: D103 - Sphinx hook
    # Pull the harness's results (if the lead has put them in docs/results/) into docs/_generated/ before reading.
    app.connect("builder-inited", lambda app: write_results_fragments(HERE))
    # The CLI page shows the real --help texts.
    app.connect("builder-inited", lambda app: write_cli_help(HERE))
