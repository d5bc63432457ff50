"""One base for every text head: the shared parameters, input checks and prediction.

Every head (:class:`~skclip.TipAdapterClassifier`, :class:`~skclip.TipAdapterClassifierCV`,
:class:`~skclip.GDAClassifier`, :class:`~skclip.APEClassifier`) is zero-shot CLIP plus a
term of its own. :class:`TextHead` holds what they share, written once:

- the five text-head parameters (``clip_model``, ``templates``, ``class_names``,
  ``text_features``, ``device``): their defaults and storage (:meth:`TextHead.__init__`),
  their constraints (:data:`TEXT_HEAD_CONSTRAINTS`) and their documentation
  (:data:`TEXT_HEAD_DOC`, put in place of the line ``<text-head parameters>`` of each
  head's docstring);
- the input check (:meth:`TextHead._prepare`): features, labels, the text weights and
  the zero-shot scale and bias;
- prediction, chunk by chunk within ``working_memory`` (:meth:`TextHead._logit_chunks`),
  from one closure (:meth:`TextHead._head`) around the head's formula, which adds the
  zero-shot term (:func:`skclip.heads._formula.with_zero_shot`).

A head writes its own parameters in ``__init__(self, *, ..., **text_head)`` and passes
``text_head`` on; the signature that scikit-learn reads (``get_params``, ``clone``,
``repr``) is its own parameters followed by the five.
"""

from __future__ import annotations

import inspect
import os
import warnings
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

from .._compat import StrOptions
from ..backbones.families import Backbone
from ..backbones.loading import DEFAULT_MODEL, checkpoint_identity, load_backbone, resolve_device
from ..text import clean_class_name, resolve_templates, shared_text_weights, text_weights
from ._formula import CLIP_LOGIT_SCALE

#: The constraints of the five text-head parameters, merged into every head's.
TEXT_HEAD_CONSTRAINTS: dict = {
    "clip_model": [str, os.PathLike, None],
    "templates": [StrOptions({"auto", "simple"}), list, tuple],
    "class_names": [dict, list, tuple, None],
    "text_features": ["array-like", None],
    "device": [str, torch.device],
}

#: Their documentation, in place of the line ``<text-head parameters>`` of a head's
#: docstring (indented as a class docstring's Parameters).
TEXT_HEAD_DOC = """\
    clip_model : str, path-like or None, default="openai/clip-vit-base-patch32"
        Checkpoint (CLIP, MetaCLIP 2, SigLIP or SigLIP 2) whose *text* tower encodes
        the class names into ``W`` and whose zero-shot scale and bias are used. Use the
        same checkpoint as the featurizer. ``None`` (with ``text_features=None``) gives
        the head's own term alone, with no zero-shot term: what an image-only backbone
        (DINOv2...) needs; naming one here raises a ``ValueError``.
    templates : "auto", "simple" or list of str, default="auto"
        Prompt templates with one ``{}`` for the class name. ``"auto"`` is the 7-prompt
        ImageNet ensemble of the CLIP paper; ``"simple"`` is ``"a photo of a {}."``.
    class_names : dict, list of str or None, default=None
        Names to put into the prompts: a dict mapping each label to a name, or a list in
        ``classes_`` order. By default ``str(label)`` with ``_`` and ``-`` as spaces.
    text_features : array-like of shape (n_classes, n_features), default=None
        Ready text weights (rows in ``classes_`` order); skips text encoding and
        loads no model. The zero-shot term then uses CLIP's ``s = 100``, ``b = 0``.
    device : str, default="auto"
        Where the text tower (and Tip-Adapter-F's training) runs: ``"auto"`` (CUDA if
        available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``. Prediction runs on
        the GPU when this is CUDA (in chunks, as on the CPU), otherwise on the CPU.
"""

_DOC_MARK = "    <text-head parameters>\n"


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
    """Feature rows of all zeros were given to a head: they carry no information.

    Examples
    --------
    >>> import warnings
    >>> from skclip import ZeroFeaturesWarning
    >>> issubclass(ZeroFeaturesWarning, UserWarning)
    True
    """


def _unit_rows(X: np.ndarray, offset: int = 0) -> np.ndarray:
    """``X`` with every row scaled to unit L2 norm, for any finite magnitude.

    ``sklearn.preprocessing.normalize`` squares the values: features of magnitude 1e20
    overflow in float32 (the norm is infinite and every row becomes 0), and tiny ones
    underflow. Rows whose largest absolute value is outside the range where squaring is
    exact enough are divided by it first; other rows are normalized exactly as
    ``normalize`` does. A row of zeros has no direction: it stays zero, and a
    :class:`ZeroFeaturesWarning` names it (its position plus ``offset``), in every head,
    at fit and predict alike (prediction gives it even scores in every head, instead of
    an answer from a head's intercept or class counts alone). Not an error:
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
        warnings.warn(
            ZeroFeaturesWarning(
                f"Found {zero.size} feature row(s) of all zeros (row {int(zero[0]) + offset}"
                f"{', ...' if zero.size > 1 else ''}): a zero vector has no direction, so it "
                "cannot be L2-normalized and carries no information; its prediction is "
                "uninformative. Remove those rows (e.g. images that failed to encode)."
            ),
            stacklevel=3,
        )
    extreme = (peak > np.sqrt(info.max / max(1, X.shape[1]))) | (
        (peak < np.sqrt(info.tiny)) & (peak > 0)
    )
    if extreme.any():
        X = X.copy()
        X[extreme] /= peak[extreme, None]
    return normalize(X)


def pooled_views(
    X: np.ndarray, y_enc: np.ndarray, views: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The training samples of a head that trains on augmented views: ``X`` and its labels
    when there are no views, else the views alone, pooled view by view (view-major: all
    images of view 0, then of view 1...), with their labels.

    Examples
    --------
    >>> import numpy as np
    >>> views = np.arange(12.0).reshape(2, 3, 2)  # 2 views of 3 images in 2 dimensions
    >>> pool, pool_y = pooled_views(np.zeros((3, 2)), np.array([0, 1, 1]), views)
    >>> pool.shape, pool_y.tolist()
    ((6, 2), [0, 1, 1, 0, 1, 1])
    """
    if views is None:
        return X, y_enc
    return views.reshape(-1, views.shape[-1]), np.tile(y_enc, len(views))


#: Temporaries of a prediction chunk may take this much even when it is more than half
#: of a small output (many tiny chunks would be slow for nothing).
_SMALL_CHUNK_BYTES = 16 * 2**20


class _Head(NamedTuple):
    """How a fitted head predicts: ``logits`` of a chunk of L2-normalized queries (a
    Tensor of ``dtype``), and the floats of temporary memory it needs per query."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    dtype: np.dtype
    row_floats: int


class TextHead(ClassifierMixin, BaseEstimator):
    """What every text head shares: the text-head parameters, the input check, the
    text weights and chunked prediction.

    A subclass implements ``fit`` (calling :meth:`_prepare` or :meth:`_prepare_views`)
    and :meth:`_head_parts`, its formula and fitted arrays.
    """

    feature_names_in_: np.ndarray  # set by validate_data when X has column names

    def __init__(
        self,
        *,
        clip_model: str | os.PathLike | None = DEFAULT_MODEL,
        templates: str | list[str] = "auto",
        class_names: dict | list[str] | None = None,
        text_features: Any = None,
        device: str | torch.device = "auto",
    ) -> None:
        self.clip_model = clip_model
        self.templates = templates
        self.class_names = class_names
        self.text_features = text_features
        self.device = device

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("_parameter_constraints")
        if own is not None:
            cls._parameter_constraints = {**own, **TEXT_HEAD_CONSTRAINTS}
        if cls.__doc__ and _DOC_MARK in cls.__doc__:
            cls.__doc__ = cls.__doc__.replace(_DOC_MARK, TEXT_HEAD_DOC)
        init = cls.__dict__.get("__init__")
        if init is not None:
            init.__signature__ = _with_text_head(init)

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
        self.model_fingerprint_: str | None = None  # set by _text_head with the class names
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
            dim = checkpoint_identity(self.clip_model, self.device, "auto").embedding_dim
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
        clip = checkpoint_identity(self.clip_model, self.device, "auto")
        shared = shared_text_weights(clip, names, templates)  # computed before: no model
        if shared is None:
            clip = load_backbone(self.clip_model, self.device, "auto")
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
        if shared is None:
            assert isinstance(clip, Backbone)  # loaded above
            shared = text_weights(clip, names, templates)
        assert clip.logit_scale is not None and clip.logit_bias is not None  # a text tower
        return shared.astype(dtype), clip.logit_scale, clip.logit_bias

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

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        """The head's formula ``f(queries, *arrays, text_weights=W, **params)`` (which adds
        the zero-shot term), its fitted arrays (on ``device``) and parameters, the dtype
        of its logits and the floats of temporary memory it needs per query."""
        raise NotImplementedError

    def _head(self, text_weights: torch.Tensor | None, device: torch.device) -> _Head:
        """The fitted head on ``device``, given the text weights (already there)."""
        formula, arrays, params, dtype, row_floats = self._head_parts(device)
        zero_shot = self._zero_shot_params()

        def logits(queries: torch.Tensor) -> torch.Tensor:
            return formula(queries, *arrays, text_weights=text_weights, **params, **zero_shot)

        return _Head(logits, dtype, row_floats)

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
                    logits[~queries.any(axis=1)] = 0.0  # no direction: even scores
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


def _with_text_head(init: Callable) -> inspect.Signature:
    """The signature scikit-learn reads for a head's ``__init__(self, *, ..., **text_head)``:
    its own parameters, then the five text-head parameters of :meth:`TextHead.__init__`."""
    own = inspect.signature(init).parameters.values()
    text = list(inspect.signature(TextHead.__init__).parameters.values())[1:]
    kept = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in kept}
    return inspect.Signature(kept + [p for p in text if p.name not in names])
