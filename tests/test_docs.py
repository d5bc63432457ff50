"""The documentation builds offline with warnings as errors (what CI checks), and its
example gallery runs every ``examples/plot_*.py`` against the tiny random CLIP that
``docs/conf.py`` generates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
GENERATED = shutil.ignore_patterns("_build", "generated", "auto_examples", "sg_execution_times.rst")


def test_docs_build_without_warnings(tmp_path):
    # A copy of docs/ and examples/, so the gallery runs every example afresh (it skips
    # examples whose output is already in docs/auto_examples) and the checkout stays clean.
    for folder in ("docs", "examples"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=GENERATED)
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    env.pop("SKCLIP_DOCS_MODEL", None)  # the build makes its own tiny model
    env.pop("SKCLIP_MODEL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            "-d",
            str(tmp_path / "doctrees"),
            str(tmp_path / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    html = tmp_path / "html"
    api = (html / "generated" / "skclip.TipAdapterClassifier.html").read_text()
    assert "Tip-Adapter-F" in api and "cache_keys_" in api  # the docstrings made it in

    # Every example has a gallery page, linked from the gallery index and the front page.
    examples = sorted(p.stem for p in (ROOT / "examples").glob("plot_*.py"))
    index = (html / "auto_examples" / "index.html").read_text()
    assert "auto_examples/index.html" in (html / "index.html").read_text()
    for name in examples:
        assert f"{name}.html" in index, name
        assert (html / "auto_examples" / f"{name}.html").is_file(), name
    # The new examples ran during the build: their figures are in their pages.
    for name in ("plot_method_comparison", "plot_alpha_beta_heatmap", "plot_confusion_matrix"):
        page = (html / "auto_examples" / f"{name}.html").read_text()
        figure = f"sphx_glr_{name}_001.png"
        assert figure in page, name
        assert (html / "_images" / figure).stat().st_size > 1000, figure
        assert "accuracy" in page, name  # and their printed output
    # Nothing left behind: the generated image folders and the tiny model are removed.
    assert sorted(p.name for p in (tmp_path / "tmp").glob("skclip-*")) == []
