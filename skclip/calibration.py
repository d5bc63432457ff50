"""Calibrated probabilities: temperature scaling and the expected calibration error.

skclip's heads give the softmax of their logits, and those logits are large (CLIP's
zero-shot scale is 100): on few-shot data their probabilities are overconfident, often
exactly 1.0. :class:`TemperatureScaledClassifier` divides the logits by one number
``T`` fitted on held-out data (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017): the predictions stay exactly the wrapped classifier's, only the
probabilities change. :func:`expected_calibration_error` measures how far the
probabilities are from the observed accuracy.
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import check_cv
from sklearn.utils import _safe_indexing, column_or_1d, get_tags, indexable
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, validate_params

#: The temperature is searched in [1 / _T_RANGE, _T_RANGE] (in log space).
_T_RANGE = 1e4


def label_positions(y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list]:
    """The column of each label of ``y`` in ``labels`` (by position: ``labels`` need not be
    sorted), and the labels of ``y`` that ``labels`` lacks (each once; the caller names
    them in its error). Their columns are 0 until then.

    Examples
    --------
    >>> import numpy as np
    >>> label_positions(np.array(["b", "a", "z"]), np.array(["b", "a"]))
    (array([0, 1, 0]), ['z'])
    """
    position = {label: i for i, label in enumerate(np.asarray(labels).tolist())}
    values = y.tolist()
    unknown = list(dict.fromkeys(v for v in values if v not in position))
    return np.array([position.get(v, 0) for v in values], dtype=np.intp), unknown


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each top-label confidence among ``n_bins`` equal-width bins
    ``[0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]``: those of the ECE and the reliability
    diagram.

    Examples
    --------
    >>> import numpy as np
    >>> confidence_bins(np.array([0.0, 0.5, 0.51, 1.0]), 2)
    array([0, 0, 1, 1])
    """
    return np.clip(np.ceil(confidence * n_bins).astype(np.intp) - 1, 0, n_bins - 1)


def _logits(estimator: Any, X: Any) -> np.ndarray:
    """The logits of a fitted classifier, shape (n_samples, n_classes), float64.

    ``decision_function`` when it has one (a binary ``(n,)`` score ``d`` becomes the
    logits ``[0, d]``: the same softmax), else the log of ``predict_proba`` (zeros
    clipped to the smallest positive float, so that the log stays finite).
    """
    if hasattr(estimator, "decision_function"):
        scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
    else:
        proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
        scores = np.log(np.clip(proba, np.finfo(np.float64).tiny, None))
    if not np.isfinite(scores).all():
        raise ValueError(
            f"{type(estimator).__name__} returned scores that are not finite (NaN or "
            "infinity): no temperature can calibrate them."
        )
    return scores


def _nll(log_t: float, logits: np.ndarray, y_enc: np.ndarray) -> float:
    """Mean negative log-likelihood of ``softmax(logits / exp(log_t))``."""
    z = logits * np.exp(-log_t)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y_enc)), y_enc]))


def _fit_temperature(logits: np.ndarray, y_enc: np.ndarray) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of the labels.

    The likelihood is concave in ``1 / T``, so it has one optimum: a bounded scalar
    search on ``log T`` finds it. Two cases without a useful optimum are warned about:
    every held-out sample classified right (the likelihood grows as ``T -> 0``) and
    scores that do not depend on the class (``T`` runs to the top of the range).
    """
    bound = np.log(_T_RANGE)
    result = minimize_scalar(
        _nll,
        bounds=(-bound, bound),
        args=(logits, y_enc),
        method="bounded",
        options={"xatol": 1e-6},
    )
    if (np.argmax(logits, axis=1) == y_enc).all():
        problem = (
            "every held-out sample is classified right, so the likelihood keeps "
            "growing as T goes to 0: the probabilities will be near 0 and 1"
        )
    elif result.x > bound - 1e-3:
        problem = (
            f"T runs to the top of the range ({_T_RANGE:g}): the scores barely depend "
            "on the class, the probabilities will be nearly uniform"
        )
    else:
        return float(np.exp(result.x))
    warnings.warn(
        f"Temperature scaling has no useful optimum: {problem}. Hold out more (and more "
        "varied) samples.",
        UserWarning,
        stacklevel=3,
    )
    return float(np.exp(result.x))


class TemperatureScaledClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A classifier whose probabilities are ``softmax(logits / T)``, ``T`` fitted on
    held-out data.

    Temperature scaling (Guo et al., ICML 2017) keeps the wrapped classifier's
    predictions and the order of its scores; one parameter, ``T``, is chosen to
    minimise the negative log-likelihood of held-out labels. ``T > 1`` softens
    overconfident probabilities (skclip's heads usually need it: their logits carry
    CLIP's scale of 100). The logits are the estimator's ``decision_function`` (every
    skclip head has one), else the log of its ``predict_proba``.

    Held-out data, two ways:

    - a fitted estimator wrapped in :class:`sklearn.frozen.FrozenEstimator`: ``fit(X,
      y)`` uses all of ``X, y`` to fit ``T`` (and does not refit the estimator): give
      it images that were *not* used to train it, e.g. half of a calibration set;
    - any other estimator: ``fit(X, y)`` computes out-of-fold logits over the ``cv``
      splits of the training data (each sample's logits come from a clone that did not
      see it), fits ``T`` on them, then fits the estimator on all of ``X, y``. ``T`` is
      then fitted on models trained on less data than the final one; with few shots,
      prefer a frozen estimator and separate calibration images.

    Unlike ``CalibratedClassifierCV(method="temperature")`` (scikit-learn >= 1.8), it
    works with held-out data that lacks some classes (few-shot calibration sets), with
    any labels, on every scikit-learn version skclip supports, and keeps the
    estimator's own ``predict``.

    Parameters
    ----------
    estimator : classifier
        The classifier to calibrate, e.g. a skclip head, a
        ``Pipeline([CLIPFeaturizer, head])`` (then ``X`` is a numpy array of image paths)
        or ``FrozenEstimator(fitted_head)``.
    cv : int, cross-validation generator or iterable, default=5
        How to hold out training data when ``estimator`` is not a ``FrozenEstimator``
        (ignored for one): an int is the number of stratified folds; a splitter such as
        ``StratifiedShuffleSplit(n_splits=1, test_size=0.5)`` holds out its test parts
        (pooled, when they overlap). Every training part must contain every class.

    Attributes
    ----------
    estimator_ : classifier
        The estimator fitted on all of ``X, y`` (the frozen one itself).
    classes_ : ndarray of shape (n_classes,)
        The estimator's classes.
    temperature_ : float
        The fitted temperature ``T``.

    Notes
    -----
    It has no ``n_features_in_`` (see ``estimator_``'s): MAPIE probes an estimator that
    has one with a row of zeros, which an image pipeline cannot predict.

    See Also
    --------
    expected_calibration_error : How far probabilities are from the accuracy.
    skclip.conformal.MondrianConformalClassifier : Prediction sets with per-class coverage.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.frozen import FrozenEstimator
    >>> from skclip import GDAClassifier
    >>> from skclip.calibration import TemperatureScaledClassifier
    >>> rng = np.random.default_rng(0)
    >>> def draw(n):
    ...     y = np.repeat([0, 1, 2], n)
    ...     return np.eye(8)[y] + rng.normal(scale=0.6, size=(len(y), 8)), y
    >>> (X_train, y_train), (X_held, y_held) = draw(10), draw(30)
    >>> head = GDAClassifier(clip_model=None, alpha=10.0).fit(X_train, y_train)
    >>> scaled = TemperatureScaledClassifier(FrozenEstimator(head)).fit(X_held, y_held)
    >>> bool(scaled.temperature_ > 1)  # the head was overconfident
    True
    >>> X_new, _ = draw(2)
    >>> bool((scaled.predict(X_new) == head.predict(X_new)).all())
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"])],
        "cv": ["cv_object"],
    }

    def __init__(self, estimator: Any, *, cv: Any = 5) -> None:
        self.estimator = estimator
        self.cv = cv

    def fit(self, X: Any, y: Any) -> TemperatureScaledClassifier:
        """Fit the estimator (unless frozen) and the temperature.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of image paths
            Whatever the estimator takes. Lists of paths work too.
        y : array-like of shape (n_samples,)
            Labels.

        Returns
        -------
        self : TemperatureScaledClassifier
        """
        self._validate_params()
        if not (
            hasattr(self.estimator, "decision_function") or hasattr(self.estimator, "predict_proba")
        ):
            raise ValueError(
                f"{type(self.estimator).__name__} has neither decision_function nor "
                "predict_proba: there are no scores to calibrate."
            )
        X, y = indexable(X, y)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = np.asarray(self.estimator_.classes_)
        if isinstance(self.estimator, FrozenEstimator):
            logits, y_held = _logits(self.estimator_, X), y
        else:
            logits, y_held = self._out_of_fold_logits(X, y)
        self.temperature_ = _fit_temperature(logits, self._encode(y_held))
        return self

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Indices of ``y`` in ``classes_``; labels the estimator does not know are an error."""
        y_enc, unknown = label_positions(y, self.classes_)
        if unknown:
            raise ValueError(
                f"y has labels the estimator was not trained on: "
                f"[{', '.join(sorted(repr(v) for v in unknown))}]; its "
                f"classes are {self.classes_.tolist()}."
            )
        return y_enc

    def _out_of_fold_logits(self, X: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of each ``cv`` test part from a clone fitted on its training part."""
        cv = check_cv(self.cv, y, classifier=True)
        parts, labels = [], []
        for i, (train, test) in enumerate(cv.split(X, y)):
            fold = clone(self.estimator).fit(_safe_indexing(X, train), y[train])
            missing = np.setdiff1d(self.classes_, fold.classes_)
            if missing.size:
                raise ValueError(
                    f"The training part of cv split {i} has no sample of the classes "
                    f"{missing.tolist()}: use fewer folds (cv), or fit the estimator "
                    "yourself and pass FrozenEstimator(estimator) with held-out data."
                )
            parts.append(_logits(fold, _safe_indexing(X, test)))
            labels.append(y[test])
        return np.concatenate(parts), np.concatenate(labels)

    def decision_function(self, X: Any) -> np.ndarray:
        """The estimator's logits divided by ``T``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of image paths

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, the scaled logit of ``classes_[1]`` minus that of
            ``classes_[0]``, following scikit-learn's convention.
        """
        check_is_fitted(self)
        logits = _logits(self.estimator_, X) / self.temperature_
        return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of image paths

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        return softmax(_logits(self.estimator_, X) / self.temperature_, axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`, computed without underflow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of image paths

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        return log_softmax(_logits(self.estimator_, X) / self.temperature_, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The wrapped estimator's predictions, unchanged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of image paths

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = get_tags(self.estimator).input_tags.sparse
        return tags


@validate_params(
    {
        "y_true": ["array-like"],
        "y_prob": ["array-like"],
        "labels": ["array-like", None],
        "n_bins": [Interval(Integral, 1, None, closed="left")],
    },
    prefer_skip_nested_validation=True,
)
def expected_calibration_error(
    y_true: Any, y_prob: Any, *, labels: Any = None, n_bins: int = 15
) -> float:
    """Expected calibration error (ECE) of the top-label probabilities.

    Each sample's confidence is its largest probability; samples are grouped into
    ``n_bins`` equal-width confidence bins ``[0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]``,
    and the ECE is the average over bins, weighted by their share of samples, of
    ``|accuracy - mean confidence|`` (Naeini et al., AAAI 2015; Guo et al., ICML 2017).
    0 is perfectly calibrated; an overconfident classifier has a large ECE.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_prob : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in ``labels`` order.
    labels : array-like of shape (n_classes,), default=None
        The label of each column, e.g. ``classifier.classes_``. ``None`` means the
        sorted unique labels of ``y_true``, which must then be as many as the columns
        (pass ``labels`` when ``y_true`` lacks a class).
    n_bins : int, default=15
        Number of confidence bins.

    Returns
    -------
    ece : float

    Examples
    --------
    >>> from skclip.calibration import expected_calibration_error
    >>> y_prob = [[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]]
    >>> round(expected_calibration_error(["a", "b", "b", "b"], y_prob, labels=["a", "b"]), 3)
    0.3
    """
    y_true = column_or_1d(y_true)
    if len(y_true) == 0:
        raise ValueError("y_true is empty: the ECE of no samples is undefined.")
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2 or y_prob.shape[0] != len(y_true):
        raise ValueError(
            f"y_prob must have shape (n_samples, n_classes) = ({len(y_true)}, n_classes); "
            f"got shape {y_prob.shape}."
        )
    if not np.isfinite(y_prob).all() or (y_prob < 0).any() or (y_prob > 1).any():
        raise ValueError("y_prob must hold probabilities: finite values in [0, 1].")
    labels = np.unique(y_true) if labels is None else column_or_1d(labels)
    if len(labels) != y_prob.shape[1]:
        raise ValueError(
            f"y_prob has {y_prob.shape[1]} columns but there are {len(labels)} labels "
            f"{labels.tolist()}: pass labels=classifier.classes_ (one per column)."
        )
    y_enc, unknown = label_positions(y_true, labels)
    if unknown:
        raise ValueError(
            f"y_true has labels that are not in labels: {sorted({str(v) for v in unknown})}."
        )
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_enc
    bins = confidence_bins(confidence, n_bins)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y_true))
