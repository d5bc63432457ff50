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


@needs_onnx
def test_auto_is_onnxruntime_on_the_cpu_in_float32(tiny_clip_path):
    assert spec(CLIPFeaturizer(model=tiny_clip_path, device="cpu")).encoder is not None
    assert spec(CLIPFeaturizer(model=tiny_clip_path, runtime="torch")).encoder is None
    assert (
        spec(CLIPFeaturizer(model=tiny_clip_path, device="cpu", dtype="bfloat16")).encoder is None
    )
    assert _encode.resolve_runtime("auto", torch.device("cuda"), "auto") == "torch"


def test_auto_is_torch_without_onnxruntime(tiny_clip_path, monkeypatch):
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
    CLIPFeaturizer(model=tiny_clip_path, runtime="auto").transform(images)  # = onnxruntime here
    assert count_encoded["images"] == 10


@needs_onnx
def test_auto_falls_back_to_torch_with_a_warning(tiny_clip_path, images, monkeypatch):
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


def test_naflex_stays_on_torch_under_auto(tiny_siglip2_path):
    assert spec(CLIPFeaturizer(model=tiny_siglip2_path)).encoder is None
