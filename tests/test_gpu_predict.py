"""Prediction on the GPU when the classifier's device is CUDA, on the CPU otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
import torch

from skclip import TipAdapterClassifier, TipAdapterClassifierCV
from skclip.heads import _base as tip_adapter
from skclip._testing import TINY_DIM

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "resolved, expected", [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "cpu")]
)
def test_prediction_device_is_cuda_or_cpu(monkeypatch, resolved, expected):
    monkeypatch.setattr(tip_adapter, "resolve_device", lambda device: torch.device(resolved))
    assert tip_adapter._prediction_device("whatever") == torch.device(expected)


def test_cpu_device_predicts_on_the_cpu():
    assert tip_adapter._prediction_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert tip_adapter._prediction_device("auto") == torch.device("cpu")


def _task(dtype, n_classes=5, shots=8, n_queries=300, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, TINY_DIM))
    y = np.repeat(np.arange(n_classes), shots)
    X = (rng.standard_normal((len(y), TINY_DIM)) + 2 * means[y]).astype(dtype)
    Xq = (
        rng.standard_normal((n_queries, TINY_DIM))
        + 2 * means[rng.integers(0, n_classes, n_queries)]
    )
    W = (rng.standard_normal((n_classes, TINY_DIM)) + means).astype(dtype)
    return X, y, Xq.astype(dtype), W


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [TipAdapterClassifier, TipAdapterClassifierCV])
def test_gpu_prediction_equals_cpu(dtype, cls):
    X, y, Xq, W = _task(dtype)
    params = dict(clip_model=None, text_features=W)
    cpu = cls(device="cpu", **params).fit(X, y)
    gpu = cls(device="cuda", **params).fit(X, y)
    with sklearn.config_context(working_memory=0.001):  # many chunks
        a, b = cpu.decision_function(Xq), gpu.decision_function(Xq)
    assert b.dtype == a.dtype == dtype
    scale = np.abs(a).max()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)  # float32 rounding, summed
    np.testing.assert_array_equal(gpu.predict(Xq), cpu.predict(Xq))
