"""CLAPClassifier: equal to a step-by-step re-implementation of the authors' loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import clip_like_task
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import CLAPClassifier


class DasslConstantWarmup:
    """Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR`` (as configured by
    the authors' ``SGD_lr1e-1_B256_ep300``), re-stated: ``cons_lr`` for ``warmup_epoch``
    epochs, then the successor, stepped once per epoch after the warm-up."""

    def __init__(self, optimizer, epochs, cons_lr, warmup_epoch=1):
        self.optimizer = optimizer
        self.successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs))
        self.warmup_epoch, self.cons_lr, self.last_epoch = warmup_epoch, cons_lr, 0
        for group in optimizer.param_groups:
            group["lr"] = cons_lr

    def step(self):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
        else:
            self.last_epoch += 1
            if self.last_epoch >= self.warmup_epoch:
                lrs = self.successor.get_last_lr()
                for group, lr in zip(self.optimizer.param_groups, lrs):
                    group["lr"] = lr


def authors_clap(features, labels, n_images, text, *, epochs, batch_size, seed, scale=100.0):
    """jusiro/CLAP ``trainers/adapters.py`` (ZS init, l2 constraint), step by step:
    ``init_lagrangian_multipliers``, ``run_epoch`` (np.random shuffle, ``len(loader)``
    batches), ``forward_lp``, ``zero_shot_constraint``, SGD(momentum 0.9) and the Dassl
    schedule stepped after each epoch. ``features``: pooled views (numpy, float32)."""
    np.random.seed(seed)
    t = torch.from_numpy(text)
    base = t.clone()
    with torch.no_grad():
        f = torch.from_numpy(features)
        logits_ds = (
            scale * (f / f.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).T
        )
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels)).float()
        performance = torch.diag(torch.softmax(logits_ds, -1).t() @ onehot) / onehot.sum(0)
    prototypes = torch.nn.Parameter(base.clone())
    optim = torch.optim.SGD([prototypes], lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = DasslConstantWarmup(optim, epochs, 1e-5)
    num_batches = max(1, n_images // batch_size) if n_images >= batch_size else 1
    for _ in range(epochs):
        idx = np.random.rand(features.shape[0]).argsort(axis=0)
        feats, labs = features[idx, :], labels[idx]
        for b in range(num_batches):
            x = torch.tensor(feats[b * batch_size : (b + 1) * batch_size])
            x = x / x.norm(dim=-1, keepdim=True)
            p = prototypes / prototypes.norm(dim=-1, keepdim=True)
            output = x @ p.t() * scale
            loss_ce = torch.nn.functional.cross_entropy(
                output, torch.from_numpy(labs[b * batch_size : (b + 1) * batch_size])
            )
            disimilitude = (prototypes - base.clone()).pow(2).sum(-1)
            loss = loss_ce + torch.mean(performance * disimilitude)
            optim.zero_grad()
            loss.backward()
            optim.step()
        sched.step()
    return prototypes.detach().numpy(), performance.numpy()


@pytest.fixture(scope="module")
def task():
    Xtr, ytr, Xte, yte, W = clip_like_task(
        seed=5, d=16, n_classes=4, shots=6, n_test=10, noise=3.0, text_eps=0.2
    )
    keep = np.r_[0:6, 6:9, 12:17, 18:22]  # unequal class counts 6, 3, 5, 4
    Xtr, ytr = Xtr[keep], ytr[keep]
    rng = np.random.default_rng(0)
    views = [normalize(Xtr + 0.3 * rng.normal(size=Xtr.shape) / 4) for _ in range(3)]
    return Xtr, ytr, views, Xte, yte, W


@pytest.mark.parametrize("epochs, batch_size", [(30, 256), (12, 8)])
def test_equal_to_the_authors_loop(task, epochs, batch_size):
    Xtr, ytr, views, Xte, _, W = task
    X = np.hstack([Xtr, *views]).astype(np.float32)
    clf = CLAPClassifier(
        epochs=epochs, batch_size=batch_size, train_views=3, random_state=7,
        text_features=W.astype(np.float32), device="cpu",
    ).fit(X, ytr)  # fmt: skip
    pool = np.vstack(views).astype(np.float32)  # view-major, as their repetitions
    expected, multipliers = authors_clap(
        pool, np.tile(ytr, 3), len(ytr), normalize(W).astype(np.float32),
        epochs=epochs, batch_size=batch_size, seed=7,
    )  # fmt: skip
    assert np.abs(expected - normalize(W)).max() > 1e-2  # it trained
    np.testing.assert_allclose(clf.multipliers_, multipliers, rtol=1e-5)
    np.testing.assert_allclose(clf.coef_, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    logits = 100.0 * normalize(Xte) @ unit.T
    np.testing.assert_allclose(clf.decision_function(Xte), logits, rtol=1e-4, atol=1e-3)


def test_without_views_it_trains_on_the_features(task):
    Xtr, ytr, _, _, _, W = task
    clf = CLAPClassifier(epochs=10, random_state=0, text_features=W).fit(Xtr, ytr)
    expected, _ = authors_clap(
        Xtr.astype(np.float32), ytr, len(ytr), normalize(W).astype(np.float32),
        epochs=10, batch_size=256, seed=0,
    )  # fmt: skip
    np.testing.assert_allclose(clf.coef_, expected, rtol=1e-4, atol=1e-5)


def test_deterministic_and_seeded(task):
    Xtr, ytr, _, Xte, _, W = task
    fit = lambda seed: CLAPClassifier(  # noqa: E731
        epochs=5, batch_size=4, random_state=seed, text_features=W
    ).fit(Xtr, ytr)
    np.testing.assert_array_equal(fit(1).coef_, fit(1).coef_)
    assert not np.array_equal(fit(1).coef_, fit(2).coef_)


def test_one_epoch_at_warmup_barely_moves_from_zero_shot(task):
    """Epoch 0 runs at the warm-up rate 1e-5: the prototypes move by about 1e-4."""
    Xtr, ytr, _, Xte, _, W = task
    clf = CLAPClassifier(epochs=1, random_state=0, text_features=W).fit(Xtr, ytr)
    moved = np.abs(clf.coef_ - normalize(W)).max()
    assert 0 < moved < 1e-3


def test_without_text_the_anchor_is_the_class_means(task):
    Xtr, ytr, *_ = task
    means = np.stack([Xtr[ytr == k].mean(0) for k in range(4)])
    clf = CLAPClassifier(clip_model=None, epochs=6, random_state=3).fit(Xtr, ytr)
    np.testing.assert_allclose(clf.anchor_, means, rtol=1e-12)
    expected, _ = authors_clap(
        Xtr.astype(np.float32), ytr, len(ytr), means.astype(np.float32),
        epochs=6, batch_size=256, seed=3,
    )  # fmt: skip
    np.testing.assert_allclose(clf.coef_, expected, rtol=1e-4, atol=1e-5)


def test_zero_shot_term_is_the_text_models_own(tiny_siglip_path):
    rng = np.random.default_rng(0)
    X, y = normalize(rng.normal(size=(12, 32))), np.repeat(["cat", "dog", "fox"], 4)
    common = dict(clip_model=tiny_siglip_path, templates="simple", device="cpu")
    clf = CLAPClassifier(epochs=3, random_state=0, **common).fit(X, y)
    assert clf.logit_scale_ != 100.0 and clf.logit_bias_ != 0.0
    unit = normalize(clf.coef_)
    expected = clf.logit_scale_ * X @ unit.T + clf.logit_bias_
    np.testing.assert_allclose(clf.decision_function(X), expected, rtol=1e-5, atol=1e-4)


@parametrize_with_checks([CLAPClassifier(clip_model=None, epochs=3, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
