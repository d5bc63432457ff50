"""ProKeR, CLAP and LP++ on CUDA equal their CPU fits (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import clip_like_task

from skclip import CLAPClassifier, LinearProbePPClassifier, ProKeRClassifier

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize(
    "make",
    [
        lambda device, W: ProKeRClassifier(text_features=W, device=device),
        lambda device, W: CLAPClassifier(epochs=30, random_state=0, text_features=W, device=device),
        lambda device, W: LinearProbePPClassifier(
            epochs=30, random_state=0, text_features=W, device=device
        ),
    ],
    ids=["proker", "clap", "lp++"],
)
def test_cuda_equals_cpu(make):
    Xtr, ytr, Xte, _, W = clip_like_task(seed=2, d=32, n_classes=5, shots=8, n_test=20)
    Xtr, Xte, W = (a.astype(np.float32) for a in (Xtr, Xte, W))
    cpu = make("cpu", W).fit(Xtr, ytr)
    gpu = make("cuda", W).fit(Xtr, ytr)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu.decision_function(Xte), cpu.decision_function(Xte),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
