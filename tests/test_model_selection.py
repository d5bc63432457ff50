"""TipAdapterClassifierCV: same answers as GridSearchCV, far less work, never test data."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import clip_like_task
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip._compat import InvalidParameterError
from skclip.model_selection import DEFAULT_ALPHAS, DEFAULT_BETAS, few_shot_split

ALPHAS = [0.0, 0.5, 1.0, 3.0, 10.0]
BETAS = [1.0, 3.0, 5.5, 8.0]


@pytest.fixture(scope="module")
def task():
    return clip_like_task(seed=1, n_classes=6, shots=10)


@pytest.mark.parametrize("scoring", ["accuracy", "f1_macro", "neg_log_loss"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_gridsearchcv(task, scoring, dtype):
    Xtr, ytr, _, _, W = task
    X = Xtr.astype(dtype)
    labels = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])[ytr]  # string labels
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    ours = TipAdapterClassifierCV(
        alphas=ALPHAS, betas=BETAS, cv=cv, scoring=scoring, clip_model=None, text_features=W
    ).fit(X, labels)
    grid = GridSearchCV(
        TipAdapterClassifier(clip_model=None, text_features=W),
        {"alpha": ALPHAS, "beta": BETAS},
        cv=cv,
        scoring=scoring,
    ).fit(X, labels)
    atol = 1e-9 if dtype == np.float64 else 1e-5
    for key in ["mean_test_score", "std_test_score"] + [f"split{k}_test_score" for k in range(5)]:
        np.testing.assert_allclose(
            ours.cv_results_[key], grid.cv_results_[key], atol=atol, err_msg=key
        )
    assert ours.cv_results_["params"] == grid.cv_results_["params"]
    np.testing.assert_array_equal(
        ours.cv_results_["rank_test_score"], grid.cv_results_["rank_test_score"]
    )
    assert ours.best_index_ == grid.best_index_
    assert (ours.alpha_, ours.beta_) == (grid.best_params_["alpha"], grid.best_params_["beta"])
    assert ours.best_score_ == pytest.approx(grid.best_score_, abs=atol)


def test_refit_equals_classifier_with_chosen_params(task):
    Xtr, ytr, Xte, yte, W = task
    cv = TipAdapterClassifierCV(alphas=ALPHAS, betas=BETAS, cv=3, clip_model=None, text_features=W)
    cv.fit(Xtr, ytr)
    plain = TipAdapterClassifier(
        alpha=cv.alpha_, beta=cv.beta_, clip_model=None, text_features=W
    ).fit(Xtr, ytr)
    np.testing.assert_allclose(cv.decision_function(Xte), plain.decision_function(Xte), atol=1e-9)
    np.testing.assert_array_equal(cv.predict(Xte), plain.predict(Xte))
    assert cv.n_splits_ == 3


def test_default_grid_is_wide_and_cv_results_is_a_dataframe(task):
    pd = pytest.importorskip("pandas")
    Xtr, ytr, _, _, W = task
    clf = TipAdapterClassifierCV(cv=3, clip_model=None, text_features=W).fit(Xtr, ytr)
    assert len(clf.cv_results_["params"]) == len(DEFAULT_ALPHAS) * len(DEFAULT_BETAS) == 100
    assert DEFAULT_ALPHAS.min() == 0 and DEFAULT_ALPHAS.max() >= 50  # reference ranges: <= 50
    assert DEFAULT_BETAS.min() <= 1 and DEFAULT_BETAS.max() >= 7
    df = pd.DataFrame(clf.cv_results_)
    assert len(df) == 100 and df["rank_test_score"].min() == 1
    assert df.loc[clf.best_index_, "mean_test_score"] == clf.best_score_


def test_ties_go_to_the_first_candidate():
    # Two well separated classes: every candidate with alpha > 0 scores 1.0.
    X = np.repeat(np.eye(2), 6, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(12, 2))
    y = np.repeat([0, 1], 6)
    clf = TipAdapterClassifierCV(alphas=[0.0, 1.0, 2.0], betas=[1.0, 2.0], cv=3, clip_model=None)
    clf.fit(X, y)
    assert clf.best_score_ == 1.0
    # Cache-only with alpha=0 has all-zero logits (accuracy 0.5); of the four perfect
    # candidates the first in grid order (smallest alpha, then beta) wins.
    assert np.sum(clf.cv_results_["mean_test_score"] == 1.0) == 4
    assert (clf.alpha_, clf.beta_) == (1.0, 1.0)
    assert clf.best_index_ == int(np.argmax(clf.cv_results_["mean_test_score"]))


def test_fine_tune_scores_grid_on_held_out_part_of_each_fold(task):
    Xtr, ytr, _, _, W = task
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    params = dict(fine_tune=True, epochs=3, lr=1e-2, random_state=0, clip_model=None)
    ours = TipAdapterClassifierCV(
        alphas=[0.5, 2.0], betas=[2.0, 6.0], cv=cv, text_features=W, **params
    ).fit(Xtr, ytr)
    # The same thing by hand: train keys per fold at (alpha, beta) = (1, 5.5), then
    # score each candidate on that fold's held-out part with the trained keys.
    expected = []
    for train, test in cv.split(Xtr, ytr):
        fold = TipAdapterClassifier(text_features=W, **params).fit(Xtr[train], ytr[train])
        row = []
        for a in [0.5, 2.0]:
            for b in [2.0, 6.0]:
                row.append(fold.set_params(alpha=a, beta=b).score(Xtr[test], ytr[test]))
        expected.append(row)
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], np.mean(expected, axis=0), atol=1e-9
    )
    refit = TipAdapterClassifier(text_features=W, **params).fit(Xtr, ytr)
    np.testing.assert_allclose(ours.cache_keys_, refit.cache_keys_, atol=1e-7)
    assert len(ours.loss_curve_) == 3


def test_too_few_samples_per_class_is_a_clear_error():
    X = np.random.default_rng(0).normal(size=(9, 4))
    y = np.array(["a"] * 6 + ["rare"] * 3)
    with pytest.raises(ValueError, match=r"Class 'rare' has only 3 samples, fewer than cv=5"):
        TipAdapterClassifierCV(clip_model=None).fit(X, y)
    TipAdapterClassifierCV(clip_model=None, cv=3).fit(X, y)  # as the message suggests


@pytest.mark.parametrize(
    "params, match",
    [
        ({"alphas": []}, "alphas must be a non-empty"),
        ({"betas": [[1.0, 2.0]]}, "betas must be a non-empty 1-D"),
        ({"alphas": [1.0, -1.0]}, "finite values >= 0"),
        ({"betas": [np.inf]}, "finite values >= 0"),
        ({"scoring": 3}, "scoring"),
    ],
)
def test_invalid_grids(params, match):
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match=match):
        TipAdapterClassifierCV(clip_model=None, cv=2, **params).fit(X, [0, 1] * 5)


def test_in_a_pipeline_with_the_featurizer(tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path)),
            ("tip", TipAdapterClassifierCV(clip_model=tiny_clip_path, cv=3)),
        ]
    ).fit(paths, labels)
    tip = pipe.named_steps["tip"]
    # The tiny CLIP's random text tower is useless, so CV must learn to trust the cache.
    assert tip.alpha_ > 0
    assert pipe.score(paths, labels) > 0.8


@parametrize_with_checks(
    [
        TipAdapterClassifierCV(clip_model=None, cv=2),
        TipAdapterClassifierCV(clip_model=None, cv=2, fine_tune=True, epochs=2, random_state=0),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_same_random_state_same_choices(task):
    Xtr, ytr, _, _, W = task
    params = dict(
        alphas=[0.5, 2.0],
        betas=[2.0, 6.0],
        text_features=W,
        clip_model=None,
        fine_tune=True,
        epochs=2,
        lr=1e-2,
        batch_size=16,
    )
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    a = TipAdapterClassifierCV(cv=cv, random_state=0, **params).fit(Xtr, ytr)
    b = TipAdapterClassifierCV(cv=cv, random_state=0, **params).fit(Xtr, ytr)
    np.testing.assert_array_equal(
        a.cv_results_["mean_test_score"], b.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(a.cache_keys_, b.cache_keys_)
    assert (a.alpha_, a.beta_) == (b.alpha_, b.beta_)
    TipAdapterClassifierCV(cv=cv, random_state=None, **params).fit(Xtr, ytr)  # also works


def test_refit_without_fine_tuning_clears_the_loss_curve(task):
    Xtr, ytr, _, _, W = task
    clf = TipAdapterClassifierCV(
        alphas=[1.0],
        betas=[5.5],
        cv=2,
        text_features=W,
        clip_model=None,
        fine_tune=True,
        epochs=2,
        random_state=0,
    ).fit(Xtr, ytr)
    assert len(clf.loss_curve_) == 2
    clf.set_params(fine_tune=False).fit(Xtr, ytr)
    assert clf.loss_curve_ is None


def test_unknown_scoring_fails_before_any_model_loads(tmp_path, monkeypatch):
    import skclip.heads._base as tip_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before scoring was checked")

    monkeypatch.setattr(tip_module, "load_backbone", no_loading)
    X, y = np.eye(4)[[0, 1, 2, 3] * 3], ["a", "b"] * 6
    clf = TipAdapterClassifierCV(clip_model=tmp_path / "not-loaded", scoring="acuracy", cv=2)
    with pytest.raises(
        ValueError, match=r"'scoring' parameter of TipAdapterClassifierCV.*'acuracy'"
    ):
        clf.fit(X, y)
    clf.set_params(scoring=["accuracy"])  # one metric only: multi-metric is not supported
    with pytest.raises(ValueError, match="'scoring' parameter"):
        clf.fit(X, y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shots": 2.5}, r"'shots' parameter of few_shot_split must be a positive integer.*2\.5"),
        ({"shots": 0}, "positive integer"),
        ({"random_state": "seed"}, r"'random_state' parameter of few_shot_split"),
        ({"y": None}, r"'y' parameter of few_shot_split must be an array-like"),
    ],
)
def test_few_shot_split_validates_its_parameters(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        few_shot_split(**{"y": ["a", "b"] * 4, "shots": 2, **kwargs})
