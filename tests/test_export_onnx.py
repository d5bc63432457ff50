"""The one-time ONNX export is visible: a line on stderr while it is made (none with
progress=False)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from skclip import CLIPFeaturizer  # noqa: E402
from skclip.backbones import onnx as _onnx  # noqa: E402

NOTE = "exporting the image tower to ONNX (once per checkpoint)"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty export folder, no session in memory (as a new process on a new machine),
    and a spy on the exports made."""
    monkeypatch.setenv("SKCLIP_CACHE_DIR", str(tmp_path / "user-cache"))
    _onnx.clear_sessions()
    made = []
    real = _onnx._export_float32

    def spy(clip, target):
        made.append(target)
        real(clip, target)

    monkeypatch.setattr(_onnx, "_export_float32", spy)
    yield made
    _onnx.clear_sessions()


@pytest.fixture(scope="module")
def images():
    return [np.asarray(make_image(np.random.default_rng(i), (40 + i, 36))) for i in range(3)]


def test_first_use_says_it_exports_once(tiny_clip_path, images, fresh, capsys):
    feat = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", cache=False)
    feat.transform(images)
    assert capsys.readouterr().err.count(NOTE) == 1
    feat.transform(images)
    _onnx.clear_sessions()  # a new process: the export on disk is reused, silently
    feat.transform(images)
    assert NOTE not in capsys.readouterr().err
    assert len(fresh) == 1


def test_progress_false_exports_silently(tiny_clip_path, images, fresh, capsys):
    feat = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", progress=False)
    feat.transform(images)
    assert len(fresh) == 1 and NOTE not in capsys.readouterr().err
