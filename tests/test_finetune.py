"""Tip-Adapter-F training (skclip.heads._finetune): the reference loop, float16, the defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TIPF_TASKS, clip_statistics_task
from sklearn.preprocessing import normalize

from skclip import TipAdapterClassifier, TipAdapterClassifierCV
from skclip.heads._finetune import AUTO_STEPS, fine_tune_keys

REPRO = dict(
    lr=1e-3,
    epochs=20,
    batch_size=256,
    leave_one_out=False,
    validation_fraction=None,
    normalize_keys=False,
)


def reference_tip_f(X, y, W, *, alpha, beta, lr, epochs, batch_size, seed, dtype):
    """Tip-Adapter-F as the authors' ``run_tip_adapter_F`` trains it, on fixed features.

    Written from the paper's code path, not from skclip: the keys are a parameter
    initialized from the cache (the training features), every tensor is in ``dtype``
    (their GPU runs: float16 CLIP, so float16 features, text weights, one-hot values and
    keys, and AdamW's moments in float16), AdamW with ``eps=1e-4`` and torch's other
    defaults, a cosine schedule over epochs x batches, the logits
    ``100 f W^T + alpha exp(-(beta - beta f K^T)) V`` with no self-exclusion, and the
    last epoch's keys (their best-on-test epoch is not reproduced). Batches follow
    ``RandomState(seed).permutation`` once per epoch, as skclip's shuffles do.
    """
    feats = torch.tensor(X, dtype=dtype)
    text = torch.tensor(W, dtype=dtype).T
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y)).to(dtype)
    keys = torch.nn.Parameter(feats.clone())
    steps_per_epoch = math.ceil(len(X) / batch_size)
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            batch = torch.as_tensor(order[start : start + batch_size])
            f = feats[batch]
            affinity = f @ keys.T
            logits = 100.0 * f @ text + alpha * torch.exp(-(beta - beta * affinity)) @ onehot
            loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return keys.detach().float().numpy(), opt.state[keys]["exp_avg_sq"]


@pytest.fixture(scope="module")
def repro_task():
    X, y, _, _, W = clip_statistics_task(n_classes=20, shots=16, d=128, n_test=1)
    return X, y, W


def _ours(X, y, W, **params):
    return fine_tune_keys(
        X, y, len(W), W, alpha=1.17, beta=1.0, device="cpu", random_state=0, **{**REPRO, **params}
    ).keys


def test_float32_equals_the_reference_loop(repro_task):
    X, y, W = repro_task
    ref, _ = reference_tip_f(
        X,
        y,
        W,
        alpha=1.17,
        beta=1.0,
        lr=1e-3,
        epochs=20,
        batch_size=256,
        seed=0,
        dtype=torch.float32,
    )
    ours = _ours(X, y, W, train_dtype="float32")
    assert np.abs(ref - X).max() > 1e-3  # the keys did move
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_float16_moves_as_far_as_the_reference_float16_loop(repro_task):
    X, y, W = repro_task
    ref16, sq = reference_tip_f(
        X,
        y,
        W,
        alpha=1.17,
        beta=1.0,
        lr=1e-3,
        epochs=20,
        batch_size=256,
        seed=0,
        dtype=torch.float16,
    )
    ref32, _ = reference_tip_f(
        X,
        y,
        W,
        alpha=1.17,
        beta=1.0,
        lr=1e-3,
        epochs=20,
        batch_size=256,
        seed=0,
        dtype=torch.float32,
    )
    ours16 = _ours(X, y, W, train_dtype="float16")
    move_ref16, move_ref32 = np.linalg.norm(ref16 - X), np.linalg.norm(ref32 - X)
    move_ours = np.linalg.norm(ours16 - X)
    # The regime: AdamW's second moment underflows in float16, steps become ~lr * m / eps.
    assert (sq == 0).float().mean() > 0.5
    assert move_ref16 > 3 * move_ref32
    # Ours reproduces it: as far (within 20%, in total and for the largest change) ...
    assert abs(move_ours - move_ref16) <= 0.2 * move_ref16, (move_ours, move_ref16)
    largest_ref16, largest_ours = np.abs(ref16 - X).max(), np.abs(ours16 - X).max()
    assert abs(largest_ours - largest_ref16) <= 0.2 * largest_ref16
    # ... and to about the same place (float32 training ends far from it).
    assert np.linalg.norm(ours16 - ref16) <= 0.1 * move_ref16
    assert np.linalg.norm(ref32 - ref16) >= 0.5 * move_ref16


# -- the defaults --------------------------------------------------------------------------
def _task(shots, name="10 classes"):
    return clip_statistics_task(shots=shots, **TIPF_TASKS[name])


def _fit(X, y, W, **params):
    return TipAdapterClassifier(
        clip_model=None, text_features=W, fine_tune=True, random_state=0, **params
    ).fit(X, y)


def test_defaults_fine_tune_well_beyond_training_free():
    Xtr, ytr, Xte, yte, W = _task(shots=4)
    free = TipAdapterClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    tuned = _fit(Xtr, ytr, W)
    assert tuned.score(Xte, yte) > free.score(Xte, yte) + 0.04
    assert np.abs(tuned.cache_keys_ - normalize(Xtr)).max() > 0.05  # the keys did move


@pytest.mark.parametrize(("batch_size", "epochs"), [(256, 300), (16, 100), (2, 20)])
def test_auto_epochs_make_at_least_300_steps_and_20_epochs(batch_size, epochs):
    Xtr, ytr, _, _, W = _task(shots=4)  # 40 samples: 1, 3 or 20 steps per epoch
    clf = _fit(Xtr, ytr, W, batch_size=batch_size)
    steps_per_epoch = math.ceil(40 / batch_size)
    assert len(clf.loss_curve_) == epochs == max(20, math.ceil(AUTO_STEPS / steps_per_epoch))
    assert len(_fit(Xtr, ytr, W, batch_size=batch_size, epochs=7).loss_curve_) == 7


def test_one_shot_with_leave_one_out_trains_nothing_and_says_so():
    Xtr, ytr, Xte, yte, W = _task(shots=1)
    free = TipAdapterClassifier(clip_model=None, text_features=W).fit(Xtr, ytr)
    with pytest.warns(UserWarning, match="leave_one_out=False"):
        clf = _fit(Xtr, ytr, W)
    np.testing.assert_allclose(clf.cache_keys_, free.cache_keys_, atol=1e-7)
    assert clf.loss_curve_ == [] and clf.best_epoch_ == 0
    np.testing.assert_array_equal(clf.predict(Xte), free.predict(Xte))
    trained = _fit(Xtr, ytr, W, leave_one_out=False)  # the reference's way still trains
    assert len(trained.loss_curve_) > 0


def test_singleton_classes_are_not_queries_but_the_rest_trains():
    Xtr, ytr, _, _, W = _task(shots=4)
    keep = np.r_[0, np.flatnonzero(ytr != 0)]  # class 0 has a single sample
    res = fine_tune_keys(
        Xtr[keep],
        ytr[keep],
        10,
        W,
        alpha=1.0,
        beta=5.5,
        epochs=2,
        lr=1e-3,
        batch_size=8,
        device="cpu",
        random_state=0,
    )
    # 36 scorable queries in batches of 8: 5 steps per epoch, the singleton's loss unused.
    with pytest.warns(UserWarning, match="leave_one_out"):
        fine_tune_keys(
            Xtr[keep][:1],
            ytr[keep][:1],
            10,
            W,
            alpha=1.0,
            beta=5.5,
            epochs=2,
            lr=1e-3,
            batch_size=8,
            device="cpu",
            random_state=0,
        )
    assert len(res.loss_curve) == 2 and not np.allclose(res.keys[0], Xtr[0])


def test_auto_validation_holds_out_only_with_enough_samples_per_class():
    Xtr, ytr, _, _, W = _task(shots=20)
    clf = _fit(Xtr, ytr, W, epochs=3)
    assert len(clf.validation_scores_) == 3
    assert len(clf.cache_keys_) == 180  # 2 of 20 per class held out, not in the cache
    np.testing.assert_array_equal(clf.cache_values_.sum(0), np.full(10, 18))
    few = np.flatnonzero(np.arange(len(ytr)) % 20 < 19)  # 19 per class: nothing held out
    clf = _fit(Xtr[few], ytr[few], W, epochs=3)
    assert clf.validation_scores_ is None and len(clf.cache_keys_) == len(few)


def test_normalized_keys_do_not_collapse_when_training_long():
    """Raw keys grow along the direction all features share: long training falls far
    below training-free Tip; normalized keys (the default) keep improving on it."""
    Xtr, ytr, Xte, yte, W = _task(shots=2)
    free = TipAdapterClassifier(clip_model=None, text_features=W).fit(Xtr, ytr).score(Xte, yte)
    unit = _fit(Xtr, ytr, W, lr=1e-2)
    raw = _fit(Xtr, ytr, W, lr=1e-2, normalize_keys=False)
    np.testing.assert_allclose(np.linalg.norm(unit.cache_keys_, axis=1), 1.0, rtol=1e-5)
    assert np.linalg.norm(raw.cache_keys_, axis=1).max() > 1.01
    assert unit.score(Xte, yte) > free + 0.02 > raw.score(Xte, yte) + 0.2


def test_train_dtype_float16_through_the_estimator():
    Xtr, ytr, _, _, W = _task(shots=4)
    params = dict(lr=1e-3, epochs=20, normalize_keys=False)
    f16 = _fit(Xtr.astype(np.float64), ytr, W, train_dtype="float16", **params)
    f32 = _fit(Xtr.astype(np.float64), ytr, W, train_dtype="float32", **params)
    assert f16.cache_keys_.dtype == np.float64
    assert np.abs(f16.cache_keys_ - Xtr).max() > 3 * np.abs(f32.cache_keys_ - Xtr).max()
    with pytest.raises(ValueError, match="train_dtype"):
        _fit(Xtr, ytr, W, train_dtype="bfloat16")


def test_cv_fine_tunes_with_the_classifier_defaults():
    tip, cv = TipAdapterClassifier().get_params(), TipAdapterClassifierCV().get_params()
    for name in ("epochs", "lr", "batch_size", "leave_one_out", "normalize_keys", "train_dtype"):
        assert cv[name] == tip[name], name
    Xtr, ytr, _, _, W = _task(shots=4)
    clf = TipAdapterClassifierCV(
        alphas=[1.0],
        betas=[5.5],
        cv=2,
        clip_model=None,
        text_features=W,
        fine_tune=True,
        random_state=0,
    ).fit(Xtr, ytr)
    assert len(clf.loss_curve_) == AUTO_STEPS  # 40 samples: one step per epoch
    np.testing.assert_allclose(np.linalg.norm(clf.cache_keys_, axis=1), 1.0, rtol=1e-5)


def test_epochs_and_train_dtype_are_validated():
    Xtr, ytr, _, _, W = _task(shots=2)
    with pytest.raises(ValueError, match="epochs"):
        _fit(Xtr, ytr, W, epochs="many")
    with pytest.raises(ValueError, match="validation_fraction"):
        _fit(Xtr, ytr, W, validation_fraction="always")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_float16_on_cuda_moves_like_on_cpu(repro_task):
    X, y, W = repro_task
    cpu = _ours(X, y, W, train_dtype="float16")
    gpu = fine_tune_keys(
        X,
        y,
        len(W),
        W,
        alpha=1.17,
        beta=1.0,
        device="cuda",
        random_state=0,
        train_dtype="float16",
        **REPRO,
    ).keys
    move = np.linalg.norm(cpu - X)
    assert abs(np.linalg.norm(gpu - X) - move) <= 0.2 * move
    assert np.linalg.norm(gpu - cpu) <= 0.1 * move
