"""GDAClassifierCV and APEClassifierCV: GridSearchCV's choices from one fit per fold;
GDA's precision by Cholesky, equal to the pseudo-inverse it replaces."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from helpers import clip_like_task
from scipy.linalg import pinvh
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_info

import skclip.ape
import skclip.gda
from skclip import APEClassifier, APEClassifierCV, GDAClassifier, GDAClassifierCV
from skclip.cli.methods import GRIDS, _chosen, _methods
from skclip.gda import gda_parameters, shrinkage_precision, spd_inverse
from skclip.model_selection import APE_ALPHAS, APE_BETAS, APE_GAMMAS, GDA_ALPHAS

GDA_GRID = {"alpha": GRIDS["GDA"]["alpha"]}
#: Part of evaluate's APE grid (GridSearchCV fits every candidate: keep the tests quick).
APE_GRID = {"alpha": [0.5, 2.0, 4.0], "beta": [1.0, 5.5], "gamma": [0.0, 0.3]}


@pytest.fixture(scope="module")
def task():
    return clip_like_task(seed=0, d=32, n_classes=6, shots=10, n_test=40, noise=3.0, text_eps=0.1)


def _gda_cv(grid, **params):
    return GDAClassifierCV(alphas=grid["alpha"], **params)


def _ape_cv(grid, **params):
    return APEClassifierCV(alphas=grid["alpha"], betas=grid["beta"], gammas=grid["gamma"], **params)


#: (the CV, the classifier GridSearchCV searches, its grid)
CASES = {
    "GDA": (_gda_cv, GDAClassifier, GDA_GRID),
    "APE": (_ape_cv, APEClassifier, APE_GRID),
}


def assert_same_search(ours, search, rtol=1e-9):
    """Same candidates, scores, ranks, choice and best score as GridSearchCV."""
    assert ours.cv_results_["params"] == search.cv_results_["params"]
    keys = ["mean_test_score", "std_test_score"]
    keys += [f"split{k}_test_score" for k in range(search.n_splits_)]
    for key in keys:
        np.testing.assert_allclose(
            ours.cv_results_[key], search.cv_results_[key], rtol=rtol, atol=1e-12, err_msg=key
        )
    np.testing.assert_array_equal(
        ours.cv_results_["rank_test_score"], search.cv_results_["rank_test_score"]
    )
    assert ours.best_index_ == search.best_index_
    chosen = {name: getattr(ours, f"{name}_") for name in search.best_params_}
    assert chosen == search.best_params_
    assert ours.best_score_ == pytest.approx(search.best_score_, rel=rtol)
    assert ours.n_splits_ == search.n_splits_


@pytest.mark.parametrize("method", ["GDA", "APE"])
@pytest.mark.parametrize(
    "scoring, dtype",
    [("accuracy", np.float64), ("accuracy", np.float32), ("neg_log_loss", np.float64)],
)
def test_chooses_what_gridsearchcv_chooses(task, method, scoring, dtype):
    Xtr, ytr, Xte, _, W = task
    X = Xtr.astype(dtype)
    labels = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])[ytr]
    make_cv, Classifier, grid = CASES[method]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    common = dict(clip_model=None, text_features=W)
    ours = make_cv(grid, cv=folds, scoring=scoring, **common).fit(X, labels)
    search = GridSearchCV(Classifier(**common), grid, cv=folds, scoring=scoring).fit(X, labels)
    assert_same_search(ours, search, rtol=1e-9 if dtype == np.float64 else 1e-5)
    if scoring == "accuracy":  # the grid matters on this task, so the test means something
        assert len(np.unique(search.cv_results_["mean_test_score"])) > 3
    refit = search.best_estimator_
    np.testing.assert_array_equal(ours.predict(Xte), refit.predict(Xte))
    atol = 1e-9 if dtype == np.float64 else 1e-4
    scale = np.abs(refit.decision_function(Xte)).max()
    np.testing.assert_allclose(
        ours.decision_function(Xte), refit.decision_function(Xte), rtol=0, atol=atol * scale
    )


@pytest.mark.parametrize(
    "method, params",
    [
        ("GDA", dict(priors="empirical", covariance_estimator=LedoitWolf())),
        ("GDA", dict(priors=[0.1, 0.2, 0.3, 0.1, 0.2, 0.1])),
        ("APE", dict(n_features_to_select=7, similarity_weight=0.2, variance_weight=0.8)),
    ],
)
def test_fixed_parameters_are_those_of_every_fit(task, method, params):
    """Unequal classes (so that empirical priors differ between folds) and the fixed
    parameters: still GridSearchCV's scores and choice."""
    Xtr, ytr, _, _, W = task
    keep = np.flatnonzero((ytr != 2) | (np.arange(len(ytr)) % 10 < 6))
    X, y = Xtr[keep], ytr[keep]
    make_cv, Classifier, grid = CASES[method]
    folds = StratifiedKFold(3, shuffle=True, random_state=1)
    common = dict(clip_model=None, text_features=W, **params)
    ours = make_cv(grid, cv=folds, **common).fit(X, y)
    search = GridSearchCV(Classifier(**common), grid, cv=folds).fit(X, y)
    assert_same_search(ours, search)


@pytest.mark.parametrize("method", ["GDA", "APE"])
def test_a_class_missing_from_a_fold_is_unknown_to_that_fold(task, method):
    """Without a text head, a fold whose training part lacks a class fits the classes it
    has, as the classifier that GridSearchCV fits on it does."""
    Xtr, ytr, _, _, _ = task
    fold = np.where(ytr == 0, 0, np.arange(len(ytr)) % 2)  # class 0 only in fold 0's test
    split = PredefinedSplit(fold)
    make_cv, Classifier, grid = CASES[method]
    ours = make_cv(grid, cv=split, clip_model=None).fit(Xtr, ytr)
    search = GridSearchCV(Classifier(clip_model=None), grid, cv=split).fit(Xtr, ytr)
    assert_same_search(ours, search)


def _count_calls(monkeypatch, module, name, threads=False):
    """Spy on ``module.name``: one entry per call, the BLAS libraries' thread counts
    during the call with ``threads=True``."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        calls.append(blas if threads else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize(
    "method, module, name",
    [("GDA", skclip.gda, "gda_parameters"), ("APE", skclip.ape, "ape_cache")],
)
def test_one_fit_per_fold_and_one_refit(task, monkeypatch, method, module, name):
    """The alpha-independent (for APE: alpha-, beta- and gamma-independent) fit runs
    once per fold plus once for the refit; GridSearchCV runs it once per candidate and
    fold. GDA's folds and refit factorize with one BLAS thread."""
    Xtr, ytr, _, _, W = task
    make_cv, Classifier, grid = CASES[method]
    calls = _count_calls(monkeypatch, module, name, threads=method == "GDA")
    make_cv(grid, cv=5, clip_model=None, text_features=W).fit(Xtr, ytr)
    assert len(calls) == 5 + 1
    if method == "GDA":
        assert all(threads == [1] * len(threads) for threads in calls)
    monkeypatch.undo()
    calls = _count_calls(monkeypatch, module, name)
    GridSearchCV(Classifier(clip_model=None, text_features=W), grid, cv=5).fit(Xtr, ytr)
    n_candidates = int(np.prod([len(v) for v in grid.values()]))
    assert len(calls) == n_candidates * 5 + 1


def test_defaults_are_the_grids_of_evaluate():
    assert GDA_ALPHAS.tolist() == GRIDS["GDA"]["alpha"]
    assert [APE_ALPHAS.tolist(), APE_BETAS.tolist(), APE_GAMMAS.tolist()] == list(
        GRIDS["APE"].values()
    )
    assert GDAClassifierCV().get_params()["alphas"] is None


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GDAClassifierCV(alphas=[-1.0]), "alphas must hold finite values >= 0"),
        (lambda: GDAClassifierCV(alphas=[]), "alphas must be a non-empty 1-D"),
        (lambda: GDAClassifierCV(cv=11), "has only 10 samples, fewer than cv=11"),
        (lambda: APEClassifierCV(gammas=[np.nan]), "gammas must hold finite values >= 0"),
        (lambda: APEClassifierCV(betas=[[1.0]]), "betas must be a non-empty 1-D"),
        (lambda: APEClassifierCV(n_features_to_select=33), "n_features_to_select=33 is more"),
        (lambda: APEClassifierCV(cv=11), "has only 10 samples, fewer than cv=11"),
    ],
)
def test_bad_input_is_named(task, make, match):
    Xtr, ytr, _, _, W = task
    with pytest.raises(ValueError, match=match):
        make().set_params(clip_model=None, text_features=W).fit(Xtr, ytr)


@parametrize_with_checks(
    [
        GDAClassifierCV(clip_model=None, cv=2, alphas=[0.1, 1.0]),
        GDAClassifierCV(
            clip_model=None, cv=2, priors="empirical", covariance_estimator=LedoitWolf()
        ),
        # the checks' data have 2 features: keep both (one, normalized, is just a sign)
        APEClassifierCV(clip_model=None, cv=2, n_features_to_select=1.0, alphas=[1.0, 5.0]),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- the precision by Cholesky ------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(12, 64), (60, 64), (300, 64), (180, 512)])
def test_shrinkage_precision_equals_pinvh(n, d, monkeypatch):
    """Fewer or more samples than dimensions: the shrunk scatter is positive definite,
    Cholesky inverts it (pinvh is not called) and the result is pinvh's to 1e-6."""
    rng = np.random.default_rng(n + d)
    centered = rng.normal(size=(n, d))
    centered -= centered.mean(axis=0)
    scatter = centered.T @ centered
    expected = d * pinvh(scatter + np.trace(scatter) / (n - 1) * np.eye(d))
    pinvh_calls = _count_calls(monkeypatch, skclip.gda, "pinvh")
    got = shrinkage_precision(centered)
    assert pinvh_calls == []
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_array_equal(got, got.T)


@pytest.mark.parametrize(
    "matrix",
    [
        np.zeros((4, 4)),  # one sample per class: zero scatter, no shrinkage
        np.diag([1.0, 1.0, 0.0]),  # singular: Cholesky fails
        np.diag([1.0, 1e-14, 2.0]),  # numerically singular: Cholesky works, rcond too small
        -np.eye(2),  # not positive definite
    ],
)
def test_singular_falls_back_to_pinvh(matrix):
    np.testing.assert_array_equal(spd_inverse(matrix), pinvh(matrix))


@pytest.mark.parametrize("estimator", [None, EmpiricalCovariance(), LedoitWolf()])
@pytest.mark.parametrize("n_per_class", [2, 10, 40])
def test_gda_parameters_equal_those_with_pinvh(monkeypatch, estimator, n_per_class):
    """GDA's fitted coefficients with Cholesky equal those with pinvh (today's code) to
    1e-6 relative, whether the covariance is regular or singular (EmpiricalCovariance
    with fewer samples than dimensions)."""
    rng = np.random.default_rng(n_per_class)
    d, n_classes = 24, 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(size=(len(y), d)) + 2 * np.eye(d)[y]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    priors = np.full(n_classes, 1 / n_classes)
    got = gda_parameters(X, y, priors, estimator)
    monkeypatch.setattr(skclip.gda, "spd_inverse", pinvh)
    expected = gda_parameters(X, y, priors, estimator)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


# -- skclip evaluate ----------------------------------------------------------------------


def test_evaluate_searches_gda_and_ape_with_their_cvs(tiny_clip_path):
    """The catalogue's GDA and APE are the CVs, over the same grids and the same
    shuffled inner folds as the GridSearchCV they replace; _chosen reads their choice."""
    args = argparse.Namespace(model=tiny_clip_path, device="cpu", random_state=3, fine_tune=False)
    methods = _methods(args, 3, n_train_min=6)
    gda, gda_how, gda_names = methods["GDA"]
    ape, ape_how, ape_names = methods["APE"]
    assert isinstance(gda, GDAClassifierCV) and isinstance(ape, APEClassifierCV)
    assert gda.alphas == GRIDS["GDA"]["alpha"]
    assert (ape.alphas, ape.betas, ape.gammas) == tuple(GRIDS["APE"].values())
    for est in (gda, ape):
        assert isinstance(est.cv, StratifiedKFold)
        assert (est.cv.n_splits, est.cv.shuffle, est.cv.random_state) == (3, True, 3)
    assert "chosen by 3-fold inner cross-validation (accuracy)" in gda_how
    assert "chosen by 3-fold inner cross-validation (accuracy)" in ape_how
    rng = np.random.default_rng(0)
    X = rng.normal(size=(18, 8)) + 3 * np.eye(8)[np.repeat([0, 1, 2], 6)]
    y = np.repeat(["a", "b", "c"], 6)
    fitted = APEClassifierCV(clip_model=None, cv=3, alphas=[1.0, 2.0]).fit(X, y)
    assert _chosen(fitted, ape_names) == {
        "alpha": fitted.alpha_,
        "beta": fitted.beta_,
        "gamma": fitted.gamma_,
    }
    fitted = GDAClassifierCV(clip_model=None, cv=3).fit(X, y)
    assert _chosen(fitted, gda_names) == {"alpha": fitted.alpha_}
