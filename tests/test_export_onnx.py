"""The one-time ONNX export is visible and can be made ahead: a line on stderr while it is
made (none with progress=False / -q), ``CLIPFeaturizer.export_onnx()`` and ``skclip
export-onnx MODEL``, after which no featurizer exports again."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from skclip import CLIPFeaturizer  # noqa: E402
from skclip.backbones import onnx as _onnx  # noqa: E402
from skclip.cli import main  # noqa: E402

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


def test_export_onnx_method_ahead_of_use(tiny_clip_path, images, fresh):
    feat = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", cache=False, progress=False)
    path = feat.export_onnx()
    assert (path / "model.onnx").is_file() and len(fresh) == 1
    assert feat.export_onnx() == path and len(fresh) == 1  # there already: checked, kept
    _onnx.clear_sessions()
    feat.transform(images)
    assert len(fresh) == 1
    with pytest.raises(ValueError, match="PyTorch"):
        CLIPFeaturizer(model=tiny_clip_path, dtype="bfloat16").export_onnx()


def test_cli_export_onnx_then_no_export_and_equal_embeddings(tiny_clip_path, images, fresh, capsys):
    assert main(["export-onnx", tiny_clip_path]) == 0
    out, err = capsys.readouterr()
    assert len(fresh) == 1 and NOTE in err
    assert out.strip() == str(fresh[0])  # the export's folder, on stdout
    _onnx.clear_sessions()  # the featurizer runs later, in another process
    onnx = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", cache=False)
    torch_ = CLIPFeaturizer(model=tiny_clip_path, runtime="torch", cache=False)
    np.testing.assert_allclose(onnx.transform(images), torch_.transform(images), atol=1e-5, rtol=0)
    assert len(fresh) == 1  # no second export
    assert NOTE not in capsys.readouterr().err


def test_cli_export_onnx_quiet_and_errors(
    tiny_clip_path, tiny_siglip2_path, tmp_path, fresh, capsys
):
    assert main(["export-onnx", "-q", tiny_clip_path]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip() == str(fresh[0])
    assert main(["export-onnx", str(tmp_path / "no-such-model")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export-onnx", tiny_siglip2_path]) == 1  # NaFlex: no fixed input size
    assert "fixed input size" in capsys.readouterr().err
