"""LinearProbePPClassifier: equal to a step-by-step re-implementation of the authors' loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import clip_like_task
from scipy.linalg import eigh
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from skclip import LinearProbePPClassifier


def authors_lpp(features, labels, clip_weights, bias, epochs, zero_alpha_grad=False):
    """FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py`` ``LinearProbe_P2``,
    step by step, in float32: ``clip_weights`` of shape (d, C) as theirs; ``bias`` the
    initial bias of their ``nn.Linear`` (its random default, injected). Returns the last
    epoch's classifier (they keep the best epoch on a validation split)."""
    n, d = features.shape
    n_classes = clip_weights.shape[1]
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    centroids = onehot.T @ features  # per-class sums (their compute_centroids)
    classifier = torch.nn.Linear(d, n_classes, bias=True)
    classifier.weight.data = centroids
    classifier.bias.data = bias
    # lr_w: 4 N / largest eigenvalue of F^T F (scipy eigh, as theirs)
    lr_w = (4 * n) / max(eigh((features.T @ features).numpy())[0])
    # init alpha: 250 x mean over classes of the mean own-class text logit
    z = features @ clip_weights
    alpha_tilde = (onehot * z / onehot.sum(0, keepdim=True)).sum(0).double()
    alpha_vec = (250 * alpha_tilde.mean() * torch.ones(1, n_classes)).float().requires_grad_()
    # lr_alpha: N / (4 max_k sum_i (f_i . t_k)^2)
    lr_alpha = n / (max(torch.sum(torch.pow(z, 2), dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(n, 1) @ alpha_vec * (features @ clip_weights)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        if zero_alpha_grad and alpha_vec.grad is not None:  # not theirs: for comparison
            alpha_vec.grad.zero_()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
    return classifier.weight.detach(), classifier.bias.detach(), alpha_vec.detach()[0], lr_w


@pytest.fixture(scope="module")
def task():
    Xtr, ytr, Xte, yte, W = clip_like_task(
        seed=7, d=16, n_classes=4, shots=6, n_test=10, noise=3.0, text_eps=0.2
    )
    keep = np.r_[0:6, 6:8, 12:17, 18:22]  # unequal class counts 6, 2, 5, 4
    return Xtr[keep].astype(np.float32), ytr[keep], Xte, yte, W.astype(np.float32)


def _bias(seed, d, n_classes):
    rng = np.random.RandomState(seed)
    return torch.from_numpy(rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), n_classes)).float()


@pytest.mark.parametrize("epochs", [10, 35, 300])
def test_equal_to_the_authors_loop(task, epochs):
    Xtr, ytr, Xte, _, W = task
    clf = LinearProbePPClassifier(epochs=epochs, random_state=4, text_features=W).fit(Xtr, ytr)
    t = torch.from_numpy
    coef, bias, alpha, lr_w = authors_lpp(t(Xtr), t(ytr), t(W).T, _bias(4, 16, 4), epochs)
    assert clf.step_sizes_[0] == pytest.approx(lr_w, rel=1e-5)
    for got, expected in [(clf.coef_, coef), (clf.intercept_, bias), (clf.alpha_, alpha)]:
        expected = expected.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    if epochs >= 10:  # alpha has taken a step
        assert not np.allclose(clf.alpha_, clf.alpha_[0])
    logits = normalize(Xte) @ coef.numpy().T + bias.numpy() + alpha.numpy() * (normalize(Xte) @ W.T)
    np.testing.assert_allclose(clf.decision_function(Xte), logits, rtol=1e-4, atol=1e-3)


def test_alpha_gradient_accumulates_as_theirs(task):
    """At epoch 20 alpha's step follows the sum of 20 epochs' gradients (theirs is never
    zeroed), not the last epoch's: zeroing it gives another alpha."""
    Xtr, ytr, _, _, W = task
    clf = LinearProbePPClassifier(epochs=20, random_state=0, text_features=W).fit(Xtr, ytr)
    t = torch.from_numpy
    args = (t(Xtr), t(ytr), t(W).T, _bias(0, 16, 4), 20)
    np.testing.assert_allclose(clf.alpha_, authors_lpp(*args)[2].numpy(), rtol=1e-4)
    zeroed = authors_lpp(*args, zero_alpha_grad=True)[2].numpy()
    assert np.abs(clf.alpha_ - zeroed).max() > 1e-2


def test_train_views_pool_the_views(task):
    Xtr, ytr, _, _, W = task
    rng = np.random.default_rng(0)
    views = [normalize(Xtr + 0.1 * rng.normal(size=Xtr.shape)).astype(np.float32) for _ in range(2)]
    X = np.hstack([Xtr, *views])
    clf = LinearProbePPClassifier(epochs=12, random_state=1, train_views=2, text_features=W)
    clf.fit(X, ytr)
    t = torch.from_numpy
    pool, pool_y = t(np.vstack(views)), t(np.tile(ytr, 2))
    coef, _, alpha, _ = authors_lpp(pool, pool_y, t(W).T, _bias(1, 16, 4), 12)
    np.testing.assert_allclose(clf.coef_, coef.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(clf.alpha_, alpha.numpy(), rtol=1e-4)


def test_deterministic_and_seeded(task):
    Xtr, ytr, _, _, W = task

    def fit(seed):
        return LinearProbePPClassifier(epochs=5, random_state=seed, text_features=W).fit(Xtr, ytr)

    np.testing.assert_array_equal(fit(1).coef_, fit(1).coef_)
    assert not np.array_equal(fit(1).intercept_, fit(2).intercept_)


def test_without_text_it_is_a_linear_probe(task):
    Xtr, ytr, _, _, _ = task
    clf = LinearProbePPClassifier(clip_model=None, epochs=50, random_state=0).fit(Xtr, ytr)
    np.testing.assert_array_equal(clf.alpha_, 0.0)
    assert clf.step_sizes_[1] == 0.0
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


@parametrize_with_checks([LinearProbePPClassifier(clip_model=None, epochs=20, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
