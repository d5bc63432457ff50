"""Tip-Adapter: a training-free cache model on top of zero-shot CLIP.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022 (arXiv:2207.09519). For L2-normalized query features
``f``, cache keys ``K`` (the training features), one-hot cache values ``V`` and
text weights ``W`` (the text embeddings of the class names)::

    logits = s * f @ W.T + b + alpha * exp(-beta * (1 - f @ K.T)) @ V

with the text model's zero-shot scale ``s`` and bias ``b``: 100 and 0 for CLIP (the
paper's formula) and MetaCLIP 2, the learned ones for SigLIP and SigLIP 2.

The formula lives in :func:`tip_adapter_logits` only (module ``skclip.heads._formula``,
re-exported here); the classifier's ``decision_function`` and the Tip-Adapter-F
training loss (``skclip.heads._finetune.fine_tune_keys``) both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from ._compat import Interval, StrOptions
from .heads._finetune import fine_tune_keys
from .heads._formula import (  # noqa: F401  (re-exported: the formula's public home)
    CLIP_LOGIT_SCALE,
    cache_logits,
    tip_adapter_grid,
    tip_adapter_logits,
    zero_shot_logits,
)
from .heads._base import TextHead


class _BaseTipAdapter(TextHead):
    """The Tip-Adapter cache head of TipAdapterClassifier and TipAdapterClassifierCV;
    subclasses implement ``fit`` and ``_prediction_params``."""

    def _prediction_params(self) -> tuple[float, float]:
        """The (alpha, beta) used to predict."""
        raise NotImplementedError

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        alpha, beta = self._prediction_params()
        keys = torch.from_numpy(self.cache_keys_).to(device)
        values = torch.from_numpy(self._y).to(device)  # one-hot values as class indices: fast
        params = {"alpha": alpha, "beta": beta, "n_classes": len(self.classes_)}
        # Two (chunk, n_keys) buffers live at a time: the affinities and a matmul temporary.
        return tip_adapter_logits, (keys, values), params, self.cache_keys_.dtype, 2 * keys.shape[0]


class TipAdapterClassifier(_BaseTipAdapter):
    """Tip-Adapter few-shot classifier on CLIP image features.

    ``fit`` builds a cache model: keys are the L2-normalized training features,
    values their one-hot labels. A query ``f`` is scored by zero-shot CLIP plus a
    soft nearest-neighbour vote over the cache with an exponential kernel::

        logits = s * f @ W.T + b + alpha * exp(-beta * (1 - f @ K.T)) @ V

    ``W`` are the text embeddings of the class names, prompt-ensembled; ``s`` and ``b``
    are the text model's zero-shot logit scale and bias: ``s = 100``, ``b = 0`` for
    CLIP (the paper's formula) and MetaCLIP 2, the learned ``exp(logit_scale)`` and
    ``logit_bias`` for SigLIP and SigLIP 2 (so ``alpha=0`` gives exactly the model's
    own ``logits_per_image``). ``b`` is the same for every class: it changes neither
    predictions nor probabilities. Nothing is trained unless ``fine_tune=True``
    (Tip-Adapter-F), which trains the keys with cross-entropy (by default for at
    least 300 optimizer steps).

    Parameters
    ----------
    alpha : float, default=1.0
        Residual ratio: weight of the cache term against zero-shot CLIP. ``alpha=0``
        is exactly zero-shot CLIP. ``alpha`` is measured against the zero-shot scale
        ``s``: what matters is ``alpha / s``, so the same alpha weighs the cache alike
        for models whose ``s`` is alike (CLIP's 100; SigLIP's is learned, see
        ``logit_scale_``). The default and ``beta``'s follow the paper's
        ImageNet ablation (Tables 5-6 of arXiv:2207.09519: alpha=1.0, beta=5.5 were
        best for training-free Tip-Adapter). The reference code's per-dataset configs
        instead start from alpha 1.17, beta 1 and *search*; for your own data, tune both
        with ``GridSearchCV`` on training data only.
    beta : float, default=5.5
        Sharpness of the affinity kernel ``exp(-beta (1 - cos))``; larger values let only
        the closest keys vote.
    fine_tune : bool, default=False
        Train the cache keys (Tip-Adapter-F): AdamW (``eps=1e-4``), cosine learning-rate
        schedule, cross-entropy on the Tip-Adapter logits at the current ``alpha`` and
        ``beta``. The defaults below are chosen on ``benchmarks/bench_tip_f.py`` (see
        "When does fine-tuning help?" in the user guide).
    epochs : int or "auto", default="auto"
        Fine-tuning epochs. ``"auto"`` is the reference's 20 epochs, or more to make at
        least 300 optimizer *steps*: an epoch of up to ``batch_size`` samples is a
        single step, so 20 epochs would barely train a small data set.
    lr : float, default=1e-3
        Fine-tuning learning rate (AdamW with ``eps=1e-4``), the paper's.
    batch_size : int, default=256
        Fine-tuning mini-batch size.
    validation_fraction : float, "auto" or None, default="auto"
        If a float, fine-tuning holds out this stratified fraction of the training data,
        scores it after every epoch and keeps the keys of the first best epoch; the
        held-out samples are not in the cache. ``"auto"`` holds out 0.1 when every class
        has at least 20 samples, else nothing. If ``None``, the last epoch's keys are
        kept. The test set is never used to pick an epoch.
    leave_one_out : bool, default=True
        While fine-tuning, drop each training sample's affinity with its *own* key. The
        keys are the training samples, so that affinity is 1 and would let every
        sample vote for its own label: the loss would be trivially low and the keys
        would barely move. A sample alone in its class then has no key to vote for it
        and is not used as a query (at one shot nothing is trained: a warning says so).
        Set ``False`` only to reproduce the reference code.
    normalize_keys : bool, default=True
        Keep the keys L2-normalized while fine-tuning (the loss sees ``K / |K|``, and
        the stored keys are normalized), so affinities stay cosines. Without it keys
        can grow along the direction all CLIP features share and vote for their class
        everywhere: long training then falls below training-free Tip-Adapter. The
        reference code does not normalize (``False``).
    train_dtype : {"float32", "float16"}, default="float32"
        Precision of the keys, their gradients and AdamW's moments while fine-tuning.
        ``"float16"`` is the regime of the reference code's GPU runs, on any device:
        AdamW's second moment underflows to 0 for small gradients, so steps become
        about ``lr * m / eps`` and the keys move tens of times farther (see the user
        guide). The loss is computed in float32 either way.
    random_state : int, RandomState instance or None, default=None
        Seeds the fine-tuning shuffles and the validation split.
    train_views : int, default=0
        If ``E > 0``, ``fit`` expects ``X = [features | view_1 | ... | view_E]``, the
        output of ``CLIPFeaturizer(train_views=E).fit_transform``, of shape
        ``(n_samples, (1 + E) * d)``: the first block builds the cache (keys), and
        fine-tuning uses view ``e % E`` as the queries of epoch ``e``, as the
        reference trains on a fresh augmented view of each image every epoch. With
        ``fine_tune=False`` the views are ignored. ``n_features_in_`` is ``d``:
        ``predict`` takes ordinary ``(n, d)`` features. A width that is not ``1 + E``
        blocks of the text embeddings' dimension is an error naming both; a pure cache
        model (no text) can only check that the width is a multiple of ``1 + E``, so
        set ``E`` to the featurizer's ``train_views``.
    verbose : int, default=0
        Print the loss (and validation accuracy) per fine-tuning epoch if > 0.
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    cache_keys_ : ndarray of shape (n_keys, n_features)
        Cache keys: the normalized training features, or the fine-tuned keys.
    cache_values_ : ndarray of shape (n_keys, n_classes)
        One-hot labels of the keys.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        Text weights ``W``; ``None`` for a pure cache model.
    logit_scale_, logit_bias_ : float or None
        Zero-shot scale ``s`` and bias ``b`` of the formula (``None`` for a pure cache
        model).
    model_fingerprint_ : str or None
        Fingerprint of the ``clip_model`` checkpoint whose text tower made
        ``text_features_`` (``None`` when no text was encoded). Prediction never loads
        the model again; a ``CLIPFeaturizer`` in the same pipeline checks its own.
    loss_curve_ : list of float or None
        Mean training loss per fine-tuning epoch; ``None`` with ``fine_tune=False``
        (every fit resets it, as scikit-learn's ``MLPClassifier`` does for
        ``validation_scores_``).
    validation_scores_ : list of float or None
        Held-out accuracy per fine-tuning epoch; ``None`` without fine-tuning or
        without ``validation_fraction``.
    best_epoch_ : int or None
        1-based epoch whose keys were kept; 0 when there was nothing to train (one
        sample per class with ``leave_one_out=True``); ``None`` with ``fine_tune=False``.

    See Also
    --------
    CLIPFeaturizer : Produces the image features this classifier expects.

    Notes
    -----
    Features are L2-normalized inside ``fit`` and ``predict`` (idempotent for
    normalized input). Prediction is computed in chunks of queries bounded by
    scikit-learn's ``working_memory`` setting (see :func:`sklearn.config_context`).

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import TipAdapterClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> clf = TipAdapterClassifier(clip_model=None).fit(X, y)  # cache model only
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    >>> clf.predict_proba(X[:1]).shape
    (1, 2)
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "fine_tune": ["boolean"],
        "epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), StrOptions({"auto"}), None],
        "leave_one_out": ["boolean"],
        "normalize_keys": ["boolean"],
        "train_dtype": [StrOptions({"float32", "float16"})],
        "random_state": ["random_state"],
        "train_views": [Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 5.5,
        fine_tune: bool = False,
        epochs: int | str = "auto",
        lr: float = 1e-3,
        batch_size: int = 256,
        validation_fraction: float | str | None = "auto",
        leave_one_out: bool = True,
        normalize_keys: bool = True,
        train_dtype: str = "float32",
        random_state: int | np.random.RandomState | None = None,
        train_views: int = 0,
        verbose: int = 0,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.alpha = alpha
        self.beta = beta
        self.fine_tune = fine_tune
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.leave_one_out = leave_one_out
        self.normalize_keys = normalize_keys
        self.train_dtype = train_dtype
        self.random_state = random_state
        self.train_views = train_views
        self.verbose = verbose

    # -- fit -------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> TipAdapterClassifier:
        """Build the cache model (and fine-tune its keys if ``fine_tune=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, (1 + train_views) * n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside. With
            ``train_views=E``, followed by ``E`` blocks of view features.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : TipAdapterClassifier
        """
        self._validate_params()  # also rejects NaN and infinite alpha, beta, lr
        X, y_enc, views = self._prepare_views(X, y, self.train_views)
        n_classes = len(self.classes_)
        self.loss_curve_ = self.validation_scores_ = self.best_epoch_ = None
        if self.fine_tune:
            result = fine_tune_keys(
                X,
                y_enc,
                n_classes,
                self.text_features_,
                alpha=self.alpha,
                beta=self.beta,
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.batch_size,
                validation_fraction=self.validation_fraction,
                leave_one_out=self.leave_one_out,
                normalize_keys=self.normalize_keys,
                train_dtype=self.train_dtype,
                device=self.device,
                random_state=self.random_state,
                verbose=self.verbose,
                views=views,
                **self._zero_shot_params(),
            )
            X, y_enc = result.keys, y_enc[result.kept]
            self.loss_curve_ = result.loss_curve
            self.validation_scores_ = result.validation_scores
            self.best_epoch_ = result.best_epoch
        self._set_cache(X, y_enc)
        return self

    def _prediction_params(self) -> tuple[float, float]:
        return self.alpha, self.beta
