"""Tip-Adapter: a training-free cache model on top of zero-shot CLIP.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022 (arXiv:2207.09519). For L2-normalized query features
``f``, cache keys ``K`` (the training features), one-hot cache values ``V`` and
text weights ``W`` (the text embeddings of the class names)::

    logits = s * f @ W.T + b + alpha * exp(-beta * (1 - f @ K.T)) @ V

with the text model's zero-shot scale ``s`` and bias ``b``: 100 and 0 for CLIP (the
paper's formula) and MetaCLIP 2, the learned ones for SigLIP and SigLIP 2.

The formula lives in :func:`tip_adapter_logits` only (module ``skclip._formula``,
re-exported here); the classifier's ``decision_function`` and the Tip-Adapter-F
training loss (``skclip._finetune.fine_tune_keys``) both call it.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import normalize
from sklearn.utils import gen_batches
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._compat import Interval, StrOptions
from ._finetune import fine_tune_keys
from ._formula import (  # noqa: F401  (re-exported: the formula's public home)
    CLIP_LOGIT_SCALE,
    cache_logits,
    tip_adapter_grid,
    tip_adapter_logits,
    zero_shot_logits,
)
from ._models import DEFAULT_MODEL, load_clip, resolve_device
from .text import clean_class_name, resolve_templates, text_weights


def _prediction_device(device: str | torch.device) -> torch.device:
    """Where prediction runs: the GPU when ``device`` resolves to CUDA, else the CPU
    (memory-bound work, where MPS gains little and float64 is unsupported)."""
    resolved = resolve_device(device)
    return resolved if resolved.type == "cuda" else torch.device("cpu")


def _views_hint(n_features: int, dim: int) -> str:
    """For an X as wide as (1 + E) text dimensions: the likely cause, featurizer views."""
    if n_features <= dim or n_features % dim:
        return ""
    e = n_features // dim - 1
    return (
        f" X is {e + 1} blocks of {dim}: if it comes from CLIPFeaturizer(train_views={e})"
        f".fit_transform, set train_views={e} on the classifier too."
    )


class ZeroFeaturesWarning(UserWarning):
    """Feature rows of all zeros were given to a head: they carry no information."""


def _unit_rows(X: np.ndarray, offset: int = 0) -> np.ndarray:
    """``X`` with every row scaled to unit L2 norm, for any finite magnitude.

    ``sklearn.preprocessing.normalize`` squares the values: features of magnitude 1e20
    overflow in float32 (the norm is infinite and every row becomes 0), and tiny ones
    underflow. Rows whose largest absolute value is outside the range where squaring is
    exact enough are divided by it first; other rows are normalized exactly as
    ``normalize`` does. A row of zeros has no direction: it stays zero, and a
    :class:`ZeroFeaturesWarning` names it (its position plus ``offset``), in every head,
    at fit and predict alike (GDA gives it even scores, as the cache heads do, instead
    of a confident answer from its intercept alone). Not an error:
    scikit-learn's estimator checks fit small integer matrices that hold zero rows.

    Examples
    --------
    >>> import numpy as np
    >>> _unit_rows(np.array([[3e20, 4e20], [3.0, 4.0]], dtype=np.float32))
    array([[0.6, 0.8],
           [0.6, 0.8]], dtype=float32)
    """
    info = np.finfo(X.dtype)
    peak = np.abs(X).max(axis=1)
    zero = np.flatnonzero(peak == 0)
    if zero.size:
        warnings.warn(ZeroFeaturesWarning(
            f"Found {zero.size} feature row(s) of all zeros (row {int(zero[0]) + offset}"
            f"{', ...' if zero.size > 1 else ''}): a zero vector has no direction, so it cannot "
            "be L2-normalized and carries no information; its prediction is uninformative. "
            "Remove those rows (e.g. images that failed to encode)."
        ), stacklevel=3)
    extreme = (peak > np.sqrt(info.max / max(1, X.shape[1]))) | (
        (peak < np.sqrt(info.tiny)) & (peak > 0)
    )
    if extreme.any():
        X = X.copy()
        X[extreme] /= peak[extreme, None]
    return normalize(X)


#: Temporaries of a prediction chunk may take this much even when it is more than half
#: of a small output (many tiny chunks would be slow for nothing).
_SMALL_CHUNK_BYTES = 16 * 2**20


class _Head(NamedTuple):
    """How a fitted head predicts: ``logits`` of a chunk of L2-normalized queries (a
    Tensor of ``dtype``), and the floats of temporary memory it needs per query."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    dtype: np.dtype
    row_floats: int


class _BaseTipAdapter(ClassifierMixin, BaseEstimator):
    """What the heads share: input checks, the text head and prediction.

    Subclasses implement ``fit``, and either ``_prediction_params`` (the Tip-Adapter
    cache, as TipAdapterClassifier and TipAdapterClassifierCV) or ``_head`` (another
    formula, as GDAClassifier and APEClassifier).
    """

    def _prediction_params(self) -> tuple[float, float]:
        """The (alpha, beta) used to predict."""
        raise NotImplementedError

    def _prepare(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validate; set ``classes_``, ``n_features_in_``, ``text_features_``,
        ``logit_scale_`` and ``logit_bias_``.

        Returns the L2-normalized features and the encoded labels.
        """
        X, y_enc, _ = self._prepare_views(X, y, 0)
        return X, y_enc

    def _prepare_views(
        self, X: Any, y: Any, n_views: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`_prepare` for ``X = [features | n_views views]`` (the output of
        ``CLIPFeaturizer(train_views=n_views).fit_transform``): also returns the views,
        L2-normalized, of shape ``(n_views, n_samples, d)`` (None if ``n_views == 0``);
        ``n_features_in_`` is ``d``, the width of the features alone."""
        resolve_device(self.device)  # an unknown device or missing CUDA fails here, always
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        try:
            check_classification_targets(y)
            self.classes_, y_enc = np.unique(y, return_inverse=True)
        except TypeError as exc:  # e.g. strings and numbers together: they cannot be sorted
            kinds = sorted({type(v).__name__ for v in np.asarray(y, dtype=object).ravel()})
            raise ValueError(
                f"Mix of label input types {kinds}: labels must be all strings or all numbers "
                "(convert them, e.g. y = np.asarray(y).astype(str))."
            ) from exc
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes, but y has only "
                f"one class: {self.classes_.tolist()[0]!r}."
            )
        views = None
        if n_views:
            X, views = self._split_views(X, n_views)
        X = _unit_rows(X)
        self.model_fingerprint_ = None  # set by _text_head when it encodes the class names
        self.text_features_, self.logit_scale_, self.logit_bias_ = self._text_head(
            X.shape[1], X.dtype
        )
        return X, y_enc, views

    def _split_views(self, X: np.ndarray, n_views: int) -> tuple[np.ndarray, np.ndarray]:
        """The first block of ``X`` and its ``n_views`` view blocks (normalized), after
        checking the width against the text embeddings' when they are known."""
        width, blocks = X.shape[1], 1 + n_views
        how = (
            f"train_views={n_views} expects X = [features | {n_views} views], (1 + {n_views}) "
            "blocks of the embedding dimension (CLIPFeaturizer(train_views="
            f"{n_views}).fit_transform)"
        )
        if width % blocks:
            raise ValueError(
                f"{how}, but X has {width} columns, not a multiple of {blocks}: set train_views "
                "to the featurizer's."
            )
        d = width // blocks
        dim = None
        if self.text_features is not None:
            dim = np.shape(self.text_features)[-1]
        elif self.clip_model is not None:
            dim = load_clip(self.clip_model, self.device, "auto").embedding_dim
        if dim is not None and dim != d:
            raise ValueError(
                f"{how}, but X has {width} columns = {blocks} x {d} while the text embeddings "
                f"have dimension {dim}: set train_views to the featurizer's."
            )
        self.n_features_in_ = d
        if hasattr(self, "feature_names_in_"):
            self.feature_names_in_ = self.feature_names_in_[:d]
        views = _unit_rows(X[:, d:].reshape(-1, d)).reshape(X.shape[0], n_views, d)
        return X[:, :d], np.ascontiguousarray(views.transpose(1, 0, 2), dtype=X.dtype)

    def _zero_shot_params(self) -> dict:
        """The fitted zero-shot scale and bias, as keyword arguments of the formula."""
        if self.text_features_ is None:
            return {}
        return {"logit_scale": self.logit_scale_, "logit_bias": self.logit_bias_}

    def _text_head(
        self, n_features: int, dtype: np.dtype
    ) -> tuple[np.ndarray | None, float | None, float | None]:
        """Text weights ``W`` and the zero-shot scale and bias: those of ``clip_model``'s
        family, CLIP's (100, 0) for ready ``text_features``; all None without a text term."""
        n_classes = len(self.classes_)
        if self.text_features is not None:
            W = np.asarray(self.text_features, dtype=dtype)
            if W.ndim != 2 or W.shape[0] != n_classes:
                raise ValueError(
                    f"text_features must have shape (n_classes, n_features) = ({n_classes}, "
                    f"{n_features}) with rows in classes_ order; got shape {W.shape}."
                )
            if W.shape[1] != n_features:
                raise ValueError(
                    f"text_features have dimension {W.shape[1]} but X has {n_features} features."
                    + _views_hint(n_features, W.shape[1])
                )
            if not np.all(np.isfinite(W)):
                raise ValueError("text_features contain NaN or infinity.")
            return _unit_rows(W), CLIP_LOGIT_SCALE, 0.0
        if self.clip_model is None:
            return None, None, None
        templates = resolve_templates(self.templates)
        names = self._class_names()
        clip = load_clip(self.clip_model, self.device, "auto")
        clip.require_text()  # an image-only backbone has no text tower: say so, clearly
        if clip.embedding_dim != n_features:
            raise ValueError(
                f"X has {n_features} features but the text embeddings of clip_model="
                f"{os.fspath(self.clip_model)!r} have dimension {clip.embedding_dim}: the image "
                "features must come from the same CLIP checkpoint as clip_model (set "
                "CLIPFeaturizer(model=...) and TipAdapterClassifier(clip_model=...) alike)."
                + _views_hint(n_features, clip.embedding_dim)
            )
        self.model_fingerprint_ = clip.fingerprint
        W = text_weights(clip, names, templates).astype(dtype)
        return W, clip.logit_scale, clip.logit_bias

    def _class_names(self) -> list[str]:
        if self.class_names is None:
            return [clean_class_name(c) for c in self.classes_]
        if isinstance(self.class_names, dict):
            missing = [c for c in self.classes_.tolist() if c not in self.class_names]
            if missing:
                raise ValueError(
                    f"class_names has no name for the labels {missing}; give a name for each of "
                    f"{self.classes_.tolist()}."
                )
            return [str(self.class_names[c]) for c in self.classes_]
        names = list(self.class_names)
        if len(names) != len(self.classes_):
            raise ValueError(
                f"class_names has {len(names)} names but there are {len(self.classes_)} classes "
                f"{self.classes_.tolist()}; give one name per class in classes_ order, or a dict."
            )
        return [str(n) for n in names]

    # -- predict ---------------------------------------------------------------------------
    def _set_cache(self, keys: np.ndarray, y_enc: np.ndarray) -> None:
        """Store the cache: keys, one-hot ``cache_values_`` and, for prediction, the
        keys' integer classes ``_y`` (as ``KNeighborsClassifier`` keeps ``_y``)."""
        self.cache_keys_ = keys
        self.cache_values_ = np.eye(len(self.classes_), dtype=keys.dtype)[y_enc]
        self._y = np.ascontiguousarray(y_enc, dtype=np.intp)

    def _head(self, text_weights: torch.Tensor | None, device: torch.device) -> _Head:
        """The fitted head on ``device``, given the text weights (already there); by
        default the Tip-Adapter cache."""
        alpha, beta = self._prediction_params()
        keys = torch.from_numpy(self.cache_keys_).to(device)
        values = torch.from_numpy(self._y).to(device)  # one-hot values as class indices: fast
        n_classes, zero_shot = len(self.classes_), self._zero_shot_params()

        def logits(queries: torch.Tensor) -> torch.Tensor:
            return tip_adapter_logits(
                queries, keys, values, text_weights, alpha, beta, n_classes=n_classes, **zero_shot
            )

        # Two (chunk, n_keys) buffers live at a time: the affinities and a matmul temporary.
        return _Head(logits, self.cache_keys_.dtype, 2 * keys.shape[0])

    def _logit_chunks(
        self, X: Any, outputs_full: bool
    ) -> tuple[int, np.dtype, Iterator[tuple[slice, np.ndarray]]]:
        """``n_samples``, the logits' dtype and the logits of ``X``, chunk by chunk:
        ``(rows, logits[rows])``.

        A chunk's temporaries (the head's, its logits and their sums) stay within
        scikit-learn's ``working_memory``; when the caller returns an ``(n, n_classes)``
        array (``outputs_full``), also within half of that array (or 16 MiB, for small
        outputs), so that the peak memory is at most 1.5 times the output. Logits that
        are not finite (fitted arrays damaged, or parameters so large that they
        overflow) are an error."""
        check_is_fitted(self)
        device = _prediction_device(self.device)
        W = None if self.text_features_ is None else torch.from_numpy(self.text_features_)
        head = self._head(None if W is None else W.to(device), device)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        n, n_classes = X.shape[0], len(self.classes_)
        itemsize = np.dtype(head.dtype).itemsize
        # per query: the head's temporaries, its logits, the cache votes and their sum
        row_bytes = max(1, head.row_floats + 3 * n_classes) * itemsize
        budget = int(get_config()["working_memory"] * 2**20)
        if outputs_full:  # temporaries within half the output: peak <= 1.5 x output
            budget = min(budget, max(n * n_classes * itemsize // 4, _SMALL_CHUNK_BYTES))
        chunk = max(1, budget // row_bytes)

        def chunks() -> Iterator[tuple[slice, np.ndarray]]:
            with torch.no_grad():
                for rows in gen_batches(n, chunk):
                    queries = _unit_rows(X[rows], rows.start).astype(head.dtype, copy=False)
                    logits = head.logits(torch.from_numpy(queries).to(device)).cpu().numpy()
                    if not np.isfinite(logits).all():
                        raise ValueError(
                            f"{type(self).__name__} computed logits that are not finite (NaN "
                            "or infinity): its fitted arrays hold non-finite values (a damaged "
                            "model file?) or its parameters are so large that they overflow."
                        )
                    yield rows, logits

        return n, np.dtype(head.dtype), chunks()

    def decision_function(self, X: Any) -> np.ndarray:
        """The logits of the formula in the class description.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, the logit of ``classes_[1]`` minus that of ``classes_[0]``,
            following scikit-learn's convention.
        """
        n, dtype, chunks = self._logit_chunks(X, outputs_full=True)
        n_classes = len(self.classes_)
        out = np.empty((n,) if n_classes == 2 else (n, n_classes), dtype=dtype)
        for rows, logits in chunks:
            out[rows] = logits[:, 1] - logits[:, 0] if n_classes == 2 else logits
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: the softmax of the logits.

        Computed chunk by chunk into the output, in place: the peak memory is at most
        1.5 times the output's (for outputs over 32 MiB; smaller ones take up to 16 MiB
        more).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        n, dtype, chunks = self._logit_chunks(X, outputs_full=True)
        out = np.empty((n, len(self.classes_)), dtype=dtype)
        for rows, logits in chunks:
            block = out[rows]
            block[...] = logits
            del logits
            block -= block.max(axis=1, keepdims=True)  # softmax, as scipy's, in place
            np.exp(block, out=block)
            block /= block.sum(axis=1, keepdims=True)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Predict class labels.

        The logits are computed chunk by chunk and only their argmax is kept: memory
        does not grow with ``n_samples x n_classes``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        n, _, chunks = self._logit_chunks(X, outputs_full=False)
        best = np.empty(n, dtype=np.intp)
        for rows, logits in chunks:
            best[rows] = np.argmax(logits, axis=1)
        return self.classes_[best]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Seeded Tip-F and no atomic adds off the CPU (see _formula._votes_function).
        tags.non_deterministic = False
        return tags


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
    clip_model : str, path-like or None, default="openai/clip-vit-base-patch32"
        Checkpoint (CLIP, MetaCLIP 2, SigLIP or SigLIP 2) whose *text* tower encodes
        the class names into ``W`` and whose zero-shot scale and bias are used. Use the
        same checkpoint as the featurizer. ``None`` (with ``text_features=None``) gives a
        pure cache model over any features, with no zero-shot term: what an image-only
        backbone (DINOv2...) needs; naming one here raises a ``ValueError``.
    templates : "auto", "simple" or list of str, default="auto"
        Prompt templates with one ``{}`` for the class name. ``"auto"`` is the 7-prompt
        ImageNet ensemble of the CLIP paper; ``"simple"`` is ``"a photo of a {}."``.
    class_names : dict, list of str or None, default=None
        Names to put into the prompts: a dict mapping each label to a name, or a list in
        ``classes_`` order. By default ``str(label)`` with ``_`` and ``-`` as spaces.
    text_features : array-like of shape (n_classes, n_features), default=None
        Ready text weights (rows in ``classes_`` order); skips text encoding and
        loads no model. The zero-shot term then uses CLIP's ``s = 100``, ``b = 0``.
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
    device : str, default="auto"
        Where the text tower and fine-tuning run: ``"auto"`` (CUDA if available),
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``. Prediction runs on the GPU when
        this is CUDA (in chunks, as on the CPU), otherwise on the CPU.
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
        "clip_model": [str, os.PathLike, None],
        "templates": [StrOptions({"auto", "simple"}), list, tuple],
        "class_names": [dict, list, tuple, None],
        "text_features": ["array-like", None],
        "fine_tune": ["boolean"],
        "epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [
            Interval(Real, 0, 1, closed="neither"), StrOptions({"auto"}), None
        ],
        "leave_one_out": ["boolean"],
        "normalize_keys": ["boolean"],
        "train_dtype": [StrOptions({"float32", "float16"})],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "train_views": [Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 5.5,
        clip_model: str | os.PathLike | None = DEFAULT_MODEL,
        templates: str | list[str] = "auto",
        class_names: dict | list[str] | None = None,
        text_features: Any = None,
        fine_tune: bool = False,
        epochs: int | str = "auto",
        lr: float = 1e-3,
        batch_size: int = 256,
        validation_fraction: float | str | None = "auto",
        leave_one_out: bool = True,
        normalize_keys: bool = True,
        train_dtype: str = "float32",
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        train_views: int = 0,
        verbose: int = 0,
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.clip_model = clip_model
        self.templates = templates
        self.class_names = class_names
        self.text_features = text_features
        self.fine_tune = fine_tune
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.leave_one_out = leave_one_out
        self.normalize_keys = normalize_keys
        self.train_dtype = train_dtype
        self.device = device
        self.random_state = random_state
        self.train_views = train_views
        self.verbose = verbose

    # -- fit -------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> TipAdapterClassifier:
        """Build the cache model (and fine-tune its keys if ``fine_tune=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, (1 + train_views) * n_features)
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
                X, y_enc, n_classes, self.text_features_,
                alpha=self.alpha, beta=self.beta, epochs=self.epochs, lr=self.lr,
                batch_size=self.batch_size, validation_fraction=self.validation_fraction,
                leave_one_out=self.leave_one_out, normalize_keys=self.normalize_keys,
                train_dtype=self.train_dtype, device=self.device,
                random_state=self.random_state, verbose=self.verbose, views=views,
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
