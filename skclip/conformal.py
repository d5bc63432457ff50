"""Prediction sets with a per-class coverage guarantee (Mondrian conformal prediction).

MAPIE (``pip install skclip[conformal]``) gives split and cross conformal prediction
sets around any skclip classifier, with a *marginal* guarantee: the true label is in
the set for at least ``confidence_level`` of the images, on average over classes. A
rare, hard class can be covered much less. :class:`MondrianConformalClassifier` is
the small piece MAPIE 1.x lacks: the LAC score (one minus the probability of the true
class) with one threshold per class, so that *each* class is covered (Vovk et al.,
"Algorithmic Learning in a Random World", 2005, ch. 4: Mondrian conformal predictors;
Sadinle et al., JASA 2019: LAC). :func:`coverage_score` measures coverage, overall or
per class, for sets of either.
"""

from __future__ import annotations

import warnings
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils import column_or_1d
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, validate_params
from .calibration import label_positions


def _confidence_levels(confidence_level: Any) -> np.ndarray:
    """``confidence_level`` (a float or a list of floats) as a 1-d array in (0, 1)."""
    levels = np.atleast_1d(np.asarray(confidence_level, dtype=np.float64))
    if levels.ndim != 1 or levels.size == 0 or not ((levels > 0) & (levels < 1)).all():
        raise ValueError(
            "confidence_level must be a float in (0, 1) or a non-empty list of them; got "
            f"{confidence_level!r}."
        )
    return levels


def _class_quantiles(scores: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The conformal quantile of each confidence level: with ``n`` scores, the
    ``ceil((n + 1) * level)``-th smallest, or infinity when that rank exceeds ``n``
    (too few scores for the level: every set then holds the class)."""
    n = len(scores)
    ranks = np.ceil((n + 1) * levels - 1e-9).astype(np.intp)  # 1e-9: (n+1)*0.9 may be 9.000001
    ordered = np.sort(scores)
    return np.array([ordered[r - 1] if r <= n else np.inf for r in ranks])


class MondrianConformalClassifier(MetaEstimatorMixin, BaseEstimator):
    """Prediction sets covering every class: LAC scores, one threshold per class.

    The API follows MAPIE's ``SplitConformalClassifier`` (``conformalize``, then
    ``predict_set``), so either can be used where the other is. ``conformalize``
    computes, for the calibration images of each class ``k``, the scores ``1 -
    p_k(x)`` (``p`` from the estimator's ``predict_proba``); the threshold ``q_k`` is
    their ``ceil((n_k + 1) * confidence_level)``-th smallest. The set of an image ``x``
    holds every class ``k`` with ``1 - p_k(x) <= q_k``.

    **Guarantee.** If the calibration and test images of each class are exchangeable
    (drawn alike, e.g. in random order from the same line), the set holds the true class
    of a test image of class ``k`` with probability at least ``confidence_level``, for
    every ``k`` separately; at most ``confidence_level + 1 / (n_k + 1)``. With ``n_k <
    confidence_level / (1 - confidence_level)`` calibration images (9 at 0.9) no finite
    threshold exists: class ``k`` is then in every set (a warning names it). Sets may be
    empty (no class is plausible enough) or hold several classes.

    Parameters
    ----------
    estimator : classifier with predict_proba
        A skclip head, a ``Pipeline([CLIPFeaturizer, head])`` (``X`` is then a numpy
        array of image paths: MAPIE rejects lists), or a
        :class:`~skclip.calibration.TemperatureScaledClassifier`.
    confidence_level : float or list of float, default=0.9
        The coverage to guarantee for each class; a list gives one set per level.
    prefit : bool, default=True
        If True, ``estimator`` is already fitted and ``conformalize`` uses it as is;
        if False, call ``fit`` first (it fits a clone).

    Attributes
    ----------
    estimator_ : classifier
        The fitted estimator used to score.
    classes_ : ndarray of shape (n_classes,)
        The estimator's classes: the columns of the sets.
    n_calibration_ : ndarray of shape (n_classes,)
        Calibration images per class.
    quantiles_ : ndarray of shape (n_confidence_levels, n_classes)
        The threshold ``q_k`` of each level and class (``inf``: the class is always in
        the set).

    See Also
    --------
    coverage_score : Empirical coverage of prediction sets, overall or per class.
    skclip.calibration.TemperatureScaledClassifier : Calibrated probabilities first.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import GDAClassifier
    >>> from skclip.conformal import MondrianConformalClassifier, coverage_score
    >>> rng = np.random.default_rng(0)
    >>> def draw(n):
    ...     y = np.repeat(["ok", "scratch", "dent"], n)
    ...     X = np.eye(8)[np.searchsorted(["dent", "ok", "scratch"], y)]
    ...     return X + rng.normal(scale=0.5, size=X.shape), y
    >>> (X_train, y_train), (X_cal, y_cal), (X_test, y_test) = draw(8), draw(30), draw(200)
    >>> head = GDAClassifier(clip_model=None).fit(X_train, y_train)
    >>> mondrian = MondrianConformalClassifier(head, confidence_level=0.9)
    >>> y_pred, sets = mondrian.conformalize(X_cal, y_cal).predict_set(X_test)
    >>> sets.shape  # (n_samples, n_classes, n_confidence_levels)
    (600, 3, 1)
    >>> coverage = coverage_score(y_test, sets, labels=mondrian.classes_, by_class=True)
    >>> bool((coverage > 0.8).all())
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict_proba"])],
        "confidence_level": [Interval(Real, 0, 1, closed="neither"), list, tuple, np.ndarray],
        "prefit": ["boolean"],
    }

    def __init__(self, estimator: Any, *, confidence_level: Any = 0.9, prefit: bool = True):
        self.estimator = estimator
        self.confidence_level = confidence_level
        self.prefit = prefit

    def fit(self, X_train: Any, y_train: Any) -> MondrianConformalClassifier:
        """Fit a clone of the estimator (only with ``prefit=False``).

        Parameters
        ----------
        X_train : array-like of shape (n_samples, n_features), or a numpy array of paths
        y_train : array-like of shape (n_samples,)

        Returns
        -------
        self : MondrianConformalClassifier
        """
        self._validate_params()
        if self.prefit:
            raise ValueError(
                "prefit=True: the estimator is already fitted; call conformalize directly "
                "(or set prefit=False to fit it here)."
            )
        self.estimator_ = clone(self.estimator).fit(X_train, y_train)
        return self

    def conformalize(self, X_conformalize: Any, y_conformalize: Any) -> MondrianConformalClassifier:
        """Compute the per-class thresholds on calibration images not used for training.

        Parameters
        ----------
        X_conformalize : array-like of shape (n_samples, n_features), or a numpy array of paths
        y_conformalize : array-like of shape (n_samples,)

        Returns
        -------
        self : MondrianConformalClassifier
        """
        self._validate_params()
        levels = _confidence_levels(self.confidence_level)
        if self.prefit:
            check_is_fitted(self.estimator)
            self.estimator_ = self.estimator
        elif not hasattr(self, "estimator_"):
            raise ValueError("prefit=False: call fit(X_train, y_train) before conformalize.")
        self.classes_ = np.asarray(self.estimator_.classes_)
        y = column_or_1d(y_conformalize)
        y_enc = _encode(y, self.classes_, "y_conformalize")
        proba = np.asarray(self.estimator_.predict_proba(X_conformalize), dtype=np.float64)
        scores = 1.0 - proba[np.arange(len(y_enc)), y_enc]
        self.n_calibration_ = np.bincount(y_enc, minlength=len(self.classes_))
        self.quantiles_ = np.column_stack(
            [_class_quantiles(scores[y_enc == k], levels) for k in range(len(self.classes_))]
        )
        infinite = np.isinf(self.quantiles_)
        if infinite.any():
            warnings.warn(
                "Too few calibration images for confidence_level "
                f"{levels[infinite.any(axis=1)].tolist()} in the classes "
                f"{self.classes_[infinite.any(axis=0)].tolist()} (n_calibration_ "
                f"{self.n_calibration_[infinite.any(axis=0)].tolist()}): they are in every "
                "prediction set at that level. At level c, a class needs at least c / (1 - c) "
                "calibration images (9 at 0.9).",
                UserWarning,
                stacklevel=2,
            )
        return self

    def predict_set(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """The most probable class and the prediction set of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of paths

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The class of largest ``predict_proba`` (a skclip head's ``predict``).
        y_pred_set : ndarray of bool, shape (n_samples, n_classes, n_confidence_levels)
            ``y_pred_set[i, k, j]``: class ``classes_[k]`` is in the set of image ``i``
            at the ``j``-th confidence level (MAPIE's layout).
        """
        check_is_fitted(self, "quantiles_")
        proba = np.asarray(self.estimator_.predict_proba(X), dtype=np.float64)
        y_pred = self.classes_[np.argmax(proba, axis=1)]
        sets = (1.0 - proba)[:, :, None] <= self.quantiles_.T[None, :, :]
        return y_pred, sets

    def predict(self, X: Any) -> np.ndarray:
        """The estimator's predictions (the most probable class).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a numpy array of paths

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        return self.predict_set(X)[0]


def _encode(y: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Column index of each label of ``y`` in ``labels``; unknown labels are an error."""
    y_enc, unknown = label_positions(y, labels)
    if unknown:
        raise ValueError(
            f"{name} has labels that are not classes of the estimator: "
            f"{', '.join(sorted(repr(v) for v in unknown))}; "
            f"the classes are {np.asarray(labels).tolist()}."
        )
    return y_enc


@validate_params(
    {
        "y_true": ["array-like"],
        "y_pred_set": ["array-like"],
        "labels": ["array-like"],
        "by_class": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def coverage_score(
    y_true: Any, y_pred_set: Any, *, labels: Any, by_class: bool = False
) -> np.ndarray | float:
    """Share of samples whose prediction set holds their true label.

    Unlike ``mapie.metrics.classification.classification_coverage_score``, which takes
    ``y_true`` as column indices, labels of any kind are mapped to the columns through
    ``labels`` (a label that is not one of them is an error, not a wrong column).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred_set : array-like of bool, shape (n_samples, n_classes[, n_levels])
        Prediction sets, e.g. from MAPIE's or :class:`MondrianConformalClassifier`'s
        ``predict_set``.
    labels : array-like of shape (n_classes,)
        The label of each column: the classifier's ``classes_``.
    by_class : bool, default=False
        Return the coverage of each class (over its samples; NaN for a class without
        samples) instead of the overall coverage.

    Returns
    -------
    coverage : float or ndarray
        Overall: a float for 2-d sets, shape ``(n_levels,)`` for 3-d ones. By class: shape
        ``(n_classes,)`` or ``(n_classes, n_levels)``.

    Examples
    --------
    >>> from skclip.conformal import coverage_score
    >>> sets = [[True, False], [True, True], [True, False]]
    >>> coverage_score(["cat", "dog", "dog"], sets, labels=["cat", "dog"])
    0.6666666666666666
    >>> coverage_score(["cat", "dog", "dog"], sets, labels=["cat", "dog"], by_class=True)
    array([1. , 0.5])
    """
    y_true = column_or_1d(y_true)
    sets = np.asarray(y_pred_set)
    labels = column_or_1d(labels)
    if sets.ndim not in (2, 3) or sets.shape[:2] != (len(y_true), len(labels)):
        raise ValueError(
            f"y_pred_set must have shape (n_samples, n_classes[, n_levels]) = ({len(y_true)}, "
            f"{len(labels)}[, n_levels]); got shape {sets.shape}."
        )
    if sets.dtype != bool:
        raise ValueError(f"y_pred_set must be boolean; got dtype {sets.dtype}.")
    y_enc = _encode(y_true, labels, "y_true")
    hit = sets[np.arange(len(y_enc)), y_enc].astype(np.float64)  # (n,) or (n, n_levels)
    if not by_class:
        return float(hit.mean()) if hit.ndim == 1 else hit.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = [
            hit[y_enc == k].mean(axis=0) if (y_enc == k).any() else np.full(hit.shape[1:], np.nan)
            for k in range(len(labels))
        ]
    return np.array(per_class)
