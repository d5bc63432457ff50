"""Sphinx configuration for the skclip documentation (builds offline).

The example gallery (sphinx-gallery) runs every ``examples/plot_*.py`` during the build
against a tiny random CLIP checkpoint generated here, so the build needs no network and
no pretrained weights. Set ``SKCLIP_DOCS_MODEL`` (a hub id or local folder) to build the
gallery with a real checkpoint instead.
"""

import atexit
import os
import re
import shutil
import tempfile

# The build never goes online (set before transformers and huggingface_hub are imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import transformers  # noqa: E402

import skclip  # noqa: E402

project = "skclip"
author = "skclip developers"
release = version = skclip.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
exclude_patterns = ["_build"]
templates_path = ["_templates"]
html_theme = "alabaster"


def _gallery_model() -> str:
    """The checkpoint the examples run against: ``SKCLIP_DOCS_MODEL``, else a tiny random
    CLIP saved to a temporary folder that is removed when the build exits."""
    if os.environ.get("SKCLIP_DOCS_MODEL"):
        return os.environ["SKCLIP_DOCS_MODEL"]
    from skclip._testing import save_random_clip

    folder = tempfile.mkdtemp(prefix="skclip-docs-model-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return save_random_clip(folder, size="tiny")


# The examples read their checkpoint from SKCLIP_MODEL; the checkpoint loading progress
# bars stay out of their printed output.
transformers.utils.logging.disable_progress_bar()
os.environ["SKCLIP_MODEL"] = _gallery_model()

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": re.escape(os.sep) + "plot_",  # run every example, to catch breakage
    "ignore_pattern": r"^_",  # helpers such as _data.py are not examples
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,  # no zip archives of all the scripts
    "abort_on_example_error": True,
}


def _skip_metadata_requests(app, what, name, obj, skip, options):
    """scikit-learn generates ``set_*_request`` methods (metadata routing); they are
    documented by scikit-learn, and their docstrings link into its documentation."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
