"""CLAP: a linear probe kept close to the zero-shot text weights, class by class.

Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024 (authors' code: github.com/jusiro/CLAP,
``trainers/adapters.py``, ``INIT=ZS``, ``CONSTRAINT=l2``, with the trainer config
``SGD_lr1e-1_B256_ep300``). The class prototypes ``w_k`` start at the text weights
``t_k`` and are trained with::

    logits = s * f @ normalize(w).T
    loss   = cross_entropy(logits, y) + mean_k lambda_k * ||w_k - t_k||^2
    lambda_k = mean over the training samples of class k of the zero-shot
               softmax probability of class k                (fixed before training)

Each formula lives in one function: :func:`clap_multipliers`, :func:`clap_learning_rate`,
:func:`clap_train` (fit) and :func:`clap_logits` (predict).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._compat import Interval
from .backbones.loading import resolve_device
from .heads._base import TextHead, pooled_views
from .heads._formula import CLIP_LOGIT_SCALE, zero_shot_logits


def clap_multipliers(zero_shot: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The class-wise penalty weights ``lambda_k``: the mean zero-shot softmax probability
    of class ``k`` over the training samples of class ``k`` (0 for a class without any).

    Parameters
    ----------
    zero_shot : Tensor of shape (n_samples, n_classes)
        Zero-shot logits of the training samples.
    y : Tensor of int of shape (n_samples,)
    n_classes : int

    Returns
    -------
    multipliers : Tensor of shape (n_classes,)

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    >>> clap_multipliers(logits, torch.tensor([0, 0, 1]), 2)
    tensor([0.6904, 0.5000])
    """
    proba = torch.softmax(zero_shot, dim=1)
    true = proba[torch.arange(len(y)), y]
    sums = torch.zeros(n_classes, dtype=proba.dtype).index_add(0, y, true)
    counts = torch.bincount(y, minlength=n_classes).to(proba.dtype)
    return sums / counts.clamp(min=1)


def class_means(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """The mean of each class's rows of ``X`` (unit rows in, so the means are within the
    unit ball): the anchor of CLAP and LP++ without text weights.

    Examples
    --------
    >>> import numpy as np
    >>> class_means(np.eye(3), np.array([0, 0, 1]), 2)
    array([[0.5, 0.5, 0. ],
           [0. , 0. , 1. ]])
    """
    sums = np.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    np.add.at(sums, y, X)
    return sums / np.bincount(y, minlength=n_classes)[:, None]


def clap_learning_rate(epoch: int, epochs: int, lr: float, warmup_lr: float) -> float:
    """The authors' schedule (Dassl's constant warm-up then cosine annealing over
    ``epochs``): ``warmup_lr`` in epoch 0, then ``lr (1 + cos(pi (epoch - 1) / epochs)) / 2``.

    Examples
    --------
    >>> [round(clap_learning_rate(e, 300, 0.1, 1e-5), 6) for e in (0, 1, 2, 299)]
    [1e-05, 0.1, 0.099997, 1.1e-05]
    """
    if epoch == 0:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def clap_logits(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    text_weights: torch.Tensor | None = None,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """CLAP logits ``s f normalize(w)^T + b``: zero-shot logits with the trained
    prototypes ``w`` (normalized) in place of the text weights (CLIP: ``s = 100, b = 0``).

    ``text_weights`` is accepted for the shared prediction path and not used.

    Examples
    --------
    >>> import torch
    >>> clap_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    tensor([[100.,   0.]])
    """
    unit = torch.nn.functional.normalize(prototypes, dim=1)
    return zero_shot_logits(queries, unit, logit_scale, logit_bias)


def clap_train(
    pool: np.ndarray,
    pool_y: np.ndarray,
    text_weights: np.ndarray,
    n_batches: int,
    *,
    epochs: int,
    lr: float,
    warmup_lr: float,
    momentum: float,
    batch_size: int,
    random_state: Any,
    device: torch.device,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Train the prototypes as the authors' loop does, in float32.

    Each epoch shuffles the whole ``pool`` (``random_state.rand(n).argsort()``, as
    their ``np.random`` shuffle) and takes ``n_batches`` batches of ``batch_size`` from
    its start; SGD with ``momentum``, no weight decay, the learning rate of
    :func:`clap_learning_rate` for the epoch.

    Parameters
    ----------
    pool : ndarray of shape (n_pool, d)
        L2-normalized training features (all augmented views pooled).
    pool_y : ndarray of int of shape (n_pool,)
    text_weights : ndarray of shape (n_classes, d)
        ``t``: the initial prototypes and the anchor of the penalty (its zero-shot
        logits, which give the multipliers, use it normalized).
    n_batches : int
        Batches per epoch (the authors': their image loader's, ``max(1, n_images //
        batch_size)``).

    Returns
    -------
    prototypes : ndarray of shape (n_classes, d)
        The trained ``w``, in float32.
    multipliers : ndarray of shape (n_classes,)
        The penalty weights ``lambda_k``.
    loss_curve : list of float
        Mean training loss per epoch.
    """
    rng = check_random_state(random_state)
    feats = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.asarray(pool_y, dtype=np.int64)).to(device)
    anchor = torch.from_numpy(np.asarray(text_weights, dtype=np.float32)).to(device)
    with torch.no_grad():
        zero_shot = clap_logits(feats, anchor, None, logit_scale, logit_bias)
        lambdas = clap_multipliers(zero_shot.cpu(), labels.cpu(), len(anchor)).to(device)
    prototypes = torch.nn.Parameter(anchor.clone())
    optimizer = torch.optim.SGD([prototypes], lr=warmup_lr, momentum=momentum)
    loss_curve = []
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = clap_learning_rate(epoch, epochs, lr, warmup_lr)
        order = torch.from_numpy(rng.rand(len(feats)).argsort()).to(device)
        losses = []
        for b in range(n_batches):
            rows = order[b * batch_size : (b + 1) * batch_size]
            logits = clap_logits(feats[rows], prototypes, None, logit_scale, logit_bias)
            penalty = (lambdas * (prototypes - anchor).pow(2).sum(dim=1)).mean()
            loss = torch.nn.functional.cross_entropy(logits, labels[rows]) + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        loss_curve.append(float(np.mean(losses)))
    return prototypes.detach().cpu().numpy(), lambdas.cpu().numpy(), loss_curve


class CLAPClassifier(TextHead):
    """CLAP: a linear probe initialised at the text weights and kept close to them.

    The class prototypes ``w_k`` start at the text embeddings ``t_k`` of the class
    names, where they give zero-shot CLIP, and are trained by SGD on the cross-entropy
    of ``s * f @ normalize(w).T`` plus a penalty that keeps each prototype near its
    text embedding::

        loss = cross_entropy + mean_k lambda_k * ||w_k - t_k||^2

    The weight ``lambda_k`` of class ``k`` is fixed before training: how well zero-shot
    CLIP already does on that class (the mean zero-shot probability of the true class
    over its training samples), so classes that zero-shot CLIP knows stay close to their
    text, and the others move. This is CLAP (Silva-Rodriguez et al., CVPR 2024), which
    needs **no validation set** and no hyperparameter search: the defaults are the
    authors' for every data set and number of shots.

    Parameters
    ----------
    epochs : int, default=300
        Training epochs (the authors': 300).
    lr : float, default=0.1
        Peak learning rate of the cosine schedule. Epoch 0 runs at ``warmup_lr``; epoch
        ``e >= 1`` at ``lr (1 + cos(pi (e - 1) / epochs)) / 2`` (the authors' Dassl
        schedule).
    warmup_lr : float, default=1e-5
        Learning rate of the first epoch.
    momentum : float, default=0.9
        SGD momentum (no weight decay), as the authors.
    batch_size : int, default=256
        Samples per step. Each epoch shuffles all the training samples (all views
        pooled) and takes ``max(1, n_samples // batch_size)`` batches from the start,
        ``n_samples`` counting images, not views: the authors' loop, whose number of
        batches is that of their loader over the images while the batches are drawn from
        the pooled views.
    train_views : int, default=0
        If ``E > 0``, ``X = [features | view_1 | ... | view_E]`` (the output of
        ``CLIPFeaturizer(train_views=E).fit_transform``), and training uses the ``E *
        n_samples`` views, pooled as samples, and not the first block: the authors train
        on 20 augmented views of each image (``train_views=20``). With ``E = 0``
        training uses ``X`` itself.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling; the prototypes are deterministic given it (on a CPU).
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    coef_ : ndarray of shape (n_classes, n_features)
        The trained prototypes ``w`` (not normalized; prediction normalizes them).
    multipliers_ : ndarray of shape (n_classes,)
        The penalty weights ``lambda_k``.
    loss_curve_ : list of float
        Mean training loss per epoch.
    anchor_ : ndarray of shape (n_classes, n_features)
        ``t``: the initial prototypes and the anchor of the penalty; ``text_features_``,
        or the class means without text weights.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        The text weights (unit rows); ``None`` without a text head.
    logit_scale_, logit_bias_ : float or None
        Zero-shot scale ``s`` and bias ``b`` (CLIP: 100 and 0; ``None`` without a text
        head, where ``s = 100`` and ``b = 0`` are used).

    See Also
    --------
    LinearProbePPClassifier : A linear probe blended with the text weights.
    sklearn.linear_model.LogisticRegression : The linear probe without text weights.

    Notes
    -----
    **Where this differs from the authors' code.** Their ``t_k`` is the mean of the
    *raw* (not normalized) text embeddings of the prompts, so its norm is that of CLIP's
    text embeddings, and both the initial prototypes and the penalty use it; skclip's
    text weights have unit rows (the normalized mean of the normalized prompt
    embeddings, as every head here). The logits are the same at initialisation, but the
    penalty is on another scale: the cross-entropy's gradient scales as ``1 / |t|`` and
    the penalty's as ``|t|``, so with their raw weights the penalty weighs more.
    Pass ``text_features`` to use other weights (they are normalized too). The bias
    ``b`` of a SigLIP-family model is the same for every class and changes neither the
    loss nor the multipliers. They train in the float32 of their ``fp16`` setting
    (their model is cast to float32). With ``train_views=0`` there is no augmentation;
    their 20 views are ``CLIPFeaturizer(train_views=20)``. They report the last epoch,
    without a validation set, as here.

    **Rounding.** At these settings (learning rate 0.1 against CLIP's scale of 100) the
    training amplifies rounding: on a small task, moving every input by one float32
    unit in the last place changes the authors' own final prototypes by about 5% after
    300 epochs (their predictions hardly). A fit is deterministic on one machine; on
    other hardware or libraries expect the same accuracy, not the same bits.

    Without text weights (``clip_model=None`` and no ``text_features``, e.g. for an
    image-only backbone) the anchor ``t`` is the class means of the training features
    (views pooled), not a text classifier: skclip's extension, not the authors' method.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import CLAPClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> W = np.eye(8)[:2] + 0.5  # text weights, one row per class
    >>> clf = CLAPClassifier(text_features=W, epochs=20, random_state=0).fit(X, y)
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    >>> clf.coef_.shape, len(clf.loss_curve_)
    ((2, 8), 20)
    """

    _parameter_constraints: dict = {
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "warmup_lr": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "train_views": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        epochs: int = 300,
        lr: float = 0.1,
        warmup_lr: float = 1e-5,
        momentum: float = 0.9,
        batch_size: int = 256,
        train_views: int = 0,
        random_state: int | np.random.RandomState | None = None,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.epochs = epochs
        self.lr = lr
        self.warmup_lr = warmup_lr
        self.momentum = momentum
        self.batch_size = batch_size
        self.train_views = train_views
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> CLAPClassifier:
        """Train the prototypes from the text weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, (1 + train_views) * n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : CLAPClassifier
        """
        self._validate_params()
        X, y_enc, views = self._prepare_views(X, y, self.train_views)
        pool, pool_y = pooled_views(X, y_enc, views)  # view-major: the authors' order
        anchor = self.text_features_
        if anchor is None:  # no text head: the class means of the training features
            anchor = class_means(pool, pool_y, len(self.classes_))
        self.anchor_ = anchor
        coef, multipliers, curve = clap_train(
            pool,
            pool_y,
            anchor,
            max(1, len(X) // self.batch_size),
            epochs=self.epochs,
            lr=self.lr,
            warmup_lr=self.warmup_lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            random_state=self.random_state,
            device=resolve_device(self.device),
            **self._zero_shot_params(),
        )
        self.coef_, self.multipliers_, self.loss_curve_ = coef.astype(X.dtype), multipliers, curve
        return self

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        coef = torch.from_numpy(self.coef_).to(device)
        return clap_logits, (coef,), {}, self.coef_.dtype, 2 * len(self.classes_)
