"""Every script in examples/ runs, offline, against the tiny test checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tiny_clip_path, tmp_path):
    env = {
        **os.environ,
        "SKCLIP_MODEL": tiny_clip_path,
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accuracy" in done.stdout
    # Its generated image folders are removed (issue 15, item 10).
    assert sorted(p.name for p in tmp_path.glob("skclip-example-*")) == []
