"""LP++: a linear probe blended with the text weights, class by class.

Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024
(authors' code: github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline,
``methods/linear_probe_p2.py``, class ``LinearProbe_P2``). For L2-normalized features
``f`` and unit text weights ``T``::

    logits = f @ W.T + b + alpha * (f @ T.T)          (alpha: one weight per class)

trained full-batch by gradient descent on the cross-entropy, with step sizes from
Lipschitz bounds instead of a learning-rate search. Each formula lives in one function:
:func:`lpp_initialisation` and :func:`lpp_step_sizes` (the authors' closed forms),
:func:`lpp_train` (fit) and :func:`lpp_logits` (predict).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh
from sklearn.utils import check_random_state

from ._compat import Interval
from .backbones.loading import resolve_device
from .heads._base import TextHead, pooled_views

#: The authors' scale of the initial blending weight: ``alpha = 250 x`` the mean
#: cosine of the training features with their own class's text weights.
ALPHA_INIT_SCALE = 250.0
#: The text-weight step is taken every this many epochs (the authors').
ALPHA_EVERY = 10


def lpp_step_sizes(X: np.ndarray, text_weights: np.ndarray | None) -> tuple[float, float]:
    """The authors' step sizes from Lipschitz bounds of the cross-entropy.

    ``lr_w = 4 N / lambda_max(X^T X)`` for the linear probe and
    ``lr_alpha = N / (4 max_k sum_i (x_i . t_k)^2)`` for the blending weights (0 when
    every text cosine is 0, or without text weights), computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> lpp_step_sizes(np.eye(2), 0.5 * np.eye(2))
    (8.0, 2.0)
    """
    X64 = X.astype(np.float64)
    lr_w = 4.0 * len(X) / float(eigh(X64.T @ X64, eigvals_only=True)[-1])
    if text_weights is None:
        return lr_w, 0.0
    largest = float(((X64 @ text_weights.astype(np.float64).T) ** 2).sum(axis=0).max())
    return lr_w, (len(X) / (4.0 * largest) if largest > 0 else 0.0)


def lpp_initialisation(
    X: np.ndarray, y: np.ndarray, text_weights: np.ndarray | None, n_classes: int
) -> tuple[np.ndarray, float]:
    """The authors' initial weights: each class's *sum* of features, and the blending
    weight ``250 x mean_k (mean cosine of the features of class k with t_k)``
    (0 without text weights).

    Examples
    --------
    >>> import numpy as np
    >>> X, y = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), np.array([0, 0, 1])
    >>> W, alpha = lpp_initialisation(X, y, np.eye(2), 2)
    >>> W, round(alpha, 6)
    (array([[1.6, 0.8],
           [0. , 1. ]]), 225.0)
    """
    sums = np.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    np.add.at(sums, y, X)
    if text_weights is None:
        return sums, 0.0
    own = np.einsum("nd,nd->n", X.astype(np.float64), text_weights[y].astype(np.float64))
    per_class = np.bincount(y, own, n_classes) / np.bincount(y, minlength=n_classes)
    return sums, ALPHA_INIT_SCALE * float(per_class.mean())


def lpp_logits(
    queries: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    alpha: torch.Tensor,
    text_weights: torch.Tensor | None = None,
    **zero_shot: Any,
) -> torch.Tensor:
    """LP++ logits ``f W^T + b + alpha * (f T^T)``; without text weights ``f W^T + b``.

    ``alpha`` (one per class) takes the place of the zero-shot scale: the text model's
    own scale and bias (``zero_shot``) are accepted for the shared prediction path and
    not used (a bias the same for every class changes no prediction).

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0]])
    >>> lpp_logits(f, torch.eye(2), torch.zeros(2), torch.tensor([10.0, 20.0]), torch.eye(2))
    tensor([[11.,  0.]])
    """
    logits = queries @ coef.T + intercept
    if text_weights is None:
        return logits
    return logits + alpha * (queries @ text_weights.T)


def lpp_train(
    X: np.ndarray,
    y: np.ndarray,
    text_weights: np.ndarray | None,
    n_classes: int,
    *,
    step_sizes: tuple[float, float],
    epochs: int,
    momentum: float,
    random_state: Any,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Train LP++ as the authors' loop does, full-batch, in float32.

    The probe ``(W, b)`` starts at the per-class sums of :func:`lpp_initialisation` and
    a bias drawn as ``torch.nn.Linear``'s default (uniform in ``+-1/sqrt(d)``, from
    ``random_state``); SGD with ``momentum`` at ``lr_w`` every epoch, with
    ``step_sizes = (lr_w, lr_alpha)`` from :func:`lpp_step_sizes`. ``alpha`` starts
    at the initial blending weight for every class; every ``ALPHA_EVERY`` epochs it
    takes a step of ``lr_alpha`` along its gradient *accumulated since the first
    epoch* (the authors never zero it).

    Returns
    -------
    coef, intercept, alpha : ndarrays of shape (n_classes, d), (n_classes,), (n_classes,)
    loss_curve : list of float
        Training loss per epoch.
    """
    rng = check_random_state(random_state)
    d = X.shape[1]
    sums, alpha0 = lpp_initialisation(X, y, text_weights, n_classes)
    lr_w, lr_alpha = step_sizes
    bias = rng.uniform(-1.0 / np.sqrt(d), 1.0 / np.sqrt(d), size=n_classes)

    def tensor(a: np.ndarray, grad: bool = False) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
        return t.requires_grad_(grad)

    feats, labels = tensor(X), torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    coef, intercept = tensor(sums, True), tensor(bias, True)
    alpha = tensor(np.full(n_classes, alpha0), True)
    text = None if text_weights is None else tensor(text_weights)
    optimizer = torch.optim.SGD([coef, intercept], lr=lr_w, momentum=momentum)
    loss_curve = []
    for epoch in range(epochs):
        loss = torch.nn.functional.cross_entropy(
            lpp_logits(feats, coef, intercept, alpha, text), labels
        )
        optimizer.zero_grad()  # the probe's gradient only: alpha's accumulates
        loss.backward()
        optimizer.step()
        if (epoch + 1) % ALPHA_EVERY == 0 and text is not None and alpha.grad is not None:
            with torch.no_grad():
                alpha -= lr_alpha * alpha.grad
        loss_curve.append(float(loss.detach()))
    arrays = (coef, intercept, alpha)
    return (*(a.detach().cpu().numpy() for a in arrays), loss_curve)  # type: ignore[return-value]


class LinearProbePPClassifier(TextHead):
    """LP++: a linear probe plus the text weights, blended class by class.

    A linear probe ``(W, b)`` on the image features and the zero-shot text weights
    ``T`` of the class names, with one learned blending weight per class::

        logits = f @ W.T + b + alpha * (f @ T.T)

    trained together, full-batch, by gradient descent on the cross-entropy with step
    sizes set from Lipschitz bounds of the loss (no learning rate to tune). ``W``
    starts at each class's sum of features and ``alpha`` at 250 times the mean cosine
    of the features with their class's text weights (about zero-shot CLIP's scale).
    This is LP++ (Huang et al., CVPR 2024).

    Parameters
    ----------
    epochs : int, default=300
        Full-batch gradient steps (the authors': 300).
    momentum : float, default=0.9
        SGD momentum of the probe (``alpha`` takes plain steps), as the authors.
    train_views : int, default=0
        If ``E > 0``, ``X = [features | view_1 | ... | view_E]`` (the output of
        ``CLIPFeaturizer(train_views=E).fit_transform``), and training uses the ``E *
        n_samples`` views, pooled as samples, and not the first block. The authors train
        on one augmented view of each image (``train_views=1``).
    random_state : int, RandomState instance or None, default=None
        Draws the initial bias (the only random step); the fit is deterministic given
        it (on a CPU).
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    coef_ : ndarray of shape (n_classes, n_features)
        The probe's weights ``W``.
    intercept_ : ndarray of shape (n_classes,)
        The probe's bias ``b``.
    alpha_ : ndarray of shape (n_classes,)
        The blending weights; zeros without text weights.
    step_sizes_ : tuple of float
        ``(lr_w, lr_alpha)``, from :func:`skclip.linear_probe_pp.lpp_step_sizes`.
    loss_curve_ : list of float
        Training loss per epoch.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        Text weights ``T``; ``None`` without a text head (then a plain linear probe).
    logit_scale_, logit_bias_ : float or None
        The text model's zero-shot scale and bias: unused, ``alpha_`` plays their part.

    See Also
    --------
    CLAPClassifier : A linear probe started at, and kept near, the text weights.
    sklearn.linear_model.LogisticRegression : The linear probe without text weights.

    Notes
    -----
    **Where this differs from the authors' code.** They keep the model of the epoch
    with the best accuracy on a few-shot *validation* split; there is none here, and
    ``fit`` keeps the last epoch (tune ``epochs`` by cross-validation on training data
    if you must). They train in the CLIP model's dtype (float16 on their GPUs); here in
    float32. Their bias is ``torch.nn.Linear``'s random default; here drawn the same way
    from ``random_state``. As theirs, ``alpha``'s gradient is never reset: each of its
    steps, every 10 epochs, follows the sum of its gradients since the first epoch; this
    is kept to reproduce their results. Their step-size formulas take ``N``, the number
    of training samples, for every class count; classes of unequal sizes are fine here.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import LinearProbePPClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> W = np.eye(8)[:2] + 0.5  # text weights, one row per class
    >>> clf = LinearProbePPClassifier(text_features=W, random_state=0).fit(X, y)
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    >>> clf.coef_.shape, clf.alpha_.shape
    ((2, 8), (2,))
    """

    _parameter_constraints: dict = {
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "train_views": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        epochs: int = 300,
        momentum: float = 0.9,
        train_views: int = 0,
        random_state: int | np.random.RandomState | None = None,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.epochs = epochs
        self.momentum = momentum
        self.train_views = train_views
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> LinearProbePPClassifier:
        """Train the probe and the blending weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, (1 + train_views) * n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : LinearProbePPClassifier
        """
        self._validate_params()
        X, y_enc, views = self._prepare_views(X, y, self.train_views)
        pool, pool_y = pooled_views(X, y_enc, views)
        W = self.text_features_
        self.step_sizes_ = lpp_step_sizes(pool, W)
        coef, intercept, alpha, curve = lpp_train(
            pool,
            pool_y,
            W,
            len(self.classes_),
            step_sizes=self.step_sizes_,
            epochs=self.epochs,
            momentum=self.momentum,
            random_state=self.random_state,
            device=resolve_device(self.device),
        )
        self.coef_, self.intercept_, self.alpha_ = (
            a.astype(X.dtype) for a in (coef, intercept, alpha)
        )
        self.loss_curve_ = curve
        return self

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        arrays = tuple(
            torch.from_numpy(a).to(device) for a in (self.coef_, self.intercept_, self.alpha_)
        )
        return lpp_logits, arrays, {}, self.coef_.dtype, 2 * len(self.classes_)
