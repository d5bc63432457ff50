"""CLIPFeaturizer(runtime=...): ONNX Runtime on the CPU equals PyTorch, has its own cache
entries, falls back to PyTorch under "auto" when it cannot run; dtype="int8"."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from helpers import make_image
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)

from skclip import CLIPFeaturizer
from skclip.encoding import engine as _encode
from skclip.backbones import onnx as _onnx

needs_onnx = pytest.mark.skipif(not _onnx.is_available(), reason="needs skclip[onnx]")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images():
    return [np.asarray(make_image(np.random.default_rng(i), (50 + i, 40))) for i in range(5)]


def spec(featurizer):
    return _encode.spec_for(featurizer, n_views=0, seed=None)


@needs_onnx
@pytest.mark.parametrize("params", [{}, {"normalize": False}, {"augment": 2, "random_state": 0}])
def test_onnxruntime_equals_torch_within_1e_5(tiny_clip_path, images, params):
    def run(runtime):
        feat = CLIPFeaturizer(model=tiny_clip_path, runtime=runtime, cache=False, **params)
        return feat.fit_transform(images)

    np.testing.assert_allclose(run("onnxruntime"), run("torch"), atol=1e-5, rtol=0)


@pytest.fixture
def auto_picks_onnxruntime(monkeypatch):
    """runtime="auto" as it was: ONNX Runtime on the CPU in float32 when installed."""
    monkeypatch.setattr(_encode, "AUTO_PICKS_ONNXRUNTIME", True)


@needs_onnx
def test_auto_is_torch_unless_int8(tiny_clip_path):
    """On 2 cores ONNX Runtime was about 1.2x PyTorch end to end: not the default."""
    assert spec(CLIPFeaturizer(model=tiny_clip_path, device="cpu")).encoder is None
    assert _encode.resolve_runtime("auto", CPU, "auto") == "torch"
    assert _encode.resolve_runtime("auto", CPU, "int8") == "onnxruntime"
    assert spec(CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime")).encoder is not None


@needs_onnx
def test_auto_could_be_onnxruntime_on_the_cpu_in_float32(tiny_clip_path, auto_picks_onnxruntime):
    assert spec(CLIPFeaturizer(model=tiny_clip_path, device="cpu")).encoder is not None
    assert spec(CLIPFeaturizer(model=tiny_clip_path, runtime="torch")).encoder is None
    assert (
        spec(CLIPFeaturizer(model=tiny_clip_path, device="cpu", dtype="bfloat16")).encoder is None
    )
    assert _encode.resolve_runtime("auto", torch.device("cuda"), "auto") == "torch"


def test_auto_is_torch_without_onnxruntime(tiny_clip_path, monkeypatch, auto_picks_onnxruntime):
    monkeypatch.setattr(_onnx, "is_available", lambda: False)
    assert _encode.resolve_runtime("auto", CPU, "auto") == "torch"
    assert spec(CLIPFeaturizer(model=tiny_clip_path)).encoder is None
    with pytest.raises(ImportError, match=r"skclip\[onnx\]"):
        CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime").fit([np.zeros((8, 8, 3))])


@needs_onnx
def test_runtime_is_part_of_the_cache_key(tiny_clip_path, images, count_encoded):
    CLIPFeaturizer(model=tiny_clip_path, runtime="torch").transform(images)
    assert count_encoded["images"] == 5
    onnx = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime")
    onnx.transform(images)
    assert count_encoded["images"] == 10  # not the torch entries
    onnx.transform(images)
    CLIPFeaturizer(model=tiny_clip_path, runtime="auto").transform(images)  # = torch
    assert count_encoded["images"] == 10


@needs_onnx
def test_auto_falls_back_to_torch_with_a_warning(
    tiny_clip_path, images, monkeypatch, auto_picks_onnxruntime
):
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(_onnx, "image_encoder", broken)
    monkeypatch.setattr(_onnx, "_WARNED", set())
    monkeypatch.setattr(_encode, "_ONNX_FAILED", weakref.WeakKeyDictionary())
    with pytest.warns(RuntimeWarning, match="uses PyTorch instead"):
        got = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(images)
    expected = CLIPFeaturizer(model=tiny_clip_path, runtime="torch", cache=False).transform(images)
    np.testing.assert_array_equal(got, expected)
    CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(images)
    assert len(attempts) == 1  # a failed export is not attempted again on every call
    with pytest.raises(RuntimeError, match="unsupported operator"):  # asked for: no fallback
        CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime").transform(images)


@needs_onnx
def test_int8_is_approximate_and_cached_apart(tiny_clip_path, images, count_encoded):
    fp32 = CLIPFeaturizer(model=tiny_clip_path, runtime="onnxruntime").transform(images)
    int8 = CLIPFeaturizer(model=tiny_clip_path, dtype="int8").transform(images)
    assert count_encoded["images"] == 10
    assert not np.array_equal(int8, fp32)
    assert np.min(np.sum(int8 * fp32, axis=1)) > 0.99  # unit rows: cosines


def test_invalid_combinations_fail_at_fit(tiny_clip_path):
    image = [np.zeros((8, 8, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match="dtype='int8' is ONNX Runtime"):
        CLIPFeaturizer(model=tiny_clip_path, dtype="int8", runtime="torch").fit(image)
    with pytest.raises(ValueError, match="runs on the CPU"):
        _encode.resolve_runtime("onnxruntime", torch.device("cuda"), "auto")
    with pytest.raises(ValueError, match="float32"):
        _encode.resolve_runtime("onnxruntime", CPU, "float16")
    with pytest.raises(ValueError, match="runtime"):
        CLIPFeaturizer(model=tiny_clip_path, runtime="tensorrt").fit(image)


@needs_onnx
@pytest.mark.parametrize("family", ["tiny_siglip_path", "tiny_metaclip2_path", "tiny_dinov2_path"])
def test_onnxruntime_equals_torch_for_fixed_size_families(family, images, request):
    path = request.getfixturevalue(family)

    def run(runtime):
        return CLIPFeaturizer(model=path, runtime=runtime, cache=False).transform(images)

    assert spec(CLIPFeaturizer(model=path, runtime="onnxruntime")).encoder is not None
    np.testing.assert_allclose(run("onnxruntime"), run("torch"), atol=1e-5, rtol=0)


def test_naflex_stays_on_torch_under_auto(tiny_siglip2_path, auto_picks_onnxruntime):
    assert spec(CLIPFeaturizer(model=tiny_siglip2_path)).encoder is None


@pytest.fixture
def jpeg_paths(tmp_path):
    """9 JPEG files, one of them truncated (not an image), one missing."""
    paths = []
    for i in range(9):
        path = tmp_path / f"img{i}.jpg"
        make_image(np.random.default_rng(i), (40 + i, 36)).save(path, quality=90)
        paths.append(str(path))
    (tmp_path / "img4.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "img7.jpg").unlink()
    return paths


@pytest.fixture
def forward_log(monkeypatch):
    """For every file read and every image decoded: whether a forward pass of ONNX Runtime
    was running then, and how many passes were done (each pass made slow, so that work
    done during it shows)."""
    import threading
    import time

    running = threading.Event()
    log: dict[str, list] = {"read": [], "decoded": [], "passes": []}
    call = _onnx.ImageEncoder.__call__

    def slow_pass(self, pixels):
        running.set()
        try:
            time.sleep(0.05)
            return call(self, pixels)
        finally:
            log["passes"].append(True)
            running.clear()

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            log[name].append((running.is_set(), len(log["passes"])))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(_onnx.ImageEncoder, "__call__", slow_pass)
    monkeypatch.setattr(_encode, "_read_file", spy("read", _encode._read_file))
    monkeypatch.setattr(_encode, "open_image", spy("decoded", _encode.open_image))
    return log


@needs_onnx
def test_onnxruntime_decodes_between_passes_and_reads_ahead(
    tiny_clip_path, jpeg_paths, forward_log
):
    """ONNX Runtime keeps every core busy during a pass: with n_jobs=None no image is
    decoded during one, on as many threads as it uses; files are read passes ahead."""
    feat = CLIPFeaturizer(
        model=tiny_clip_path, runtime="onnxruntime", batch_size=2, cache=False, on_error="warn"
    )
    s = spec(feat)
    assert s.decode_between and s.n_threads == s.encoder.threads
    with pytest.warns(UserWarning, match="2 of 9 images"):
        feat.transform(jpeg_paths)
    assert len(forward_log["passes"]) == 5  # 9 files in batches of 2
    assert not any(during for during, _ in forward_log["decoded"])
    assert forward_log["read"][-1][1] <= 2  # the last batch's file, before pass 3 was done
    assert not spec(feat.set_params(n_jobs=1)).decode_between  # threads asked for: during
    assert not spec(feat.set_params(n_jobs=None, runtime="torch")).decode_between


@needs_onnx
@pytest.mark.parametrize("params", [{}, {"augment": 2, "random_state": 0}])
def test_decoding_between_or_during_passes_gives_the_same_rows_and_errors(
    tiny_clip_path, jpeg_paths, params, monkeypatch
):
    def run(between, runtime="onnxruntime"):
        monkeypatch.setattr(_encode, "ONNX_DECODE_BETWEEN", between)
        feat = CLIPFeaturizer(
            model=tiny_clip_path, runtime=runtime, batch_size=3, cache=False, on_error="warn"
        )
        with pytest.warns(UserWarning) as caught:
            X = feat.fit_transform(jpeg_paths)
        return X, [str(w.message) for w in caught]

    (between, errors), (during, errors_during) = run(True), run(False)
    assert np.isnan(between[[4, 7]]).all() and np.isfinite(np.delete(between, [4, 7], 0)).all()
    np.testing.assert_array_equal(between, during)
    assert errors == errors_during and "img4.jpg" in errors[0] and "img7.jpg" in errors[0]
    torch_rows, _ = run(True, "torch")
    np.testing.assert_allclose(between, torch_rows, atol=1e-5, rtol=0)
