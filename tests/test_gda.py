"""GDAClassifier: the authors' formulas and alpha search, LDA, priors, sklearn integration."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import sklearn
import torch
from helpers import clip_like_task
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import CLIPFeaturizer, GDAClassifier
from skclip.gda import gda_parameters

#: The authors' alpha grid (main_few_shots.py, ``run``).
AUTHORS_ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


def authors_gda(vecs, labels, n_classes):
    """The parameter estimation of mrflogs/ICLR24 ``run``, step by step, in torch.

    ``vecs`` are L2-normalized (n, d) features (all augmented passes pooled), ``labels``
    their classes. Returns ``W`` (d, C) and ``b`` (C,) with uniform priors.
    """
    d = vecs.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(n_classes)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(n_classes)])
    cov = center_vecs.T.cov()
    eye = torch.eye(d, dtype=vecs.dtype)
    cov_inv = d * torch.linalg.pinv((center_vecs.shape[0] - 1) * cov + cov.trace() * eye)
    ps = torch.ones(n_classes, dtype=vecs.dtype) / n_classes
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    return W, b


def authors_logits(features, clip_weights, W, b, alpha):
    """``100 f clip_weights + alpha (f W + b)``, clip_weights of shape (d, C) as theirs."""
    return 100.0 * features @ clip_weights + alpha * (features @ W + b)


def authors_alpha_search(val_features, val_labels, clip_weights, W, b):
    """Their grid search: first alpha with the strictly best validation accuracy (%)."""
    best_val_acc, best_alpha = 0, 0.1
    for alpha in AUTHORS_ALPHAS:
        logits = authors_logits(val_features, clip_weights, W, b, alpha)
        acc = 100.0 * float((logits.argmax(1) == val_labels).double().mean())
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    return best_alpha, best_val_acc


@pytest.fixture(scope="module")
def task():
    return clip_like_task(seed=0, d=32, n_classes=6, shots=8, n_test=40, noise=3.0, text_eps=0.1)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 2e-4)])
@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_logits_equal_authors_formulas(task, dtype, rtol, alpha):
    Xtr, ytr, Xte, _, W = (a.astype(dtype) if a.dtype.kind == "f" else a for a in task)
    clf = GDAClassifier(alpha=alpha, clip_model=None, text_features=W).fit(Xtr, ytr)
    t = torch.from_numpy
    W_gda, b = authors_gda(t(Xtr), t(ytr), len(W))
    expected = authors_logits(t(Xte), t(W).T, W_gda, b, alpha).numpy()
    got = clf.decision_function(Xte)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * np.abs(expected).max())
    coef = W_gda.T.numpy()
    np.testing.assert_allclose(clf.coef_, coef, rtol=0, atol=rtol * np.abs(coef).max())


def test_pooled_augmented_views_equal_authors(task):
    """The authors pool several augmented passes as samples: stacking views does that."""
    Xtr, ytr, Xte, _, W = task
    rng = np.random.default_rng(1)
    views = normalize(np.vstack([Xtr + 0.05 * rng.normal(size=Xtr.shape) for _ in range(3)]))
    y_views = np.tile(ytr, 3)
    clf = GDAClassifier(alpha=1.0, clip_model=None, text_features=W).fit(views, y_views)
    W_gda, b = authors_gda(torch.from_numpy(views), torch.from_numpy(y_views), len(W))
    expected = authors_logits(torch.from_numpy(Xte), torch.from_numpy(W).T, W_gda, b, 1.0)
    np.testing.assert_allclose(clf.decision_function(Xte), expected.numpy(), rtol=1e-9, atol=1e-9)


def test_alpha_search_chooses_the_authors_best(task):
    Xtr, ytr, Xte, yte, W = task
    t = torch.from_numpy
    W_gda, b = authors_gda(t(Xtr), t(ytr), len(W))
    best_alpha, best_acc = authors_alpha_search(t(Xte), t(yte), t(W).T, W_gda, b)
    # the search must be able to tell the alphas apart for the test to mean anything
    accs = [
        float((authors_logits(t(Xte), t(W).T, W_gda, b, a).argmax(1) == t(yte)).float().mean())
        for a in AUTHORS_ALPHAS
    ]
    assert len(set(accs)) > 2, accs

    X = np.vstack([Xtr, Xte])
    y = np.r_[ytr, yte]
    split = PredefinedSplit(np.r_[np.full(len(ytr), -1), np.zeros(len(yte))])
    search = GridSearchCV(
        GDAClassifier(clip_model=None, text_features=W), {"alpha": AUTHORS_ALPHAS}, cv=split
    ).fit(X, y)
    assert search.best_score_ == pytest.approx(best_acc / 100, abs=1e-12)
    assert search.best_params_["alpha"] == best_alpha


def test_empirical_covariance_is_linear_discriminant_analysis(task):
    """With the plain covariance and empirical priors, the GDA term is sklearn's LDA."""
    Xtr, ytr, Xte, _, _ = task
    ytr = ytr.copy()
    ytr[:5] = 0  # unequal classes, so that empirical priors are not uniform
    clf = GDAClassifier(
        clip_model=None, covariance_estimator=EmpiricalCovariance(), priors="empirical"
    ).fit(Xtr, ytr)
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(normalize(Xtr), ytr)
    expected = lda.decision_function(normalize(Xte))
    np.testing.assert_allclose(clf.decision_function(Xte), expected, atol=1e-8)
    np.testing.assert_allclose(clf.priors_, lda.priors_)


def test_covariance_estimator_is_cloned_and_used(task):
    Xtr, ytr, Xte, _, W = task
    est = LedoitWolf()
    clf = GDAClassifier(clip_model=None, covariance_estimator=est).fit(Xtr, ytr)
    assert not hasattr(est, "covariance_")  # a clone was fitted
    default = GDAClassifier(clip_model=None).fit(Xtr, ytr)
    assert not np.allclose(clf.coef_, default.coef_)
    means = np.stack([normalize(Xtr)[ytr == k].mean(0) for k in range(6)])
    centered = normalize(Xtr) - means[ytr]
    precision = np.linalg.inv(LedoitWolf().fit(centered).covariance_)
    np.testing.assert_allclose(clf.coef_, means @ precision, rtol=1e-7, atol=1e-7)


def test_alpha_zero_is_zero_shot_and_one_shot_adds_a_constant(task):
    Xtr, ytr, Xte, _, W = task
    zero_shot = 100.0 * normalize(Xte) @ normalize(W).T
    clf = GDAClassifier(alpha=0.0, clip_model=None, text_features=W).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.decision_function(Xte), zero_shot, atol=1e-12)
    # one sample per class and no augmentation: nothing to estimate a covariance from,
    # the authors' estimator gives P = 0 and the GDA term is log(1/C) for every class
    one = np.r_[[np.flatnonzero(ytr == k)[0] for k in range(6)]]
    with pytest.warns(UserWarning, match="one sample per class"):
        clf = GDAClassifier(alpha=5.0, clip_model=None, text_features=W).fit(Xtr[one], ytr[one])
    np.testing.assert_allclose(clf.coef_, 0.0)
    np.testing.assert_allclose(clf.decision_function(Xte), zero_shot + 5 * np.log(1 / 6), atol=1e-9)


def test_priors(task):
    Xtr, ytr, Xte, _, W = task
    ytr = np.r_[ytr[:-3], [0, 0, 0]]
    freq = np.bincount(ytr) / len(ytr)
    a = GDAClassifier(clip_model=None, priors="empirical").fit(Xtr, ytr)
    b = GDAClassifier(clip_model=None, priors=freq).fit(Xtr, ytr)
    u = GDAClassifier(clip_model=None).fit(Xtr, ytr)
    np.testing.assert_allclose(a.priors_, freq)
    np.testing.assert_allclose(u.priors_, 1 / 6)
    np.testing.assert_allclose(a.decision_function(Xte), b.decision_function(Xte))
    # priors only shift the intercept, by log(pi)
    np.testing.assert_allclose(a.intercept_ - u.intercept_, np.log(freq) - np.log(1 / 6))
    with pytest.warns(UserWarning, match="renormalizing"):
        c = GDAClassifier(clip_model=None, priors=2 * freq).fit(Xtr, ytr)
    np.testing.assert_allclose(c.priors_, freq)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        GDAClassifier(clip_model=None, priors=[0.5, 0.5]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="positive"):
        GDAClassifier(clip_model=None, priors=np.r_[0.0, freq[1:] + freq[0] / 5]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="priors"):
        GDAClassifier(clip_model=None, priors="uniform").fit(Xtr, ytr)


def test_float32_and_labels(task):
    Xtr, ytr, Xte, _, W = task
    names = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])
    clf = GDAClassifier(clip_model=None, text_features=W).fit(Xtr.astype(np.float32), names[ytr])
    ref = GDAClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    assert clf.coef_.dtype == np.float32
    assert clf.decision_function(Xte.astype(np.float32)).dtype == np.float32
    np.testing.assert_array_equal(clf.predict(Xte), names[ref.predict(Xte)])


@pytest.mark.parametrize(
    "params, match",
    [({"alpha": -1.0}, "alpha"), ({"covariance_estimator": "lw"}, "covariance_estimator")],
)
def test_invalid_parameters(task, params, match):
    with pytest.raises(ValueError, match=match):
        GDAClassifier(clip_model=None, **params).fit(task[0], task[1])


def test_pipeline_gridsearch(tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, device="cpu")),
            ("gda", GDAClassifier(clip_model=tiny_clip_path, device="cpu", alpha=100.0)),
        ]
    )
    # The tiny CLIP's text tower is random, so only a GDA-dominated model can be accurate.
    assert pipe.fit(paths, labels).score(paths, labels) > 0.8
    grid = GridSearchCV(pipe, {"gda__alpha": [0.0, 1.0, 100.0]}, cv=StratifiedKFold(3))
    grid.fit(paths, labels)
    assert len(grid.cv_results_["mean_test_score"]) == 3
    assert grid.best_params_["gda__alpha"] > 0
    assert set(grid.predict(paths[:4])) <= set(labels)


def test_pickle_holds_no_weights(task):
    Xtr, ytr, Xte, _, W = task
    clf = GDAClassifier(clip_model="some/model", text_features=W).fit(Xtr, ytr)
    blob = pickle.dumps(clf)
    assert len(blob) < 20_000
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.decision_function(Xte), clf.decision_function(Xte))


def test_gda_parameters_need_no_estimator_object():
    X = normalize(np.random.default_rng(0).normal(size=(12, 4)))
    y = np.repeat([0, 1, 2], 4)
    means, coef, intercept = gda_parameters(X, y, np.full(3, 1 / 3))
    assert means.shape == coef.shape == (3, 4) and intercept.shape == (3,)


@parametrize_with_checks(
    [
        GDAClassifier(clip_model=None),
        GDAClassifier(
            clip_model=None, alpha=3.0, covariance_estimator=LedoitWolf(), priors="empirical"
        ),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_pooled_views_recipe_from_the_notes(tiny_clip_path, image_folder):
    """The Notes' recipe for the authors' pooling: one random view per seed, stacked."""
    paths, labels = image_folder
    views = [
        CLIPFeaturizer(model=tiny_clip_path, device="cpu", augment=1, random_state=s).fit_transform(
            paths
        )
        for s in range(3)
    ]
    assert not np.allclose(views[0], views[1])  # different seeds, different views
    X, y = np.vstack(views), np.tile(labels, 3)
    pooled = GDAClassifier(clip_model=tiny_clip_path, device="cpu").fit(X, y)
    single = GDAClassifier(clip_model=tiny_clip_path, device="cpu").fit(views[0], labels)
    assert not np.allclose(pooled.coef_, single.coef_)
    assert pooled.predict(views[2][:2]).shape == (2,)


def test_text_features_configuration_fails_checks_only_on_shape():
    """As for TipAdapterClassifier: with fixed text_features, the checks that fail are
    those whose data do not match their shape, and they fail with our shape error."""
    from sklearn.utils.estimator_checks import check_estimator

    W = normalize(np.random.default_rng(0).normal(size=(3, 2)))
    results = check_estimator(GDAClassifier(clip_model=None, text_features=W), on_fail=None)
    assert any(r["status"] == "passed" for r in results)
    for r in results:
        if r["status"] == "failed":
            exc = r["exception"]
            assert "text_features" in str(exc) + str(exc.__cause__) + str(exc.__context__), r


def test_default_precision_shrinks_as_samples_are_added(task):
    """Documented for alpha: the same distribution with 4 times the samples (here
    copies: the same S, 4 times the scatter) gives a smaller GDA term, by at most 4."""
    Xtr, ytr, _, _, _ = task
    sizes = [1, 4, 16]
    fits = [
        GDAClassifier(clip_model=None).fit(np.tile(Xtr, (k, 1)), np.tile(ytr, k)) for k in sizes
    ]
    norms = [np.linalg.norm(f.coef_) for f in fits]
    ratios = [norms[0] / norms[1], norms[1] / norms[2]]
    assert all(1.2 < r <= 4.0 for r in ratios), ratios


def test_chunked_prediction_equals_one_shot(task):
    Xtr, ytr, Xte, _, W = task
    clf = GDAClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    full = clf.decision_function(Xte)
    with sklearn.config_context(working_memory=1e-6):  # one query per chunk
        np.testing.assert_allclose(clf.decision_function(Xte), full, atol=1e-12)


def test_zero_shot_term_is_the_text_models_own(tiny_siglip_path):
    """With a SigLIP text model the zero-shot term is its s f W^T + b, as for Tip-Adapter."""
    from skclip import TipAdapterClassifier

    rng = np.random.default_rng(0)
    X, y = normalize(rng.normal(size=(12, 32))), np.repeat(["cat", "dog", "fox"], 4)
    common = dict(clip_model=tiny_siglip_path, templates="simple", device="cpu")
    gda = GDAClassifier(alpha=0.5, **common).fit(X, y)
    zero_shot = TipAdapterClassifier(alpha=0.0, **common).fit(X, y)
    assert gda.logit_scale_ == zero_shot.logit_scale_ != 100.0 and gda.logit_bias_ != 0.0
    expected = zero_shot.decision_function(X) + 0.5 * (X @ gda.coef_.T + gda.intercept_)
    np.testing.assert_allclose(gda.decision_function(X), expected, rtol=1e-6, atol=1e-6)
