"""GDA: Gaussian discriminant analysis on CLIP features, blended with zero-shot CLIP.

Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
ICLR 2024 (arXiv:2402.04087; authors' code: github.com/mrflogs/ICLR24,
``main_few_shots.py``, function ``run``). The few-shot features of each class are
modelled as Gaussians with class means ``mu_k`` and one shared covariance; Bayes' rule
then gives a linear classifier, added to zero-shot CLIP with weight ``alpha``::

    coef_k      = P mu_k                                (P: the shared precision matrix)
    intercept_k = log pi_k - mu_k^T P mu_k / 2          (pi: the class priors)
    logits      = 100 * f @ W.T + alpha * (f @ coef.T + intercept)

Each formula lives in one function: :func:`gda_parameters` (fit) and
:func:`gda_logits` (predict, for one alpha or a whole grid of them at once: what
:class:`~skclip.GDAClassifierCV` scores). The precision is the inverse of a
positive-definite matrix, computed from its Cholesky factor (:func:`spd_inverse`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np
import torch
from scipy.linalg import LinAlgError, cho_factor, get_lapack_funcs, pinvh
from sklearn.base import clone

from ._compat import HasMethods, Interval, StrOptions
from .heads._formula import CLIP_LOGIT_SCALE, with_zero_shot
from .heads._base import TextHead


#: Below this reciprocal condition number (1-norm, LAPACK's ``pocon`` estimate from the
#: Cholesky factor) a matrix is treated as singular and inverted by ``pinvh``, whose
#: eigenvalue cutoff then decides, as before Cholesky was used. Above it the two agree
#: to about ``eps / rcond``: 1e-8 relative at worst, and far better for the shrunk
#: scatter (condition number at most ``N``).
_RCOND_MIN = 1e-8


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive-definite matrix, from its Cholesky factor.

    One Cholesky factorization and its inversion (LAPACK ``potrf`` and ``potri``, about
    ``d**3`` flops) instead of the full eigendecomposition of ``scipy.linalg.pinvh``
    (several times the work). When the matrix is not positive definite or is nearly
    singular (Cholesky fails, or the estimated reciprocal condition number is below
    ``1e-8``), the result is ``pinvh(matrix)``, the pseudo-inverse, as before.

    Parameters
    ----------
    matrix : ndarray of shape (d, d)
        Symmetric (only its lower triangle is read by the Cholesky path).

    Returns
    -------
    inverse : ndarray of shape (d, d)
        Symmetric.

    Examples
    --------
    >>> import numpy as np
    >>> spd_inverse(np.array([[4.0, 2.0], [2.0, 2.0]]))
    array([[ 0.5, -0.5],
           [-0.5,  1. ]])
    >>> spd_inverse(np.zeros((2, 2)))  # singular: the pseudo-inverse
    array([[0., 0.],
           [0., 0.]])
    """
    try:
        factor, lower = cho_factor(matrix, lower=True)
    except LinAlgError:  # not positive definite (e.g. all zero): no Cholesky factor
        return pinvh(matrix)
    pocon, potri = get_lapack_funcs(("pocon", "potri"), (factor,))
    rcond, info = pocon(factor, np.abs(matrix).sum(axis=0).max(), uplo="L")
    if info != 0 or not rcond >= _RCOND_MIN:
        return pinvh(matrix)
    inverse, info = potri(factor, lower=lower)
    if info != 0:
        return pinvh(matrix)
    lower_part = np.tril(inverse)  # potri fills one triangle: mirror it
    return lower_part + np.tril(inverse, -1).T


def shrinkage_precision(centered: np.ndarray) -> np.ndarray:
    """The authors' precision estimate ``d * pinv((N - 1) S + trace(S) I)``.

    ``S`` is the unbiased covariance of the ``N`` class-centered ``d``-dimensional
    features, so ``(N - 1) S`` is their scatter matrix; the ``trace(S) I`` term shrinks
    it towards a multiple of the identity, which keeps it invertible with fewer samples
    than dimensions. With one sample (``N = 1``) ``S`` is taken as 0.

    Parameters
    ----------
    centered : ndarray of shape (n_samples, n_features)
        Features minus the mean of their class.

    Returns
    -------
    precision : ndarray of shape (n_features, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> centered = np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> shrinkage_precision(centered)  # S = diag(2, 0): 2 * inv(diag(2 + 2, 0 + 2))
    array([[0.5, 0. ],
           [0. , 1. ]])
    """
    n, d = centered.shape
    scatter = centered.T @ centered
    trace = np.trace(scatter) / (n - 1) if n > 1 else 0.0
    # positive definite whenever trace > 0: Cholesky (pinvh only for the zero matrix)
    return d * spd_inverse(scatter + trace * np.eye(d, dtype=scatter.dtype))


def gda_parameters(
    X: np.ndarray,
    y: np.ndarray,
    priors: np.ndarray,
    covariance_estimator: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means and the linear classifier of Gaussian discriminant analysis.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        L2-normalized training features.
    y : ndarray of shape (n_samples,)
        Class index of each sample, ``0 <= y < n_classes``; every class occurs.
    priors : ndarray of shape (n_classes,)
        Class priors ``pi`` (positive, summing to 1).
    covariance_estimator : estimator or None, default=None
        ``None`` uses :func:`shrinkage_precision` (the authors' estimator); otherwise a
        scikit-learn covariance estimator, fitted (as a clone) on the class-centered
        features: the precision is the inverse of its ``covariance_`` (by Cholesky, see
        :func:`spd_inverse`), its pseudo-inverse when it is singular.

    Returns
    -------
    means : ndarray of shape (n_classes, n_features)
    coef : ndarray of shape (n_classes, n_features)
        ``P mu_k`` per class.
    intercept : ndarray of shape (n_classes,)
        ``log pi_k - mu_k^T P mu_k / 2``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    >>> means, coef, intercept = gda_parameters(X, np.array([0, 0, 1, 1]), np.array([0.5, 0.5]))
    >>> means
    array([[0.9, 0.3],
           [0.3, 0.9]])
    >>> bool((X @ coef.T + intercept).argmax(1).tolist() == [0, 0, 1, 1])
    True
    """
    n_classes = len(priors)
    counts = np.bincount(y, minlength=n_classes)
    means = np.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    np.add.at(means, y, X)
    means /= counts[:, None]
    centered = X - means[y]
    if covariance_estimator is None:
        precision = shrinkage_precision(centered)
    else:
        precision = spd_inverse(clone(covariance_estimator).fit(centered).covariance_)
    coef = means @ precision
    intercept = np.log(priors) - 0.5 * np.einsum("kd,kd->k", coef, means)
    return means, coef, intercept


def gda_logits(
    queries: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    text_weights: torch.Tensor | None,
    alpha: float | torch.Tensor,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """GDA logits ``s f W^T + b + alpha (f coef^T + intercept)``; CLIP's ``s, b`` are 100, 0.

    Parameters
    ----------
    queries : Tensor of shape (n_queries, d)
        L2-normalized query features ``f``.
    coef : Tensor of shape (n_classes, d)
        ``P mu_k`` per class (see :func:`gda_parameters`).
    intercept : Tensor of shape (n_classes,)
    text_weights : Tensor of shape (n_classes, d) or None
        Zero-shot text weights ``W``; ``None`` gives the GDA term alone.
    alpha : float or Tensor of shape (n_alphas, 1, 1)
        Weight of the GDA term; a grid of them gives every alpha's logits at once, from
        one ``f coef^T`` (what :class:`~skclip.GDAClassifierCV` scores).
    logit_scale, logit_bias : float, default=100.0, 0.0
        Zero-shot scale ``s`` and bias ``b`` of the text model (CLIP: 100 and 0).

    Returns
    -------
    logits : Tensor of shape (n_queries, n_classes), or (n_alphas, n_queries, n_classes)

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0]])
    >>> gda_logits(f, torch.eye(2), torch.tensor([0.0, 1.0]), None, alpha=2.0)
    tensor([[2., 2.]])
    >>> alphas = torch.tensor([1.0, 2.0]).view(-1, 1, 1)
    >>> gda_logits(f, torch.eye(2), torch.tensor([0.0, 1.0]), None, alphas)
    tensor([[[1., 1.]],
    <BLANKLINE>
            [[2., 2.]]])
    """
    logits = alpha * (queries @ coef.T + intercept)
    return with_zero_shot(logits, queries, text_weights, logit_scale, logit_bias)


class GDAClassifier(TextHead):
    """Training-free GDA head: Gaussian discriminant analysis plus zero-shot CLIP.

    ``fit`` estimates the mean of each class and one covariance shared by all classes
    from the (L2-normalized) training features; Bayes' rule for Gaussians with a shared
    covariance is a linear classifier, which is added to zero-shot CLIP::

        logits = 100 * f @ W.T + alpha * (f @ coef_.T + intercept_)
        coef_[k] = P @ mu_k,   intercept_[k] = log(pi_k) - mu_k @ P @ mu_k / 2

    with ``P`` the precision (inverse covariance) matrix, ``pi`` the class priors and
    ``W`` the CLIP text embeddings of the class names. This is the method of Wang et
    al., ICLR 2024; nothing is trained.
    ``100`` is CLIP's zero-shot logit scale; with a SigLIP-family ``clip_model`` the
    zero-shot term is the model's own ``s * f @ W.T + b``, as in
    :class:`TipAdapterClassifier`.

    Parameters
    ----------
    alpha : float, default=1.0
        Weight of the GDA term against zero-shot CLIP; ``alpha=0`` is zero-shot CLIP.
        Its useful range depends on the covariance estimator and the data: the default
        estimator's precision, hence the GDA term, gets smaller as samples are added
        (``(N - 1) S`` grows with the number of samples ``N`` while the shrinkage
        ``trace(S)`` does not), so the best alpha grows with the number of training
        samples and views. Tune it with ``GridSearchCV`` on training data; the authors
        pick it from ``[1e-4, 1e-3, ..., 10, 100]`` by validation accuracy.
    covariance_estimator : estimator or None, default=None
        ``None`` is the authors' shrinkage estimate of the precision,
        ``d * pinv((N - 1) * S + trace(S) * I)`` with ``S`` the unbiased covariance of
        the ``N`` class-centered features (see :func:`skclip.gda.shrinkage_precision`).
        Otherwise any scikit-learn covariance estimator (an object with ``fit`` and a
        ``covariance_`` attribute, as
        :class:`~sklearn.discriminant_analysis.LinearDiscriminantAnalysis` accepts), e.g.
        :class:`~sklearn.covariance.LedoitWolf` or :class:`~sklearn.covariance.OAS`: a
        clone is fitted to the class-centered features and ``P`` is the pseudo-inverse
        of its ``covariance_``.
    priors : "empirical", array-like of shape (n_classes,) or None, default=None
        Class priors ``pi``. ``None`` is uniform, as the authors; ``"empirical"`` uses
        the class frequencies of ``y``; an array gives one positive prior per class in
        ``classes_`` order (renormalized to sum to 1, with a warning, if it does not).
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    means_ : ndarray of shape (n_classes, n_features)
        Class means ``mu_k`` of the normalized training features.
    priors_ : ndarray of shape (n_classes,)
        Class priors ``pi``.
    coef_ : ndarray of shape (n_classes, n_features)
        ``P mu_k`` per class.
    intercept_ : ndarray of shape (n_classes,)
        ``log(pi_k) - mu_k^T P mu_k / 2`` per class.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        Text weights ``W``; ``None`` without a zero-shot term.

    See Also
    --------
    TipAdapterClassifier : The cache-model head with the same text head.
    APEClassifier : A cache model on the most discriminative feature channels.
    sklearn.discriminant_analysis.LinearDiscriminantAnalysis : The same model without
        zero-shot CLIP.

    Notes
    -----
    **Augmented views.** The authors encode every few-shot training image 10 times
    with random augmentation (random resized crop with scale 0.5-1, horizontal flip)
    and pool the 10 views as 10 *samples* of the class, so the covariance is estimated
    from ``10 * n_images`` features, and it includes the spread that augmentation
    causes. Fitting on one clean view per image (what ``CLIPFeaturizer(augment=0)``
    gives) estimates it from ``n_images`` features only; with the default estimator
    the shrinkage towards the identity is then stronger. Note that
    ``CLIPFeaturizer(augment=k)`` *averages* its ``k`` views into one row per image
    (the Tip-Adapter and APE cache-key recipe), which is not the same either: the
    average of views varies less than single views. A ``Pipeline`` cannot turn one
    image into several rows, so to reproduce the authors' pooling, encode the training
    images outside it and stack the views, e.g. ``X = np.vstack([CLIPFeaturizer(
    augment=1, random_state=s).fit_transform(paths) for s in range(10)])`` with
    ``y = np.tile(labels, 10)``, then ``GDAClassifier().fit(X, y)``.

    Features are L2-normalized inside ``fit`` and ``predict``; the means are those of
    the normalized features (not normalized again), as in the authors' code. The
    covariance is always that of all the class-centered samples pooled (classes weigh
    by their size), whatever the priors; ``LinearDiscriminantAnalysis`` instead weighs
    the class covariances by the priors, so the two agree with
    ``covariance_estimator=EmpiricalCovariance()`` and ``priors="empirical"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import GDAClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> clf = GDAClassifier(clip_model=None).fit(X, y)  # discriminant analysis only
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    >>> clf.coef_.shape, clf.predict_proba(X[:1]).shape
    ((2, 8), (1, 2))
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "covariance_estimator": [HasMethods("fit"), None],
        "priors": [StrOptions({"empirical"}), "array-like", None],
    }

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        covariance_estimator: Any = None,
        priors: str | Any | None = None,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.alpha = alpha
        self.covariance_estimator = covariance_estimator
        self.priors = priors

    def fit(self, X: Any, y: Any) -> GDAClassifier:
        """Estimate the class means, the shared precision and the linear classifier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : GDAClassifier
        """
        self._validate_params()
        X, y_enc = self._prepare(X, y)
        self._set_parameters(X, y_enc, self._resolve_priors(y_enc))
        return self

    def _set_parameters(self, X: np.ndarray, y_enc: np.ndarray, priors: np.ndarray) -> None:
        """Set ``priors_``, ``means_``, ``coef_`` and ``intercept_`` (also the CV's refit)."""
        self.priors_ = priors.astype(X.dtype)
        if len(y_enc) == len(self.classes_):
            warnings.warn(
                f"GDAClassifier got one sample per class ({len(y_enc)} samples, "
                f"{len(self.classes_)} classes): the class-centered features are all zero, so "
                "the shared covariance and the GDA term carry no information (with a text "
                "head this is zero-shot CLIP for every alpha). Give several samples per "
                "class, e.g. augmented views (see the Notes).",
                UserWarning,
                stacklevel=3,
            )
        self.means_, self.coef_, self.intercept_ = self._parameters(X, y_enc, self.priors_)

    def _parameters(
        self, X: np.ndarray, y_enc: np.ndarray, priors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`gda_parameters` in float64 (the precision is d x d, and inverting a
        float32 scatter loses digits), returned in ``X``'s dtype: the one fit of the
        classifier, of its CV's refit and of each of the CV's folds."""
        fitted = gda_parameters(
            X.astype(np.float64),
            y_enc,
            priors.astype(X.dtype).astype(np.float64),
            self.covariance_estimator,
        )
        means, coef, intercept = (a.astype(X.dtype) for a in fitted)
        return means, coef, intercept

    def _resolve_priors(self, y_enc: np.ndarray) -> np.ndarray:
        n_classes = len(self.classes_)
        if self.priors is None:
            return np.full(n_classes, 1.0 / n_classes)
        if isinstance(self.priors, str):  # "empirical"
            return np.bincount(y_enc, minlength=n_classes) / len(y_enc)
        priors = np.asarray(self.priors, dtype=np.float64)
        if priors.shape != (n_classes,):
            raise ValueError(
                f"priors must have one value per class, shape ({n_classes},) for the classes "
                f"{self.classes_.tolist()}; got shape {priors.shape}."
            )
        if not np.all(np.isfinite(priors)) or np.any(priors <= 0):
            raise ValueError(f"priors must be positive and finite; got {priors.tolist()}.")
        if not np.isclose(priors.sum(), 1.0):
            warnings.warn(
                f"priors sum to {priors.sum():g}, not 1: renormalizing.", UserWarning, stacklevel=3
            )
            priors = priors / priors.sum()
        return priors

    def _prediction_alpha(self) -> float:
        return float(self.alpha)

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        coef = torch.from_numpy(self.coef_).to(device)
        intercept = torch.from_numpy(self.intercept_).to(device)
        return (
            gda_logits,
            (coef, intercept),
            {"alpha": self._prediction_alpha()},
            self.coef_.dtype,
            2 * len(self.classes_),
        )
