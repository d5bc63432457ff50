"""TipAdapterClassifier: the formula, the text head, Tip-Adapter-F, sklearn integration."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import sklearn
import torch
from helpers import TINY_DIM, clip_like_task
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip.heads import _formula
from skclip.heads._finetune import fine_tune_keys
from skclip._compat import pooled_embeddings
from skclip.heads._formula import cache_logits
from skclip.backbones.loading import clear_model_cache, load_backbone as load_clip
from skclip._testing import save_random_clip
from skclip.text import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES, clear_text_cache, text_weights


def _unit(rng, n, d):
    X = rng.normal(size=(n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def numpy_tip_logits(Xq, K, y_enc, W, alpha, beta, n_classes):
    """Independent implementation of the paper's formula, straight from the definition."""
    V = np.zeros((len(K), n_classes))
    V[np.arange(len(K)), y_enc] = 1.0
    logits = alpha * np.exp(-beta * (1.0 - Xq @ K.T)) @ V
    if W is not None:
        logits = logits + 100.0 * Xq @ W.T
    return logits


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    X, Xq = _unit(rng, 30, 12), _unit(rng, 17, 12)
    y = np.array(["b", "a", "c"] * 10)
    W = _unit(rng, 3, 12)
    return X, y, Xq, W


@pytest.mark.parametrize(
    "alpha, beta", [(1.0, 5.5), (0.5, 1.0), (3.0, 7.0), (10.0, 0.0), (1.17, 50.0)]
)
def test_decision_function_equals_numpy_formula(features, alpha, beta):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(alpha=alpha, beta=beta, clip_model=None, text_features=W).fit(X, y)
    y_enc = np.searchsorted(clf.classes_, y)
    expected = numpy_tip_logits(Xq, X, y_enc, W, alpha, beta, 3)
    np.testing.assert_allclose(clf.decision_function(Xq), expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(clf.predict(Xq), clf.classes_[expected.argmax(1)])


def test_alpha_zero_is_zero_shot_clip(features):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(alpha=0.0, clip_model=None, text_features=W).fit(X, y)
    # zero-shot CLIP: 100 * cosine similarity of the normalized image and text features
    zero_shot = 100.0 * (normalize(Xq) @ normalize(W).T)
    np.testing.assert_allclose(clf.decision_function(Xq), zero_shot, atol=1e-12, rtol=0)
    # bit-for-bit: the cache term adds exactly 0 to the same product computed by torch
    same_backend = 100.0 * (torch.from_numpy(normalize(Xq)) @ torch.from_numpy(normalize(W)).T)
    np.testing.assert_array_equal(clf.decision_function(Xq), same_backend.numpy())


def test_cache_only_mode(features):
    X, y, Xq, _ = features
    clf = TipAdapterClassifier(alpha=2.0, beta=3.0, clip_model=None).fit(X, y)
    assert clf.text_features_ is None
    y_enc = np.searchsorted(clf.classes_, y)
    expected = numpy_tip_logits(Xq, X, y_enc, None, 2.0, 3.0, 3)
    np.testing.assert_allclose(clf.decision_function(Xq), expected, atol=1e-6, rtol=0)


def test_inputs_are_normalized_inside(features):
    X, y, Xq, W = features
    a = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y)
    b = TipAdapterClassifier(clip_model=None, text_features=5 * W).fit(7 * X, y)
    np.testing.assert_allclose(a.decision_function(Xq), b.decision_function(3 * Xq), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(b.cache_keys_, axis=1), 1.0)


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["dog", "cat", "bird"]),
        np.array([0, 1, 2]),
        np.array([42, 3, 10]),  # non-contiguous ints
        np.array([-1.0, 0.0, 7.0]),  # integral floats (sklearn rejects continuous targets)
    ],
)
def test_any_label_type(features, labels):
    X, y, Xq, W = features
    y_enc = np.searchsorted(np.unique(y), y)
    y_new = labels[y_enc]
    clf = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y_new)
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    pred = clf.predict(Xq)
    assert set(pred) <= set(labels)
    ref = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y)
    # same classes in the same sorted order -> same predictions, relabelled
    order = np.argsort(labels)
    mapping = dict(zip(np.unique(y), labels[order]))
    np.testing.assert_array_equal(pred, [mapping[p] for p in ref.predict(Xq)])


def test_predict_proba_and_binary_decision_function(features):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y)
    proba = clf.predict_proba(Xq)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(Xq))
    mask = y != "c"
    binary = TipAdapterClassifier(clip_model=None, text_features=W[:2]).fit(X[mask], y[mask])
    logits = numpy_tip_logits(Xq, X[mask], np.searchsorted(["a", "b"], y[mask]), W[:2], 1.0, 5.5, 2)
    dec = binary.decision_function(Xq)
    assert dec.shape == (len(Xq),)
    np.testing.assert_allclose(dec, logits[:, 1] - logits[:, 0], atol=1e-6)
    np.testing.assert_array_equal(binary.predict(Xq), np.where(dec > 0, "b", "a"))


def test_chunked_prediction_equals_one_shot(features):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y)
    full = clf.decision_function(Xq)
    with sklearn.config_context(working_memory=1e-6):  # forces one query per chunk
        np.testing.assert_allclose(clf.decision_function(Xq), full, atol=1e-12)


def test_float32_input_stays_float32(features):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(clip_model=None, text_features=W).fit(X.astype(np.float32), y)
    assert clf.cache_keys_.dtype == np.float32
    out = clf.decision_function(Xq.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(
        out, numpy_tip_logits(Xq, X, np.searchsorted(clf.classes_, y), W, 1.0, 5.5, 3), atol=1e-4
    )


def test_text_features_validation(features):
    X, y, _, W = features
    with pytest.raises(ValueError, match=r"shape \(n_classes, n_features\) = \(3, 12\)"):
        TipAdapterClassifier(clip_model=None, text_features=W[:2]).fit(X, y)
    with pytest.raises(ValueError, match="dimension 5 but X has 12"):
        TipAdapterClassifier(clip_model=None, text_features=W[:, :5]).fit(X, y)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": -0.5}, "beta"),
        ({"alpha": float("inf")}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"validation_fraction": 1.5}, "validation_fraction"),
        ({"templates": "fancy"}, "templates"),
        ({"device": "tpu", "fine_tune": True}, "Unknown device"),
    ],
)
def test_invalid_parameters(features, params, match):
    X, y, _, _ = features
    with pytest.raises(ValueError, match=match):
        TipAdapterClassifier(clip_model=None, **params).fit(X, y)


# -- text head from a real (tiny) CLIP --------------------------------------------------------
def _manual_text_weights(clip, names, templates):
    W = []
    for name in names:
        tok = clip.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
        with torch.inference_mode():
            e = pooled_embeddings(clip.model.get_text_features(**tok))
        e = torch.nn.functional.normalize(e, dim=-1).mean(0)
        W.append(torch.nn.functional.normalize(e, dim=0).numpy())
    return np.stack(W)


def test_text_weights_are_prompt_ensembled_class_names(tiny_clip_path):
    clip = load_clip(tiny_clip_path, "cpu", "float32")
    rng = np.random.default_rng(0)
    X = _unit(rng, 6, TINY_DIM)
    y = np.array(["golden_retriever", "tabby-cat", "red fox"] * 2)
    clf = TipAdapterClassifier(clip_model=tiny_clip_path, device="cpu").fit(X, y)
    names = ["golden retriever", "red fox", "tabby cat"]  # classes_ order, cleaned
    np.testing.assert_allclose(
        clf.text_features_, _manual_text_weights(clip, names, IMAGENET_TEMPLATES), atol=1e-5
    )
    custom = ["a {} on a production line.", "a close-up photo of a {}."]
    names2 = {"golden_retriever": "dog", "tabby-cat": "cat", "red fox": "fox"}
    clf2 = TipAdapterClassifier(
        clip_model=tiny_clip_path, templates=custom, class_names=names2, device="cpu"
    ).fit(X, y)
    np.testing.assert_allclose(
        clf2.text_features_, _manual_text_weights(clip, ["dog", "fox", "cat"], custom), atol=1e-5
    )
    clf3 = TipAdapterClassifier(
        clip_model=tiny_clip_path, templates="simple", class_names=["d", "f", "c"], device="cpu"
    ).fit(X, y)
    np.testing.assert_allclose(
        clf3.text_features_,
        _manual_text_weights(clip, ["d", "f", "c"], SIMPLE_TEMPLATES),
        atol=1e-5,
    )


def test_text_is_encoded_once_per_model_templates_names(tiny_clip_path, monkeypatch):
    clip = load_clip(tiny_clip_path, "cpu", "float32")
    calls = []
    original = clip.model.get_text_features

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(clip.model, "get_text_features", counting)
    X = _unit(np.random.default_rng(1), 4, TINY_DIM)
    y = np.array(["never seen a", "never seen b"] * 2)
    for alpha in (0.5, 1.0, 2.0):
        TipAdapterClassifier(alpha=alpha, clip_model=tiny_clip_path, device="cpu").fit(X, y)
    assert len(calls) == 1


def test_text_weights_follow_a_checkpoint_rewritten_in_place(tmp_path):
    """Text weights are cached by the text tower's weights, not by the folder's name."""
    folder = save_random_clip(tmp_path / "clip", seed=0)
    names = ["ant", "bee"]
    before = text_weights(load_clip(folder, "cpu", "float32"), names, SIMPLE_TEMPLATES)
    save_random_clip(folder, seed=1)  # same name, other weights
    clear_model_cache()
    clip = load_clip(folder, "cpu", "float32")
    after = text_weights(clip, names, SIMPLE_TEMPLATES)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(
        after, _manual_text_weights(clip, names, SIMPLE_TEMPLATES), atol=1e-5
    )
    # The same weights under another name share the entry: nothing is encoded again.
    twin = save_random_clip(tmp_path / "twin", seed=1)
    assert text_weights(load_clip(twin, "cpu", "float32"), names, SIMPLE_TEMPLATES) is after


def test_clear_text_cache_encodes_again(tiny_clip_path, monkeypatch):
    clip = load_clip(tiny_clip_path, "cpu", "float32")
    first = text_weights(clip, ["cleared a", "cleared b"], SIMPLE_TEMPLATES)
    assert text_weights(clip, ["cleared a", "cleared b"], SIMPLE_TEMPLATES) is first
    clear_text_cache()
    again = text_weights(clip, ["cleared a", "cleared b"], SIMPLE_TEMPLATES)
    assert again is not first
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("form", ["tensor", "output"])
def test_text_features_as_tensor_or_output_object(tiny_clip_path, monkeypatch, form):
    """transformers 4 returns the embeddings as a Tensor, transformers 5 inside an output
    object: both forms give the same text weights, whichever transformers is installed."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    clip = load_clip(tiny_clip_path, "cpu", "float32")
    names = [f"{form} a", f"{form} b"]
    expected = _manual_text_weights(clip, names, SIMPLE_TEMPLATES)
    original = clip.model.get_text_features

    def as_form(**kw):
        pooled = pooled_embeddings(original(**kw))
        return pooled if form == "tensor" else BaseModelOutputWithPooling(pooler_output=pooled)

    monkeypatch.setattr(clip.model, "get_text_features", as_form)
    clear_text_cache()
    np.testing.assert_allclose(text_weights(clip, names, SIMPLE_TEMPLATES), expected, atol=1e-6)


def test_class_names_errors(tiny_clip_path):
    X = _unit(np.random.default_rng(2), 4, TINY_DIM)
    y = np.array(["a", "b", "a", "b"])
    with pytest.raises(ValueError, match=r"no name for the labels \['b'\]"):
        TipAdapterClassifier(clip_model=tiny_clip_path, class_names={"a": "x"}).fit(X, y)
    with pytest.raises(ValueError, match="1 names but there are 2 classes"):
        TipAdapterClassifier(clip_model=tiny_clip_path, class_names=["x"]).fit(X, y)


def test_feature_dimension_mismatch_names_both(tiny_clip_path):
    X = _unit(np.random.default_rng(3), 4, 24)
    y = np.array(["a", "b", "a", "b"])
    with pytest.raises(ValueError) as info:
        TipAdapterClassifier(clip_model=tiny_clip_path, device="cpu").fit(X, y)
    msg = str(info.value)
    assert "24 features" in msg and f"dimension {TINY_DIM}" in msg and tiny_clip_path in msg


def test_pipeline_gridsearch_and_cross_val(tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, device="cpu")),
            ("tip", TipAdapterClassifier(clip_model=tiny_clip_path, device="cpu")),
        ]
    )
    pipe.fit(paths, labels)
    assert set(pipe.predict(paths)) <= set(labels)
    # The tiny CLIP's text tower is random, so only a cache-dominated model can be accurate.
    pipe.set_params(tip__alpha=100.0).fit(paths, labels)
    assert pipe.score(paths, labels) > 0.8
    grid = GridSearchCV(
        pipe, {"tip__alpha": [0.0, 1.0, 3.0], "tip__beta": [1.0, 5.5]}, cv=StratifiedKFold(3)
    ).fit(paths, labels)
    assert grid.best_params_["tip__alpha"] in (0.0, 1.0, 3.0)
    assert len(grid.cv_results_["mean_test_score"]) == 6
    assert set(grid.predict(paths[:4])) <= set(labels)
    scores = cross_val_score(pipe, paths, labels, cv=StratifiedKFold(3))
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))


def test_pickle_holds_no_weights(features):
    X, y, Xq, W = features
    clf = TipAdapterClassifier(clip_model="some/model", text_features=W).fit(X, y)
    blob = pickle.dumps(clf)
    assert len(blob) < 20_000
    np.testing.assert_array_equal(pickle.loads(blob).predict(Xq), clf.predict(Xq))


# -- Tip-Adapter-F ----------------------------------------------------------------------------
# The reference loop's raw keys (normalize_keys=False): these tests are about its behaviour;
# tests/test_finetune.py covers the defaults.
TIPF = dict(
    clip_model=None, fine_tune=True, lr=1e-2, epochs=20, normalize_keys=False, random_state=0
)


@pytest.fixture(scope="module")
def task():
    return clip_like_task(seed=0)


def test_tipf_loss_decreases_and_beats_training_free(task):
    Xtr, ytr, Xte, yte, W = task
    free = TipAdapterClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    zero_shot = TipAdapterClassifier(alpha=0, clip_model=None, text_features=W).fit(Xtr, ytr)
    tuned = TipAdapterClassifier(text_features=W, **TIPF).fit(Xtr, ytr)
    assert len(tuned.loss_curve_) == 20 and tuned.validation_scores_ is None
    assert tuned.loss_curve_[-1] < 0.6 * tuned.loss_curve_[0]
    assert tuned.best_epoch_ == 20
    acc_zs, acc_free, acc_tuned = (m.score(Xte, yte) for m in (zero_shot, free, tuned))
    assert acc_free > acc_zs
    assert acc_tuned > acc_free + 0.015, (acc_zs, acc_free, acc_tuned)
    assert not np.allclose(tuned.cache_keys_, free.cache_keys_)


def test_tipf_self_match_guard_changes_result(task):
    Xtr, ytr, Xte, yte, W = task
    guarded = TipAdapterClassifier(text_features=W, **TIPF).fit(Xtr, ytr)
    naive = TipAdapterClassifier(text_features=W, leave_one_out=False, **TIPF).fit(Xtr, ytr)
    # Without the guard each sample matches its own key: the loss collapses to ~0 ...
    assert naive.loss_curve_[-1] < 0.01 < guarded.loss_curve_[-1]
    # ... the keys learn something else, and generalize worse here.
    assert np.abs(naive.cache_keys_ - guarded.cache_keys_).max() > 0.05
    assert guarded.score(Xte, yte) > naive.score(Xte, yte)


def test_tipf_is_seeded(task):
    Xtr, ytr, _, _, W = task
    params = {**TIPF, "batch_size": 32, "epochs": 3}
    a = TipAdapterClassifier(text_features=W, **params).fit(Xtr, ytr)
    b = TipAdapterClassifier(text_features=W, **params).fit(Xtr, ytr)
    c = TipAdapterClassifier(text_features=W, **{**params, "random_state": 1}).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.cache_keys_, b.cache_keys_)
    assert not np.array_equal(a.cache_keys_, c.cache_keys_)
    TipAdapterClassifier(text_features=W, **{**params, "random_state": None}).fit(Xtr, ytr)


def test_tipf_validation_picks_best_epoch_on_held_out_training_data(task):
    Xtr, ytr, _, _, W = task
    clf = TipAdapterClassifier(text_features=W, validation_fraction=0.25, **TIPF).fit(Xtr, ytr)
    assert len(clf.validation_scores_) == 20
    assert clf.validation_scores_[clf.best_epoch_ - 1] == max(clf.validation_scores_)
    assert clf.best_epoch_ == 1 + int(np.argmax(clf.validation_scores_))  # first best on ties
    assert len(clf.cache_keys_) == int(len(Xtr) * 0.75)  # held-out samples are not keys
    np.testing.assert_array_equal(clf.cache_values_.sum(0), np.full(8, 12))  # stratified


def test_tipf_validation_needs_enough_samples():
    X = _unit(np.random.default_rng(0), 4, 6)
    with pytest.raises(ValueError, match="validation_fraction"):
        TipAdapterClassifier(**TIPF, validation_fraction=0.2).fit(X, ["a", "b", "c", "d"])


def test_tipf_verbose_prints_progress(task, capsys):
    Xtr, ytr, _, _, W = task
    TipAdapterClassifier(text_features=W, verbose=1, **{**TIPF, "epochs": 2}).fit(Xtr, ytr)
    assert "epoch 2/2: loss" in capsys.readouterr().out


# -- scikit-learn's own estimator checks ------------------------------------------------------
@parametrize_with_checks(
    [
        TipAdapterClassifier(clip_model=None),
        TipAdapterClassifier(clip_model=None, alpha=2.0, beta=1.0),
        TipAdapterClassifier(clip_model=None, fine_tune=True, epochs=3, random_state=0),
        TipAdapterClassifier(clip_model=None, fine_tune=True, random_state=0),  # the defaults
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _text_features_checks():
    from sklearn.utils.estimator_checks import check_estimator

    rng = np.random.default_rng(0)
    est = TipAdapterClassifier(clip_model=None, text_features=_unit(rng, 3, 2))
    return check_estimator(est, on_fail=None)


def test_sklearn_checks_with_text_features_fail_only_where_shapes_differ():
    """Every check that passes must be one whose data fit the fixed text_features; every
    failing check must fail with our shape error, not another bug."""
    results = _text_features_checks()
    passed = [r["check_name"] for r in results if r["status"] == "passed"]
    failed = [r for r in results if r["status"] == "failed"]
    assert passed, "some checks (API, params, cloning) must pass"
    for r in failed:
        exc = r["exception"]
        messages = str(exc) + str(exc.__cause__) + str(exc.__context__)
        assert "text_features" in messages, (r["check_name"], exc)


@pytest.mark.parametrize("cls", [TipAdapterClassifier, TipAdapterClassifierCV])
def test_parameters_are_keyword_only(cls):
    with pytest.raises(TypeError, match="positional"):
        cls(1.0)


def test_fine_tune_keys_is_what_fit_does(task):
    """The pure training function gives the classifier's keys, curves and kept samples."""
    Xtr, ytr, _, _, W = task
    params = dict(alpha=1.0, beta=5.5, epochs=3, lr=1e-2, batch_size=32, normalize_keys=False)
    clf = TipAdapterClassifier(text_features=W, validation_fraction=0.25, **{**TIPF, **params}).fit(
        Xtr, ytr
    )
    y_enc = np.searchsorted(clf.classes_, ytr)
    res = fine_tune_keys(
        normalize(Xtr),
        y_enc,
        len(clf.classes_),
        normalize(W),
        validation_fraction=0.25,
        device="cpu",
        random_state=0,
        **params,
    )
    np.testing.assert_array_equal(res.keys, clf.cache_keys_)
    np.testing.assert_array_equal(np.eye(len(clf.classes_))[y_enc[res.kept]], clf.cache_values_)
    assert len(res.kept) == len(res.keys) < len(Xtr) and np.all(np.diff(res.kept) > 0)
    assert res.loss_curve == clf.loss_curve_ and res.validation_scores == clf.validation_scores_
    assert res.best_epoch == clf.best_epoch_


def test_refit_without_fine_tuning_clears_the_training_curves(task):
    """Every fit sets every fitted attribute: no curve of an earlier Tip-F fit survives."""
    Xtr, ytr, _, _, W = task
    clf = TipAdapterClassifier(text_features=W, validation_fraction=0.25, **{**TIPF, "epochs": 2})
    clf.fit(Xtr, ytr)
    assert len(clf.loss_curve_) == len(clf.validation_scores_) == 2 and clf.best_epoch_ >= 1
    clf.set_params(fine_tune=False).fit(Xtr, ytr)
    assert clf.loss_curve_ is None and clf.validation_scores_ is None and clf.best_epoch_ is None
    assert len(clf.cache_keys_) == len(Xtr)


# -- determinism of the per-class vote sums ---------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_one_hot_votes_equal_index_add_votes():
    """Both ways of summing the votes per class give the same numbers."""
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(7, 300, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g)
    dense = _formula._one_hot_votes(weights, labels, 6)  # class 5 has no key: a zero column
    np.testing.assert_allclose(dense, _formula._index_add_votes(weights, labels, 6), atol=1e-12)
    assert torch.all(dense[:, 5] == 0)


@pytest.mark.parametrize(
    "device, path",
    [
        ("cpu", "_index_add_votes"),
        ("cuda", "_one_hot_votes"),
        ("cuda:1", "_one_hot_votes"),
        ("mps", "_one_hot_votes"),
    ],
)
def test_atomic_index_add_is_used_only_on_the_cpu(device, path):
    """index_add accumulates with atomics on accelerators (run-to-run differences in
    the last bits) but in index order on the CPU: accelerators use a matmul instead."""
    assert _formula._votes_function(torch.device(device)) is getattr(_formula, path)


@cuda
@pytest.mark.cuda
def test_cuda_votes_are_deterministic():
    g = torch.Generator().manual_seed(0)
    affinity = torch.rand(256, 8192, generator=g).cuda()
    labels = torch.randint(0, 3, (8192,), generator=g).cuda()  # many keys per class
    runs = [cache_logits(affinity.clone(), labels, 5.0, n_classes=3) for _ in range(5)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    expected = cache_logits(affinity.cpu().double(), labels.cpu(), 5.0, n_classes=3)
    np.testing.assert_allclose(runs[0].double().cpu(), expected, rtol=1e-4)


@cuda
@pytest.mark.cuda
def test_cuda_tip_f_is_deterministic(task):
    Xtr, ytr, _, _, W = task
    params = {**TIPF, "epochs": 3, "batch_size": 32, "device": "cuda"}
    a = TipAdapterClassifier(text_features=W, **params).fit(Xtr, ytr)
    b = TipAdapterClassifier(text_features=W, **params).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.cache_keys_, b.cache_keys_)
    assert a.loss_curve_ == b.loss_curve_


@pytest.mark.parametrize("cls", [TipAdapterClassifier, TipAdapterClassifierCV])
@pytest.mark.parametrize("fine_tune", [False, True])
def test_predict_uses_the_integer_labels_stored_at_fit(features, cls, fine_tune):
    """As KNeighborsClassifier keeps ``_y``: predict does not rebuild the cache's labels
    from the one-hot ``cache_values_`` on every call."""
    X, y, Xq, W = features
    params = dict(epochs=2, random_state=0) if fine_tune else {}
    clf = cls(clip_model=None, text_features=W, fine_tune=fine_tune, **params)
    if cls is TipAdapterClassifierCV:
        clf.set_params(cv=2, alphas=[1.0], betas=[5.5])
    clf.fit(X, y)
    assert clf._y.dtype == np.intp and clf._y.flags.c_contiguous
    np.testing.assert_array_equal(clf._y, clf.cache_values_.argmax(axis=1))
    expected = clf.decision_function(Xq)
    del clf.cache_values_  # still public and set by fit; predict does not read it
    np.testing.assert_array_equal(clf.decision_function(Xq), expected)


# -- issue 20: magnitudes, damaged fitted arrays, memory of prediction ---------------------------
def _all_heads(**text):
    from skclip import APEClassifier, GDAClassifier

    return {
        "tip": TipAdapterClassifier(**text),
        "tip-cv": TipAdapterClassifierCV(cv=2, **text),
        "gda": GDAClassifier(**text),
        "ape": APEClassifier(**text),
    }


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-30])
@pytest.mark.parametrize("head", ["tip", "tip-cv", "gda", "ape"])
@pytest.mark.parametrize("with_text", [False, True])
def test_i20_5_feature_magnitude_does_not_matter(head, scale, with_text):
    """Issue 20, case 5: features of magnitude 1e20 (float32) normalized to zero, so Tip,
    GDA and APE predicted one class with uniform probabilities, without an error."""
    X, y, Xq, _, W = clip_like_task(seed=3, d=16, n_classes=3, shots=6, n_test=5)
    X, Xq, W = (a.astype(np.float32) for a in (X, Xq, W))

    def fit(s):
        text = W * np.float32(s) if with_text else None
        return _all_heads(clip_model=None, text_features=text)[head].fit(X * np.float32(s), y)

    plain, big = fit(1), fit(scale)
    np.testing.assert_array_equal(big.predict(Xq * np.float32(scale)), plain.predict(Xq))
    np.testing.assert_allclose(
        big.predict_proba(Xq * np.float32(scale)), plain.predict_proba(Xq), atol=1e-5
    )
    assert np.ptp(big.predict_proba(Xq * np.float32(scale)), axis=1).min() > 0  # not uniform


def test_i20_5_views_of_any_magnitude(tiny_clip_path):
    X, y, _, _, _ = clip_like_task(seed=1, d=8, n_classes=2, shots=6, n_test=1)
    views = np.hstack([X, X[::-1] * 1e200])  # one view block, huge (float64)
    clf = TipAdapterClassifier(clip_model=None, train_views=1)
    _, _, normed = clf._prepare_views(views, y, 1)
    np.testing.assert_allclose(normed[0], X[::-1] / np.linalg.norm(X, axis=1)[::-1, None])


def test_i20_5_non_finite_fitted_arrays_are_an_error_at_predict():
    X, y, Xq, _, W = clip_like_task(seed=0, d=8, n_classes=3, shots=4, n_test=2)
    for head, attr in [("tip", "cache_keys_"), ("gda", "coef_"), ("ape", "cache_keys_")]:
        clf = _all_heads(clip_model=None, text_features=W)[head].fit(X, y)
        getattr(clf, attr)[0, 0] = np.nan  # as a damaged model file would hold
        for method in ("predict", "predict_proba", "decision_function"):
            with pytest.raises(ValueError, match="logits that are not finite"):
                getattr(clf, method)(Xq)


def test_i20_7_chunked_prediction_equals_the_whole(monkeypatch):
    """predict, predict_proba and decision_function, chunk by chunk, equal the logits
    computed at once (softmax as scipy's)."""
    from scipy.special import softmax

    X, y, Xq, _, W = clip_like_task(seed=2, d=16, n_classes=5, shots=8, n_test=40)
    clf = TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y)
    whole = _formula.tip_adapter_logits(
        torch.from_numpy(normalize(Xq)),
        torch.from_numpy(clf.cache_keys_),
        torch.from_numpy(clf._y),
        torch.from_numpy(W / np.linalg.norm(W, axis=1)[:, None]),
        clf.alpha,
        clf.beta,
        n_classes=5,
    ).numpy()
    with sklearn.config_context(working_memory=0.01):  # chunks of a few rows
        np.testing.assert_allclose(clf.decision_function(Xq), whole, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(clf.predict_proba(Xq), softmax(whole, axis=1), atol=1e-12)
        np.testing.assert_array_equal(clf.predict(Xq), whole.argmax(axis=1))


_PEAK = r"""
import json, re, sys
import numpy as np
import sklearn
from skclip import TipAdapterClassifier

def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

n, c, method, wm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rng = np.random.default_rng(0)
clf = TipAdapterClassifier(clip_model=None).fit(
    rng.normal(size=(c, 8)).astype(np.float32), np.arange(c))
X = rng.normal(size=(n, 8)).astype(np.float32)
with sklearn.config_context(working_memory=wm):
    getattr(clf, method)(X[:50])  # warm up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = status("VmRSS")
    getattr(clf, method)(X)
print(json.dumps((status("VmHWM") - before) / (n * c * 4)))
"""


@pytest.mark.parametrize(
    "method, working_memory, most",
    [("predict", 4, 0.25), ("predict_proba", 1024, 1.5)],
)
def test_i20_7_peak_memory_of_prediction(method, working_memory, most):
    """Issue 20, case 7: predict built the whole (n, C) logits (3.5 GB at 100k x 5,000)
    and predict_proba peaked at 3x its output. Peak resident memory over the call, in
    a fresh process, as a multiple of the (n, C) float32 logits: predict stays within
    sklearn's working_memory (4 MiB here, a 76 MiB matrix), predict_proba within 1.5x
    its output. glibc's adaptive mmap threshold is fixed so that freed buffers go back
    to the system and the peak measures live memory, not the allocator's retention."""
    import json
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, "20000", "1000", method, str(working_memory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) <= most
