"""Sphinx configuration for the skclip documentation (builds offline)."""

import skclip

project = "skclip"
author = "skclip developers"
release = version = skclip.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc"]
autosummary_generate = True
numpydoc_show_class_members = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
