"""ProKeRClassifier(CV): the authors' formulas and search, their own outputs, sklearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from helpers import clip_like_task
from scipy.special import softmax
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import ProKeRClassifier, ProKeRClassifierCV
from skclip.proker import proker_coefficients, proker_grid, proker_kernel, proker_logits

REFERENCE = Path(__file__).parent / "data" / "proker_authors.npz"
#: The authors' grids as they build them (float32 ``torch.linspace``), as float64 values.
AUTHORS_BETAS = torch.linspace(0.5, 3, 20).double().numpy()
AUTHORS_LMBDAS = torch.linspace(0.001, 1, 10).double().numpy()


def authors_proker(vecs, labels, queries, clip_weights, beta, lmbda):
    """omarnust/BReg-Adapter ``trainers/proker.py`` ``ProKeR`` after the search, step by
    step, in torch: ``clip_weights`` of shape (d, C) as theirs, logits unscaled."""
    n_classes = len(labels.unique())
    cache = torch.nn.functional.one_hot(labels, num_classes=n_classes).to(vecs.dtype)
    logits_text_shots = vecs @ clip_weights  # raw cosines, not times 100
    K_SS = (-beta * (1 - vecs @ vecs.T)).exp()
    eye = torch.eye(vecs.shape[0], dtype=vecs.dtype)
    alpha_i = torch.linalg.solve(1 / lmbda * K_SS + eye, cache - logits_text_shots)
    K_XS = (-beta * (1 - queries @ vecs.T)).exp()
    return queries @ clip_weights + K_XS @ alpha_i


def authors_search(vecs, labels, val, val_labels, clip_weights, betas, lmbdas):
    """Their search: beta-major loops, the first strictly best validation accuracy."""
    best_acc, best = 0.0, None
    for beta in betas:
        for lmbda in lmbdas:
            logits = authors_proker(vecs, labels, val, clip_weights, beta, lmbda)
            acc = 100.0 * float((logits.argmax(1) == val_labels).double().mean())
            if acc > best_acc:
                best_acc, best = acc, (float(beta), float(lmbda))
    return best, best_acc


@pytest.fixture(scope="module")
def task():
    Xtr, ytr, Xte, yte, W = clip_like_task(
        seed=3, d=24, n_classes=5, shots=6, n_test=30, noise=3.0, text_eps=0.2
    )
    keep = np.r_[0:6, 6:9, 12:18, 18:22, 24:30]  # unequal class counts 6, 3, 6, 4, 6
    return Xtr[keep], ytr[keep], Xte, yte, W


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("beta, lmbda", [(1.7, 0.1), (3.0, 0.05), (0.5, 1.0)])
def test_logits_are_100_times_the_authors(task, dtype, rtol, beta, lmbda):
    Xtr, ytr, Xte, _, W = (a.astype(dtype) if a.dtype.kind == "f" else a for a in task)
    clf = ProKeRClassifier(beta=beta, lmbda=lmbda, text_features=W).fit(Xtr, ytr)
    t = torch.from_numpy
    expected = authors_proker(
        t(Xtr).double(), t(ytr), t(Xte).double(), t(W).double().T, beta, lmbda
    ).numpy()
    got = clf.decision_function(Xte)
    assert got.dtype == dtype
    np.testing.assert_allclose(got / 100.0, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_equal_to_the_authors_own_code(reference):
    """Logits of the authors' own function, run on these features (tests/data/README.md)."""
    r = reference
    clf = ProKeRClassifier(beta=1.7, lmbda=0.1, text_features=r["text"])
    got = clf.fit(r["support"], r["y_support"]).decision_function(r["queries"]) / 100.0
    np.testing.assert_allclose(got, r["logits_fixed"], rtol=1e-5, atol=1e-6)
    beta, lmbda = float(r["best_beta"]), float(r["best_lmbda"])
    clf.set_params(beta=beta, lmbda=lmbda).fit(r["support"], r["y_support"])
    got = clf.decision_function(r["queries"]) / 100.0
    np.testing.assert_allclose(got, r["logits_searched"], rtol=1e-5, atol=1e-6)


def test_search_chooses_what_the_authors_code_chose(reference):
    """On a validation split, the CV picks the authors' (beta, lmbda): their recorded choice
    and the step-by-step re-implementation of their loop."""
    r = reference
    t = torch.from_numpy
    mine, acc = authors_search(
        t(r["support"]).double(),
        t(r["y_support"]),
        t(r["val"]).double(),
        t(r["y_val"]),
        t(r["text"]).double().T,
        AUTHORS_BETAS,
        AUTHORS_LMBDAS,
    )
    assert mine == pytest.approx((float(r["best_beta"]), float(r["best_lmbda"])), rel=1e-7)
    X = np.vstack([r["support"], r["val"]])
    y = np.r_[r["y_support"], r["y_val"]]
    split = PredefinedSplit(np.r_[np.full(len(r["y_support"]), -1), np.zeros(len(r["y_val"]))])
    cv = ProKeRClassifierCV(
        betas=AUTHORS_BETAS, lmbdas=AUTHORS_LMBDAS, cv=split, text_features=r["text"]
    ).fit(X, y)
    assert (cv.beta_, cv.lmbda_) == pytest.approx(mine, rel=1e-7)
    assert cv.best_score_ == pytest.approx(acc / 100.0, abs=1e-12)
    # the search can tell the candidates apart, so that this means something
    assert len(np.unique(cv.cv_results_["mean_test_score"])) > 3


@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss"])
def test_cv_chooses_what_grid_search_chooses(task, scoring):
    Xtr, ytr, Xte, yte, W = task
    X, y = np.vstack([Xtr, Xte[:60]]), np.r_[ytr, yte[:60]]
    betas, lmbdas = [0.5, 1.0, 2.0, 4.0], [0.01, 0.1, 1.0]
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    cv = ProKeRClassifierCV(
        betas=betas, lmbdas=lmbdas, cv=folds, scoring=scoring, text_features=W
    ).fit(X, y)
    search = GridSearchCV(
        ProKeRClassifier(text_features=W),
        {"beta": betas, "lmbda": lmbdas},
        cv=folds,
        scoring=scoring,
    ).fit(X, y)
    assert cv.cv_results_["params"] == search.cv_results_["params"]
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_allclose(cv.cv_results_[key], search.cv_results_[key], rtol=1e-9)
    np.testing.assert_array_equal(
        cv.cv_results_["rank_test_score"], search.cv_results_["rank_test_score"]
    )
    assert cv.best_index_ == search.best_index_
    assert (cv.beta_, cv.lmbda_) == (search.best_params_["beta"], search.best_params_["lmbda"])
    refit = search.best_estimator_
    np.testing.assert_allclose(cv.decision_function(Xte), refit.decision_function(Xte), rtol=1e-9)


def test_ties_go_to_the_first_candidate_in_grid_order(task):
    """Every candidate ties (only one class predicted by all): the first in grid order wins."""
    Xtr, ytr, _, _, W = task
    cv = ProKeRClassifierCV(betas=[2.0, 1.0], lmbdas=[1e-9, 2e-9], cv=3, text_features=W)
    cv.fit(Xtr, ytr)
    assert len(np.unique(cv.cv_results_["mean_test_score"])) == 1
    assert (cv.beta_, cv.lmbda_, cv.best_index_) == (2.0, 1e-9, 0)


def test_grid_equals_the_formula_per_candidate(task):
    Xtr, ytr, Xte, _, W = task
    betas, lmbdas = np.array([0.7, 2.5]), np.array([0.003, 0.3, 3.0])
    grid = list(proker_grid(Xte, Xtr, ytr, W, 5, betas, lmbdas, logit_scale=50.0, logit_bias=-2.0))
    t = torch.from_numpy
    for ib, beta in enumerate(betas):
        for il, lmbda in enumerate(lmbdas):
            A = proker_coefficients(Xtr, ytr, W, 5, beta, lmbda)
            expected = proker_logits(t(Xte), t(Xtr), t(A), t(W), beta, 50.0, -2.0).numpy()
            np.testing.assert_allclose(grid[ib][il], expected, rtol=1e-9, atol=1e-9)


def test_without_text_it_is_kernel_ridge_regression(task):
    """(K / lmbda + I)^-1 Y = lmbda (K + lmbda I)^-1 Y: lmbda times sklearn's KernelRidge."""
    Xtr, ytr, Xte, _, _ = task
    clf = ProKeRClassifier(beta=2.0, lmbda=0.3, clip_model=None).fit(Xtr, ytr)
    krr = KernelRidge(alpha=0.3, kernel="precomputed")
    krr.fit(proker_kernel(Xtr, Xtr, 2.0), np.eye(5)[ytr])
    expected = 0.3 * krr.predict(proker_kernel(Xte, Xtr, 2.0))
    np.testing.assert_allclose(clf.decision_function(Xte), expected, rtol=1e-8, atol=1e-10)


def test_small_lmbda_is_zero_shot_and_large_caches_the_residual(task):
    Xtr, ytr, Xte, _, W = task
    zero_shot = 100.0 * Xte @ W.T
    clf = ProKeRClassifier(lmbda=1e-12, text_features=W).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.decision_function(Xte), zero_shot, atol=1e-7)
    clf = ProKeRClassifier(beta=5.0, lmbda=1e8, text_features=W).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.coef_, np.eye(5)[ytr] - Xtr @ W.T, atol=1e-6)


def test_residual_with_a_learned_bias(task):
    """SigLIP-like s, b: logits are s (authors') + b; regressing the bias-shifted residual
    Y - (s S T^T + b) / s instead changes each query's logits by one constant, so the
    probabilities are the same (the choice documented in the Notes)."""
    Xtr, ytr, Xte, _, W = task
    s, b = 117.3, -12.9
    t = torch.from_numpy
    A = proker_coefficients(Xtr, ytr, W, 5, 1.7, 0.1)
    got = proker_logits(t(Xte), t(Xtr), t(A), t(W), 1.7, s, b).numpy()
    authors = authors_proker(t(Xtr), t(ytr), t(Xte), t(W).T, 1.7, 0.1).numpy()
    np.testing.assert_allclose(got, s * authors + b, rtol=1e-10, atol=1e-9)
    gram = proker_kernel(Xtr, Xtr, 1.7) / 0.1 + np.eye(len(Xtr))
    shifted = np.linalg.solve(gram, np.eye(5)[ytr] - (s * Xtr @ W.T + b) / s)
    other = s * (Xte @ W.T + proker_kernel(Xte, Xtr, 1.7) @ shifted) + b
    diff = other - got
    assert np.ptp(diff, axis=1).max() < 1e-9 < np.abs(diff).max()
    np.testing.assert_allclose(softmax(other, axis=1), softmax(got, axis=1), atol=1e-12)


def test_zero_shot_term_is_the_text_models_own(tiny_siglip_path):
    from skclip import TipAdapterClassifier

    rng = np.random.default_rng(0)
    X, y = normalize(rng.normal(size=(12, 32))), np.repeat(["cat", "dog", "fox"], 4)
    common = dict(clip_model=tiny_siglip_path, templates="simple", device="cpu")
    clf = ProKeRClassifier(beta=2.0, lmbda=0.5, **common).fit(X, y)
    zero_shot = TipAdapterClassifier(alpha=0.0, **common).fit(X, y)
    assert clf.logit_scale_ == zero_shot.logit_scale_ != 100.0 and clf.logit_bias_ != 0.0
    ridge = proker_kernel(X, X, 2.0) @ clf.coef_
    expected = zero_shot.decision_function(X) + clf.logit_scale_ * ridge
    np.testing.assert_allclose(clf.decision_function(X), expected, rtol=1e-5, atol=1e-5)


def test_chunked_prediction_equals_one_shot(task):
    Xtr, ytr, Xte, _, W = task
    clf = ProKeRClassifier(text_features=W).fit(Xtr, ytr)
    full = clf.decision_function(Xte)
    with sklearn.config_context(working_memory=1e-6):
        np.testing.assert_allclose(clf.decision_function(Xte), full, atol=1e-12)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"betas": [1.0, -1.0]}, "betas must hold finite values > 0"),
        ({"lmbdas": [[0.1]]}, "lmbdas must be a non-empty 1-D"),
        ({"lmbdas": [0.0]}, "lmbdas must hold finite values > 0"),
        ({"cv": 7}, "has only 3 samples, fewer than cv=7"),
    ],
)
def test_cv_bad_input_is_named(task, params, match):
    Xtr, ytr, _, _, W = task
    with pytest.raises(ValueError, match=match):
        ProKeRClassifierCV(text_features=W, **params).fit(Xtr, ytr)


@pytest.mark.parametrize("params", [{"beta": 0.0}, {"lmbda": -1.0}])
def test_bad_parameters_are_named(task, params):
    Xtr, ytr, _, _, W = task
    name = next(iter(params))
    with pytest.raises(ValueError, match=f"'{name}' parameter"):
        ProKeRClassifier(text_features=W, **params).fit(Xtr, ytr)


@parametrize_with_checks(
    [
        ProKeRClassifier(clip_model=None),
        ProKeRClassifier(clip_model=None, beta=3.0, lmbda=0.05),
        ProKeRClassifierCV(clip_model=None, cv=2, betas=[1.0, 2.0], lmbdas=[0.1, 1.0]),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_one_class_is_refused_like_every_head():
    X = normalize(np.random.default_rng(0).normal(size=(6, 4)))
    for clf in (ProKeRClassifier(clip_model=None), ProKeRClassifierCV(clip_model=None, cv=2)):
        with pytest.raises(ValueError, match="needs samples of at least 2 classes.*'only'"):
            clf.fit(X, ["only"] * 6)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_feature_magnitude_does_not_matter(scale):
    X, y, Xq, _, W = clip_like_task(seed=3, d=16, n_classes=3, shots=6, n_test=5)
    X, Xq, W = (a.astype(np.float32) for a in (X, Xq, W))
    s = np.float32(scale)
    plain = ProKeRClassifier(text_features=W).fit(X, y)
    big = ProKeRClassifier(text_features=W * s).fit(X * s, y)
    np.testing.assert_allclose(big.predict_proba(Xq * s), plain.predict_proba(Xq), atol=1e-6)


def test_non_finite_fitted_arrays_are_an_error_at_predict(task):
    Xtr, ytr, Xte, _, W = task
    clf = ProKeRClassifier(text_features=W).fit(Xtr, ytr)
    clf.coef_[0, 0] = np.nan  # as a damaged model file would hold
    with pytest.raises(ValueError, match="logits that are not finite"):
        clf.predict(Xte)
