"""Property-based tests (hypothesis) of TipAdapterClassifier over shapes, labels, alpha, beta."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import skclip.tip_adapter as tip_module  # noqa: E402
from skclip import TipAdapterClassifier  # noqa: E402

LABEL_SETS = {
    "str": np.array(["ant", "bee", "cat", "dog", "eel"]),
    "int": np.array([7, -3, 100, 0, 42]),
    "bool": np.array([True, False]),
}


@st.composite
def problems(draw):
    n_features = draw(st.integers(1, 12))
    n_classes = draw(st.integers(2, 5))  # one class is refused
    kind = draw(st.sampled_from(sorted(LABEL_SETS)))
    n_classes = min(n_classes, len(LABEL_SETS[kind]))
    n_samples = draw(st.integers(n_classes, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    X[np.linalg.norm(X, axis=1) == 0] = 1.0
    y_enc = np.concatenate(
        [np.arange(n_classes), rng.integers(0, n_classes, n_samples - n_classes)]
    )
    y = LABEL_SETS[kind][y_enc]
    text = draw(st.booleans())
    W = rng.normal(size=(n_classes, n_features)) if text else None
    Xq = rng.normal(size=(draw(st.integers(1, 20)), n_features))
    return X, y, W, Xq


@settings(max_examples=60, deadline=None)
@given(
    problem=problems(),
    alpha=st.floats(0, 50, allow_nan=False),
    beta=st.floats(0, 50, allow_nan=False),
)
def test_classifier_properties(problem, alpha, beta):
    X, y, W, Xq = problem
    clf = TipAdapterClassifier(alpha=alpha, beta=beta, clip_model=None, text_features=W).fit(X, y)
    classes = np.unique(y)
    np.testing.assert_array_equal(clf.classes_, classes)
    proba = clf.predict_proba(Xq)
    assert proba.shape == (len(Xq), len(classes))
    assert np.all((proba >= 0) & (proba <= 1 + 1e-12))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    pred = clf.predict(Xq)
    assert set(pred.tolist()) <= set(classes.tolist())
    # the formula, independently
    norm = lambda A: A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-300)  # noqa: E731
    Kn, Qn = norm(X), norm(Xq)
    V = (y[:, None] == classes[None]).astype(float)
    logits = alpha * np.exp(-beta * (1 - Qn @ Kn.T)) @ V
    if W is not None:
        logits += 100 * Qn @ norm(W).T
    scale = max(1.0, np.abs(logits).max())
    dec = clf.decision_function(Xq)
    expected = logits[:, 1] - logits[:, 0] if len(classes) == 2 else logits
    np.testing.assert_allclose(dec, expected, atol=1e-9 * scale)


@settings(max_examples=25, deadline=None)
@given(n_queries=st.integers(1, 300), n_keys=st.integers(2, 200), budget=st.integers(1, 64))
def test_prediction_is_chunked_within_working_memory(n_queries, n_keys, budget, monkeypatch_module):
    """Each chunk's (queries x keys) buffers fit in sklearn's working_memory."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_keys, 4))
    y = np.arange(n_keys) % 3
    clf = TipAdapterClassifier(clip_model=None).fit(X, y)
    seen = []
    original = tip_module.tip_adapter_logits

    def spy(queries, *args, **kwargs):
        seen.append(len(queries))
        return original(queries, *args, **kwargs)

    monkeypatch_module.setattr(tip_module, "tip_adapter_logits", spy)
    working_memory_mib = budget / 1024  # a few KiB, so that chunks are small
    with sklearn.config_context(working_memory=working_memory_mib):
        full = clf.decision_function(rng.normal(size=(n_queries, 4)))
    monkeypatch_module.undo()
    row_bytes = 2 * n_keys * 8
    most_rows = max(1, int(working_memory_mib * 2**20) // row_bytes)
    assert sum(seen) == n_queries == len(full)
    assert max(seen) <= most_rows


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
