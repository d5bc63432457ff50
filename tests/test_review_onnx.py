"""Review of issue 19, finding 1: what an ONNX Runtime session runs is what was verified."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from skclip.backbones import onnx as _onnx  # noqa: E402
from skclip.backbones.loading import load_backbone as load_clip  # noqa: E402


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return load_clip(tiny_clip_path, "cpu", "float32")


@pytest.fixture
def pixels():
    return np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)


def _scramble(path):
    raw = bytearray(path.read_bytes())
    raw[::7] = bytes(b ^ 0x55 for b in raw[::7])
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(raw)


@pytest.fixture
def fresh():
    _onnx.clear_sessions()
    yield
    _onnx.clear_sessions()


def test_1_live_session_ignores_later_edits_of_its_weights(clip, pixels, tmp_path, fresh):
    encoder = _onnx.image_encoder(clip, folder=tmp_path)
    before = encoder(pixels)
    _scramble(encoder.path / "model.onnx.data")
    np.testing.assert_array_equal(encoder(pixels), before)  # before the fix: max diff 2.2


def test_1_edit_between_verification_and_session_is_rebuilt(
    clip, pixels, tmp_path, fresh, monkeypatch
):
    pristine = _onnx.image_encoder(clip, folder=tmp_path / "ref")(pixels)
    _onnx.clear_sessions()
    real_export = _onnx.export

    def export_then_tamper(*args, **kwargs):
        folder = real_export(*args, **kwargs)  # verified here
        if not getattr(export_then_tamper, "done", False):
            export_then_tamper.done = True
            _scramble(folder / "model.onnx.data")
        return folder

    monkeypatch.setattr(_onnx, "export", export_then_tamper)
    encoder = _onnx.image_encoder(clip, folder=tmp_path / "raced")
    np.testing.assert_allclose(encoder(pixels), pristine, atol=1e-5)
    assert _onnx.verified(encoder.path) is not None
    assert encoder.identity.split()[0] == _onnx.verified(encoder.path)


@pytest.mark.parametrize("plant", ["fifo", "dev-zero"])
def test_12_special_file_as_meta_json_is_rebuilt_not_read(clip, tmp_path, fresh, plant):
    import os
    import threading

    folder = _onnx.export(clip, folder=tmp_path)
    meta = folder / "meta.json"
    meta.unlink()
    if plant == "fifo":
        os.mkfifo(meta)
    else:
        os.symlink("/dev/zero", meta)
    _onnx.clear_sessions()
    done = {}
    worker = threading.Thread(
        target=lambda: done.update(path=_onnx.export(clip, folder=tmp_path)), daemon=True
    )
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    if hung and plant == "fifo":  # before the fix: blocked opening the FIFO; let it go
        os.close(os.open(meta, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    assert not hung
    assert _onnx.verified(done["path"]) is not None  # rebuilt
