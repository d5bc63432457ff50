"""Sphinx configuration for the skclip documentation (builds offline)."""

import skclip

project = "skclip"
author = "skclip developers"
release = version = skclip.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc"]
autosummary_generate = True
numpydoc_show_class_members = False
exclude_patterns = ["_build"]
templates_path = ["_templates"]
html_theme = "alabaster"


def _skip_metadata_requests(app, what, name, obj, skip, options):
    """scikit-learn generates ``set_*_request`` methods (metadata routing); they are
    documented by scikit-learn, and their docstrings link into its documentation."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
