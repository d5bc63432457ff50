"""APEClassifier: the authors' criterion, logits and search; unequal classes; sklearn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import sklearn
import torch
from helpers import clip_like_task
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import APEClassifier, CLIPFeaturizer, TipAdapterClassifier
from skclip.ape import ape_criterion

N_CLASSES, SHOTS, DIM = 5, 4, 24


def authors_criterion(clip_weights, cache_keys, shots, w, feat_num):
    """utils.py ``cal_criterion`` (training-free, only_use_txt=False), loop for loop.

    ``clip_weights`` (d, C), ``cache_keys`` (C * shots, d) sorted by class.
    """
    feat_dim, cate_num = clip_weights.shape
    text_feat = clip_weights.t().unsqueeze(1)
    cache_feat = cache_keys.reshape(cate_num, shots, feat_dim)
    feats = torch.cat([text_feat, cache_feat], dim=1)
    samp_num = feats.shape[1]
    sim_sum = torch.zeros(feat_dim, dtype=feats.dtype)
    count = 0
    for i in range(cate_num):
        for j in range(cate_num):
            for m in range(samp_num):
                for n in range(samp_num):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, n, :]
                        count += 1
    sim = sim_sum / count
    criterion = (-1) * w[0] * sim + w[1] * torch.var(clip_weights, dim=1)
    _, indices = torch.topk(criterion, k=feat_num)
    return criterion, indices


def authors_ape(cache_keys, cache_values, clip_weights, indices):
    """main.py ``APE`` up to the logits: returns a function of (features, alpha, beta, gamma)."""
    new_clip_weights = clip_weights[indices, :]
    new_cache_keys = cache_keys[:, indices]
    new_clip_weights = new_clip_weights / new_clip_weights.norm(dim=0, keepdim=True)
    new_cache_keys = new_cache_keys / new_cache_keys.norm(dim=-1, keepdim=True)
    key_logits = (new_cache_keys @ new_clip_weights).softmax(1)
    cache_div = torch.sum(
        cache_values * torch.log2((cache_values + 1e-6) / (key_logits + 1e-6)), dim=1
    )[:, None]

    def logits(features, alpha, beta, gamma):
        new_features = features[:, indices]
        new_features = new_features / new_features.norm(dim=-1, keepdim=True)
        R_fW = 100.0 * features @ clip_weights
        R_fF = new_features @ new_cache_keys.t()
        soft_cache_values = cache_values * (cache_div * gamma).exp()
        cache_logits = ((-1) * (beta - beta * R_fF)).exp() @ soft_cache_values
        return R_fW + cache_logits * alpha

    return logits


def search_lists(scale, step):
    """The authors' beta, alpha and gamma candidate lists from search_scale/search_step."""
    beta = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    gamma = [i * scale[2] / step[2] for i in range(step[2])]
    return beta, alpha, gamma


@pytest.fixture(scope="module")
def task():
    """Equal shots, keys sorted by class (as the authors' code requires)."""
    return clip_like_task(
        seed=3, d=DIM, n_classes=N_CLASSES, shots=SHOTS, n_test=30, noise=3.0, text_eps=0.1
    )


def _authors_inputs(Xtr, ytr, W):
    t = torch.from_numpy
    return t(normalize(Xtr)), t(np.eye(N_CLASSES)[ytr]), t(normalize(W)).T


@pytest.mark.parametrize("w, k", [((0.7, 0.3), 12), ((0.2, 0.8), 5), ((1.0, 0.0), 20)])
def test_criterion_and_selection_equal_authors(task, w, k):
    Xtr, ytr, _, _, W = task
    keys, _, clip_weights = _authors_inputs(Xtr, ytr, W)
    criterion, indices = authors_criterion(clip_weights, keys, SHOTS, w, k)
    clf = APEClassifier(
        clip_model=None,
        text_features=W,
        similarity_weight=w[0],
        variance_weight=w[1],
        n_features_to_select=k,
    ).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.criterion_, criterion.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(clf.selected_features_, np.sort(indices.numpy()))


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-9), (np.float32, 2e-4)])
@pytest.mark.parametrize("alpha, beta, gamma", [(2.0, 1.0, 0.1), (0.5, 5.0, 0.0), (3.0, 0.1, 0.9)])
def test_logits_equal_authors_formulas(task, dtype, atol, alpha, beta, gamma):
    Xtr, ytr, Xte, _, W = task
    keys, values, clip_weights = _authors_inputs(Xtr, ytr, W)
    _, indices = authors_criterion(clip_weights, keys, SHOTS, (0.7, 0.3), 12)
    t = torch.from_numpy
    logits = authors_ape(keys, values, clip_weights, indices)
    expected = logits(t(normalize(Xte)), alpha, beta, gamma).numpy()
    clf = APEClassifier(
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        n_features_to_select=12,
        clip_model=None,
        text_features=W.astype(dtype),
    ).fit(Xtr.astype(dtype), ytr)
    got = clf.decision_function(Xte.astype(dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol * np.abs(expected).max())


def test_search_chooses_the_authors_best(task):
    """Their triple loop over (beta, alpha, gamma) and GridSearchCV over the same
    candidates, in the same order, on the same held-out split: same best score and,
    as both keep the first best, the same parameters."""
    Xtr, ytr, Xte, yte, W = task
    keys, values, clip_weights = _authors_inputs(Xtr, ytr, W)
    _, indices = authors_criterion(clip_weights, keys, SHOTS, (0.7, 0.3), 12)
    logits = authors_ape(keys, values, clip_weights, indices)
    val, val_labels = torch.from_numpy(normalize(Xte)), torch.from_numpy(yte)
    betas, alphas, gammas = search_lists([7, 7, 1], [10, 8, 4])
    best_acc, best, accs = 0, None, set()
    for beta in betas:
        for alpha in alphas:
            for gamma in gammas:
                pred = logits(val, alpha, beta, gamma).argmax(1)
                acc = 100.0 * float((pred == val_labels).double().mean())
                accs.add(acc)
                if acc > best_acc:
                    best_acc, best = acc, {"alpha": alpha, "beta": beta, "gamma": gamma}
    assert len(accs) > 3  # the grid matters on this task

    candidates = [
        {"beta": [b], "alpha": [a], "gamma": [g]} for b in betas for a in alphas for g in gammas
    ]
    split = PredefinedSplit(np.r_[np.full(len(ytr), -1), np.zeros(len(yte))])
    search = GridSearchCV(
        APEClassifier(clip_model=None, text_features=W, n_features_to_select=12),
        candidates,
        cv=split,
        refit=False,
    ).fit(np.vstack([Xtr, Xte]), np.r_[ytr, yte])
    assert search.best_score_ == pytest.approx(best_acc / 100, abs=1e-12)
    assert search.best_params_ == best


def test_unequal_classes_criterion_is_mean_over_class_pairs():
    """Generalization: the mean over pairs of different classes of the mean product over
    their sample pairs (text counted as a sample), however many samples each class has."""
    rng = np.random.default_rng(0)
    counts = [1, 3, 6]
    X = normalize(rng.normal(size=(sum(counts), 7)))
    y = np.repeat(np.arange(3), counts)
    W = normalize(rng.normal(size=(3, 7)))
    samples = [np.vstack([W[k], X[y == k]]) for k in range(3)]
    pair_means = [
        np.mean([a * b for a in samples[i] for b in samples[j]], axis=0)
        for i in range(3)
        for j in range(3)
        if i != j
    ]
    expected = -0.7 * np.mean(pair_means, axis=0) + 0.3 * W.var(axis=0, ddof=1)
    np.testing.assert_allclose(ape_criterion(X, y, 3, W, 0.7, 0.3), expected, atol=1e-12)


def test_one_class_per_sample_count_does_not_decide(task):
    """Repeating every sample of one class leaves the criterion unchanged: classes, not
    samples, are weighed (with the authors' per-sample mean a big class would dominate)."""
    Xtr, ytr, _, _, W = task
    more = np.r_[np.arange(len(ytr)), np.flatnonzero(ytr == 0), np.flatnonzero(ytr == 0)]
    X3 = np.vstack([Xtr, Xtr[ytr == 0], Xtr[ytr == 0]])
    a = APEClassifier(clip_model=None, n_features_to_select=12).fit(Xtr, ytr)
    b = APEClassifier(clip_model=None, n_features_to_select=12).fit(X3, ytr[more])
    np.testing.assert_allclose(a.criterion_, b.criterion_, atol=1e-12)


def test_all_channels_and_gamma_zero_is_tip_adapter(task):
    Xtr, ytr, Xte, _, W = task
    ape = APEClassifier(
        alpha=1.5, beta=4.0, gamma=0.0, n_features_to_select=1.0, clip_model=None, text_features=W
    ).fit(Xtr, ytr)
    tip = TipAdapterClassifier(alpha=1.5, beta=4.0, clip_model=None, text_features=W).fit(Xtr, ytr)
    np.testing.assert_array_equal(ape.selected_features_, np.arange(DIM))
    np.testing.assert_allclose(ape.decision_function(Xte), tip.decision_function(Xte), atol=1e-9)


def test_keys_the_text_gets_wrong_weigh_more(task):
    Xtr, ytr, _, _, W = task
    clf = APEClassifier(clip_model=None, text_features=W, n_features_to_select=12).fit(Xtr, ytr)
    text = normalize(normalize(W)[:, clf.selected_features_])
    p = np.exp(clf.cache_keys_ @ text.T)
    p /= p.sum(1, keepdims=True)
    p_true = p[np.arange(len(ytr)), ytr]
    order = np.argsort(p_true)
    assert np.all(np.diff(clf.key_divergence_[order]) <= 1e-12)  # lower p_true, more weight
    np.testing.assert_allclose(clf.key_divergence_, np.log2((1 + 1e-6) / (p_true + 1e-6)))


def test_without_text_gamma_has_no_effect(task):
    Xtr, ytr, Xte, _, _ = task
    a = APEClassifier(clip_model=None, gamma=0.0).fit(Xtr, ytr)
    b = APEClassifier(clip_model=None, gamma=0.9).fit(Xtr, ytr)
    assert a.text_features_ is None
    np.testing.assert_array_equal(a.key_divergence_, 0.0)
    np.testing.assert_array_equal(a.decision_function(Xte), b.decision_function(Xte))
    means = np.stack([normalize(Xtr)[ytr == k].mean(0) for k in range(N_CLASSES)])
    np.testing.assert_allclose(
        a.criterion_, ape_criterion(normalize(Xtr), ytr, N_CLASSES, None, 0.7, 0.3)
    )
    assert np.argmax(a.criterion_) in np.argsort(means.var(0, ddof=1))[-12:]


@pytest.mark.parametrize("k, n", [(1, 1), (7, 7), (0.5, 12), (0.01, 1), (1.0, DIM)])
def test_n_features_to_select(task, k, n):
    Xtr, ytr, Xte, _, W = task
    clf = APEClassifier(clip_model=None, text_features=W, n_features_to_select=k).fit(Xtr, ytr)
    assert clf.selected_features_.shape == (n,) and clf.cache_keys_.shape == (len(Xtr), n)
    np.testing.assert_allclose(np.linalg.norm(clf.cache_keys_, axis=1), 1.0)
    assert clf.decision_function(Xte).shape == (len(Xte), N_CLASSES)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_features_to_select": DIM + 1}, f"more than X has: n_features={DIM}"),
        ({"n_features_to_select": 0}, "n_features_to_select"),
        ({"n_features_to_select": 1.5}, "n_features_to_select"),
        ({"gamma": -0.1}, "gamma"),
        ({"similarity_weight": float("nan")}, "similarity_weight"),
    ],
)
def test_invalid_parameters(task, params, match):
    with pytest.raises(ValueError, match=match):
        APEClassifier(clip_model=None, **params).fit(task[0], task[1])


def test_one_class_is_refused_by_name(task):
    with pytest.raises(ValueError, match="at least 2 classes.*'solo'"):
        APEClassifier(clip_model=None).fit(task[0][:4], ["solo"] * 4)


def test_pipeline_gridsearch(tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, device="cpu")),
            ("ape", APEClassifier(clip_model=tiny_clip_path, device="cpu", alpha=100.0, beta=5.0)),
        ]
    )
    # The tiny CLIP's text tower is random, so only a cache-dominated model can be accurate.
    assert pipe.fit(paths, labels).score(paths, labels) > 0.8
    grid = GridSearchCV(
        pipe, {"ape__alpha": [0.0, 100.0], "ape__gamma": [0.0, 1.0]}, cv=StratifiedKFold(3)
    ).fit(paths, labels)
    assert len(grid.cv_results_["mean_test_score"]) == 4
    assert grid.best_params_["ape__alpha"] == 100.0
    assert set(grid.predict(paths[:4])) <= set(labels)


def test_pickle_holds_no_weights(task):
    Xtr, ytr, Xte, _, W = task
    clf = APEClassifier(clip_model="some/model", text_features=W).fit(Xtr, ytr)
    blob = pickle.dumps(clf)
    assert len(blob) < 20_000
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.decision_function(Xte), clf.decision_function(Xte))


@parametrize_with_checks(
    [
        # the checks' data have 2 features: keep both (one, normalized, is just a sign)
        APEClassifier(clip_model=None, n_features_to_select=1.0, beta=5.5),
        APEClassifier(clip_model=None, n_features_to_select=2, alpha=5.0, beta=3.0, gamma=1.0),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_text_features_configuration_fails_checks_only_on_shape():
    """As for TipAdapterClassifier: with fixed text_features, the checks that fail are
    those whose data do not match their shape, and they fail with our shape error."""
    from sklearn.utils.estimator_checks import check_estimator

    W = normalize(np.random.default_rng(0).normal(size=(3, 2)))
    est = APEClassifier(clip_model=None, text_features=W, n_features_to_select=1.0, beta=5.5)
    results = check_estimator(est, on_fail=None)
    assert any(r["status"] == "passed" for r in results)
    for r in results:
        if r["status"] == "failed":
            exc = r["exception"]
            messages = str(exc) + str(exc.__cause__) + str(exc.__context__)
            assert "text_features" in messages or "at least 2 classes" in messages, r


def test_chunked_prediction_equals_one_shot(task):
    Xtr, ytr, Xte, _, W = task
    clf = APEClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    full = clf.decision_function(Xte)
    with sklearn.config_context(working_memory=1e-6):  # one query per chunk
        np.testing.assert_allclose(clf.decision_function(Xte), full, atol=1e-12)


def test_zero_shot_term_is_the_text_models_own(tiny_siglip_path):
    """With a SigLIP text model the zero-shot term is its s f W^T + b, as for Tip-Adapter."""
    rng = np.random.default_rng(0)
    X, y = normalize(rng.normal(size=(12, 32))), np.repeat(["cat", "dog", "fox"], 4)
    common = dict(clip_model=tiny_siglip_path, templates="simple", device="cpu")
    ape = APEClassifier(alpha=0.0, **common).fit(X, y)
    zero_shot = TipAdapterClassifier(alpha=0.0, **common).fit(X, y)
    assert ape.logit_scale_ == zero_shot.logit_scale_ != 100.0 and ape.logit_bias_ != 0.0
    np.testing.assert_allclose(ape.decision_function(X), zero_shot.decision_function(X))
