"""The ONNX Runtime image tower: equal to PyTorch, exported once, rebuilt when broken."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from skclip.backbones import onnx as _onnx  # noqa: E402
from skclip._images import CLIPPreprocessor  # noqa: E402
from skclip.backbones.loading import load_backbone as load_clip  # noqa: E402
from skclip._paths import user_cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return load_clip(tiny_clip_path, "cpu", "float32")


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def pristine(clip, tmp_path_factory):
    """One real export for the module; tests that export again copy it instead."""
    return _onnx.export(clip, folder=tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def exports(monkeypatch, pristine):
    """Counts float32 exports; each one copies the module's real export (seconds saved)."""
    made = []

    def copying(clip, target):
        made.append(target)
        tmp = target.with_name(".tmp-copy")
        shutil.copytree(pristine, tmp)
        (tmp / "meta.json").unlink()
        _onnx._seal(tmp, target, {"copied": True})

    monkeypatch.setattr(_onnx, "_export_float32", copying)
    _onnx.clear_sessions()
    yield made
    _onnx.clear_sessions()


def torch_features(clip, pixels):
    prep = CLIPPreprocessor(clip.image_config)
    with torch.inference_mode():
        out = clip.model.get_image_features(pixel_values=prep.normalize(torch.from_numpy(pixels)))
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def test_equal_to_torch_within_1e_5(clip, pixels, pristine):
    encoder = _onnx.image_encoder(clip, folder=pristine.parent)
    got = encoder(pixels)
    expected = torch_features(clip, pixels)
    assert got.shape == expected.shape == (5, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # any batch size: the batch axis is dynamic
    np.testing.assert_allclose(encoder(pixels[:1]), expected[:1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder(pixels[:3]), expected[:3], atol=1e-5, rtol=0)


def test_export_made_once_and_reused(clip, pixels, tmp_path, exports):
    first = _onnx.image_encoder(clip, folder=tmp_path)
    assert _onnx.image_encoder(clip, folder=tmp_path).session is first.session  # in-process
    _onnx.clear_sessions()  # as a new process would: the file on disk is reused
    second = _onnx.image_encoder(clip, folder=tmp_path)
    assert second.session is not first.session
    assert len(exports) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no leftovers
    np.testing.assert_array_equal(second(pixels), first(pixels))


def test_one_session_per_thread_count(clip, tmp_path, exports):
    one = _onnx.image_encoder(clip, folder=tmp_path, threads=1)
    two = _onnx.image_encoder(clip, folder=tmp_path, threads=2)
    assert one.session is not two.session and (one.threads, two.threads) == (1, 2)
    assert len(exports) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete_weights", "delete_meta"])
def test_broken_export_is_rebuilt(clip, pixels, tmp_path, exports, damage):
    path = _onnx.image_encoder(clip, folder=tmp_path).path
    expected = torch_features(clip, pixels)
    model, weights = path / "model.onnx", path / "model.onnx.data"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        model.write_bytes(b"garbage")
    elif damage == "delete_weights":
        weights.unlink()
    else:
        (path / "meta.json").unlink()
    assert not _onnx._usable(path)
    _onnx.clear_sessions()
    encoder = _onnx.image_encoder(clip, folder=tmp_path)
    assert len(exports) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no leftovers
    np.testing.assert_allclose(encoder(pixels), expected, atol=1e-5, rtol=0)


def test_same_size_corruption_is_rebuilt(clip, pixels, tmp_path, exports):
    path = _onnx.image_encoder(clip, folder=tmp_path).path
    model = path / "model.onnx"
    size = model.stat().st_size
    model.write_bytes((b"not a model " * size)[:size])  # sizes still match meta.json
    _onnx.clear_sessions()
    encoder = _onnx.image_encoder(clip, folder=tmp_path)
    assert len(exports) == 2
    np.testing.assert_allclose(encoder(pixels), torch_features(clip, pixels), atol=1e-5, rtol=0)


def test_key_follows_weights_and_preprocessing(clip, tiny_clip_path, tmp_path):
    key = _onnx.export_key(clip)
    assert key.endswith("-float32") and _onnx.export_key(clip, "int8").endswith("-int8")
    assert _onnx.export_key(clip, "int8")[:-5] == key[:-8]
    from skclip._testing import save_random_clip

    reseeded = load_clip(save_random_clip(tmp_path / "seed1", seed=1), "cpu", "float32")
    assert _onnx.export_key(reseeded) != key
    with pytest.raises(ValueError, match="dtype must be one of"):
        _onnx.export_key(clip, "float16")


def test_int8_is_close_but_approximate(clip, pixels, tmp_path, exports):
    fp32 = _onnx.image_encoder(clip, folder=tmp_path)(pixels)
    encoder = _onnx.image_encoder(clip, folder=tmp_path, dtype="int8")
    assert encoder.path.name.endswith("-int8") and len(exports) == 1  # from the fp32 export
    int8 = encoder(pixels)
    cos = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cos.min() > 0.99
    assert not np.array_equal(fp32, int8)


def test_needs_cpu_float32(tiny_clip_path, tmp_path):
    half = load_clip(tiny_clip_path, "cpu", "bfloat16")
    with pytest.raises(ValueError, match="CPU in float32"):
        _onnx.export(half, folder=tmp_path)
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_default_folder_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SKCLIP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if user_cache_dir().parts[-1] == "skclip":  # Linux and other XDG systems
        assert _onnx.default_folder() == tmp_path / "xdg" / "skclip" / "onnx"
    monkeypatch.setenv("SKCLIP_CACHE_DIR", str(tmp_path / "mine"))
    assert _onnx.default_folder() == tmp_path / "mine" / "onnx"


def _scale_weights(path, factor=1.1):
    """Change bytes of the export's weights in place, keeping its size (a damaged disk,
    or another export in its place)."""
    weights = path / "model.onnx.data"
    raw = np.frombuffer(weights.read_bytes(), dtype=np.float32).copy()
    raw[: len(raw) // 2] *= factor
    weights.write_bytes(raw.tobytes())


def test_3_bytes_changed_in_place_are_noticed_and_rebuilt(clip, pixels, tmp_path, exports):
    path = _onnx.image_encoder(clip, folder=tmp_path).path
    _scale_weights(path)
    assert _onnx._usable(path)  # every size as recorded: only a checksum tells
    _onnx.clear_sessions()  # as a new process would
    encoder = _onnx.image_encoder(clip, folder=tmp_path)
    assert len(exports) == 2
    np.testing.assert_allclose(encoder(pixels), torch_features(clip, pixels), atol=1e-5, rtol=0)
    assert _onnx.verified(encoder.path) is not None


def test_3_the_record_names_versions_and_checksums(clip, tmp_path, exports):
    import json

    import onnxruntime

    path = _onnx.image_encoder(clip, folder=tmp_path).path
    meta = json.loads((path / "meta.json").read_text())
    assert meta["torch"] == torch.__version__ and meta["onnxruntime"] == onnxruntime.__version__
    assert sorted(meta["sha256"]) == sorted(meta["files"]) == ["model.onnx", "model.onnx.data"]


def test_3_cached_embeddings_are_keyed_by_the_exact_export(tiny_clip_path, tmp_path, monkeypatch):
    """Another export in its place (as another torch might write, sealed with its own
    record): the entries the first one made are never served for it."""
    import json

    from helpers import make_image

    from skclip import CLIPFeaturizer

    monkeypatch.setenv("SKCLIP_CACHE_DIR", str(tmp_path / "user-cache"))  # exports made here
    _onnx.clear_sessions()
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(3)]
    feat = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", cache_dir=tmp_path / "emb")
    first = feat.transform(images)
    (path,) = (tmp_path / "user-cache" / "onnx").glob("*-float32")
    _scale_weights(path, 1.05)
    meta = json.loads((path / "meta.json").read_text())
    if "sha256" in meta:
        meta["sha256"]["model.onnx.data"] = _onnx._sha256(path / "model.onnx.data")
    (path / "meta.json").write_text(json.dumps(meta))
    _onnx.clear_sessions()  # a new process: memory empty, the folder full
    CLIPFeaturizer.cache_clear()
    again = feat.transform(images)
    direct = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime", cache=False)
    np.testing.assert_allclose(again, direct.transform(images), atol=1e-6)
    assert not np.allclose(again, first, atol=1e-4)
    _onnx.clear_sessions()
    CLIPFeaturizer.cache_clear()
