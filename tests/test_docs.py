"""The documentation builds offline with warnings as errors (what CI checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    html = (tmp_path / "html" / "generated" / "skclip.TipAdapterClassifier.html").read_text()
    assert "Tip-Adapter-F" in html and "cache_keys_" in html  # the docstrings made it in
