"""ProKeR: kernel ridge regression of the zero-shot residual, in closed form.

Bendou et al., "ProKeR: A Kernel Perspective on Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2025 (authors' code: github.com/ybendou/ProKeR, the same
file as ``trainers/proker.py`` of omarnust/BReg-Adapter, function ``ProKeR``). With
L2-normalized support features ``S`` (n, d), their one-hot labels ``Y`` (n, C) and the
text weights ``T`` (C, d)::

    k(x, y) = exp(-beta * (1 - x . y))                   (the Tip-Adapter kernel)
    A       = (k(S, S) / lmbda + I)^-1 (Y - S T^T)       (C columns of kernel ridge weights)
    logits  = x T^T + k(x, S) A

The residual ``Y - S T^T`` uses the raw cosines (not multiplied by CLIP's 100): the
kernel ridge regression fits what the one-hot targets lack from the zero-shot cosines.
skclip multiplies the whole of it by the text model's zero-shot scale ``s`` and adds its
bias ``b`` (CLIP: ``s = 100``, ``b = 0``), one global factor for CLIP, so that the
logits are on the scale of the other heads' (see :class:`ProKeRClassifier`, Notes).

Each formula lives in one function: :func:`proker_kernel`, :func:`proker_coefficients`
(fit) and :func:`proker_logits` (predict); :class:`~skclip.ProKeRClassifierCV` uses
:func:`proker_residual` and :func:`proker_kernel` to score a whole grid.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np
import torch

from ._compat import Interval
from .heads._base import TextHead
from .heads._formula import CLIP_LOGIT_SCALE, with_zero_shot

#: The authors' transferred defaults ``{shots: (beta, lmbda)}`` (their
#: ``configs/RN50/configs_proker/hyperparameters.json``), chosen on ImageNet, whose
#: validation set in their code is its test set.
AUTHORS_DEFAULTS = {1: (3.0, 0.05), 2: (2.6, 0.05), 4: (1.5, 0.05), 8: (1.66, 0.07), 16: (1.7, 0.1)}


def proker_kernel(A: Any, B: Any, beta: float) -> Any:
    """The kernel ``exp(-beta (1 - A B^T))`` between rows of unit vectors.

    Works on NumPy arrays and torch Tensors alike (both have ``@`` and ``.T``).

    Examples
    --------
    >>> import numpy as np
    >>> proker_kernel(np.eye(2), np.eye(2), beta=1.0)
    array([[1.        , 0.36787944],
           [0.36787944, 1.        ]])
    """
    affinity = A @ B.T
    if isinstance(affinity, torch.Tensor):
        return torch.exp(beta * (affinity - 1.0))
    return np.exp(beta * (affinity - 1.0))


def proker_residual(
    support: np.ndarray, y: np.ndarray, text_weights: np.ndarray | None, n_classes: int
) -> np.ndarray:
    """The regression target ``Y - S T^T``: one-hot labels minus the raw zero-shot cosines
    (``Y`` alone without text weights).

    Examples
    --------
    >>> import numpy as np
    >>> proker_residual(np.eye(2), np.array([0, 1]), 0.5 * np.eye(2), 2)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    target = np.eye(n_classes, dtype=support.dtype)[y]
    if text_weights is not None:
        target -= support @ text_weights.T
    return target


def proker_coefficients(
    support: np.ndarray,
    y: np.ndarray,
    text_weights: np.ndarray | None,
    n_classes: int,
    beta: float,
    lmbda: float,
) -> np.ndarray:
    """The kernel ridge weights ``A = (k(S, S) / lmbda + I)^-1 (Y - S T^T)``.

    Parameters
    ----------
    support : ndarray of shape (n_samples, d)
        L2-normalized support features ``S``.
    y : ndarray of shape (n_samples,)
        Class index of each support sample, ``0 <= y < n_classes``.
    text_weights : ndarray of shape (n_classes, d) or None
        Text weights ``T``; ``None`` regresses the one-hot labels alone.
    n_classes : int
    beta, lmbda : float
        Kernel sharpness and ridge regularization (``lmbda > 0``).

    Returns
    -------
    coef : ndarray of shape (n_samples, n_classes)
        Solved in float64 (``k(S, S) / lmbda + I`` has a condition number up to
        ``1 + n_samples / lmbda``), returned in ``support``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> A = proker_coefficients(np.eye(2), np.array([0, 1]), None, 2, beta=50.0, lmbda=1.0)
    >>> A.round(6)  # orthogonal samples: k(S, S) ~ I, so A ~ Y / 2
    array([[ 0.5, -0. ],
           [-0. ,  0.5]])
    """
    S = support.astype(np.float64)
    W = None if text_weights is None else text_weights.astype(np.float64)
    gram = proker_kernel(S, S, beta) / lmbda
    gram[np.diag_indices_from(gram)] += 1.0
    coef = np.linalg.solve(gram, proker_residual(S, y, W, n_classes))
    return coef.astype(support.dtype)


def proker_logits(
    queries: torch.Tensor,
    support: torch.Tensor,
    coef: torch.Tensor,
    text_weights: torch.Tensor | None,
    beta: float,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """ProKeR logits ``s (f T^T + k(f, S) A) + b``: the authors' ``f T^T + k(f, S) A``
    times the zero-shot scale ``s``, plus the bias ``b`` (CLIP: 100 and 0).

    Without text weights, the kernel ridge term ``k(f, S) A`` alone (no scale).

    Parameters
    ----------
    queries : Tensor of shape (n_queries, d)
        L2-normalized query features ``f``.
    support : Tensor of shape (n_samples, d)
        Support features ``S``.
    coef : Tensor of shape (n_samples, n_classes)
        ``A`` from :func:`proker_coefficients`.
    text_weights : Tensor of shape (n_classes, d) or None
    beta : float
    logit_scale, logit_bias : float, default=100.0, 0.0

    Returns
    -------
    logits : Tensor of shape (n_queries, n_classes)

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0]])
    >>> proker_logits(f, torch.eye(2), torch.eye(2), None, beta=1.0)
    tensor([[1.0000, 0.3679]])
    """
    ridge = proker_kernel(queries, support, beta) @ coef
    if text_weights is None:
        return ridge
    return with_zero_shot(logit_scale * ridge, queries, text_weights, logit_scale, logit_bias)


class ProKeRClassifier(TextHead):
    """Training-free ProKeR head: kernel ridge regression of zero-shot CLIP's residual.

    ``fit`` solves one linear system: the kernel ridge regression, with the Tip-Adapter
    kernel ``k(x, y) = exp(-beta (1 - x . y))``, of what the zero-shot cosines lack
    from the one-hot labels on the support set::

        coef_  = (k(S, S) / lmbda + I)^-1 (Y - S @ W.T)
        logits = 100 * (f @ W.T + k(f, S) @ coef_)

    with ``S`` the L2-normalized training features, ``Y`` their one-hot labels and ``W``
    the CLIP text embeddings of the class names. This is the training-free ProKeR of
    Bendou et al., CVPR 2025. Like Tip-Adapter it is a cache model, but its weights are
    the solution of a regularized regression instead of the labels themselves: as
    ``lmbda`` goes to 0 the logits go to the zero-shot ones (``coef_`` to 0), and as it
    grows ``coef_`` goes to the residual ``Y - S @ W.T`` itself (a cache whose values
    are the residuals).

    Parameters
    ----------
    beta : float, default=1.7
        Kernel sharpness (> 0).
    lmbda : float, default=0.1
        Ridge regularization (> 0); spelled as in the authors' code (``lambda`` is a
        Python keyword). The defaults are the authors' 16-shot values; theirs for 1, 2,
        4 and 8 shots are (3, 0.05), (2.6, 0.05), (1.5, 0.05) and (1.66, 0.07)
        (:data:`skclip.proker.AUTHORS_DEFAULTS`), which they chose on ImageNet, where
        their validation set is the test set. Tune both on training data with
        :class:`ProKeRClassifierCV`.
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    support_ : ndarray of shape (n_samples, n_features)
        The L2-normalized training features ``S``.
    coef_ : ndarray of shape (n_samples, n_classes)
        The kernel ridge weights ``A``.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        Text weights ``W``; ``None`` without a zero-shot term.
    logit_scale_, logit_bias_ : float or None
        Zero-shot scale ``s`` and bias ``b`` of the text model (CLIP: 100 and 0).

    See Also
    --------
    ProKeRClassifierCV : ``beta`` and ``lmbda`` chosen by cross-validation.
    TipAdapterClassifier : The cache model whose weights are the labels.
    sklearn.kernel_ridge.KernelRidge : The same regression without the zero-shot term.

    Notes
    -----
    **Scale.** The authors' logits are ``f W^T + k(f, S) A``; skclip's are ``s`` times
    theirs plus ``b``: for CLIP exactly 100 times theirs (the same predictions, and
    probabilities on the scale of zero-shot CLIP's and the other heads'). The residual
    stays that of the raw cosines, ``Y - S W^T``, for every model. With a SigLIP-family
    ``clip_model`` (learned ``s`` and ``b``) one could instead regress the residual of
    the bias-shifted cosines, ``Y - (s S W^T + b) / s``; the two differ by the constant
    ``b / s`` in every entry, whose regression adds the same value to every class's
    logit for a given query, so ``predict`` and ``predict_proba`` are the same with
    either, and ``decision_function`` differs by a per-query constant.

    **Augmented views.** The authors' support set is 10 augmented views of every
    training image, pooled as 10 samples (as for :class:`GDAClassifier`, see its Notes):
    stack such views as rows of ``X`` (with ``y`` tiled) to do the same. The system is
    ``n_samples x n_samples``: ``fit`` takes ``O(n_samples^3)`` time.

    Without a text head (``clip_model=None``, no ``text_features``) the logits are the
    kernel ridge regression of the one-hot labels, ``k(f, S) @ coef_``.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import ProKeRClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> W = np.eye(8)[:2] + 0.5  # text weights, one row per class
    >>> clf = ProKeRClassifier(text_features=W).fit(X, y)
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    >>> clf.coef_.shape, clf.predict_proba(X[:1]).shape
    ((40, 2), (1, 2))
    """

    _parameter_constraints: dict = {
        "beta": [Interval(Real, 0, None, closed="neither")],
        "lmbda": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, beta: float = 1.7, lmbda: float = 0.1, **text_head: Any) -> None:
        super().__init__(**text_head)
        self.beta = beta
        self.lmbda = lmbda

    def fit(self, X: Any, y: Any) -> ProKeRClassifier:
        """Solve the kernel ridge regression of the zero-shot residual.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : ProKeRClassifier
        """
        self._validate_params()
        X, y_enc = self._prepare(X, y)
        self._set_support(X, y_enc, float(self.beta), float(self.lmbda))
        return self

    def _set_support(self, X: np.ndarray, y_enc: np.ndarray, beta: float, lmbda: float) -> None:
        """Store the support set and its kernel ridge weights (also the CV's refit)."""
        self.support_ = X
        self.coef_ = proker_coefficients(
            X, y_enc, self.text_features_, len(self.classes_), beta, lmbda
        )

    def _prediction_beta(self) -> float:
        return float(self.beta)

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        support = torch.from_numpy(self.support_).to(device)
        coef = torch.from_numpy(self.coef_).to(device)
        params = {"beta": self._prediction_beta()}
        return (
            proker_logits,
            (support, coef),
            params,
            self.coef_.dtype,
            len(self.support_) + 2 * len(self.classes_),
        )


def proker_grid(
    queries: np.ndarray,
    support: np.ndarray,
    y: np.ndarray,
    text_weights: np.ndarray | None,
    n_classes: int,
    betas: np.ndarray,
    lmbdas: np.ndarray,
    logit_scale: float | None = CLIP_LOGIT_SCALE,
    logit_bias: float | None = 0.0,
):
    """ProKeR logits of ``queries`` for a whole grid of (beta, lmbda), in float64, from
    one eigendecomposition of ``k(S, S)`` per beta (the trick of ``RidgeCV``).

    With ``k(S, S) = Q diag(w) Q^T``, ``(k(S, S) / lmbda + I)^-1 = Q diag(lmbda /
    (w + lmbda)) Q^T``: ``Q^T (Y - S T^T)`` and ``k(f, S) Q`` are computed once per
    beta, and every lmbda is a scaling of the rows of the first. The logits equal
    :func:`proker_logits` with :func:`proker_coefficients` up to rounding.

    Yields
    ------
    logits : ndarray of shape (n_lmbdas, n_queries, n_classes)
        One per beta, in order: ``logits[i]`` is for ``lmbdas[i]``.

    Examples
    --------
    >>> import numpy as np
    >>> S, y = np.eye(2), np.array([0, 1])
    >>> [g.shape for g in proker_grid(S, S, y, None, 2, np.array([1.0, 2.0]), np.ones(3))]
    [(3, 2, 2), (3, 2, 2)]
    """
    S, F = support.astype(np.float64), queries.astype(np.float64)
    W = None if text_weights is None else text_weights.astype(np.float64)
    residual = proker_residual(S, y, W, n_classes)
    zero_shot = None if W is None else F @ W.T
    lmbdas = np.asarray(lmbdas, dtype=np.float64)
    for beta in betas:
        w, Q = np.linalg.eigh(proker_kernel(S, S, float(beta)))
        rotated = Q.T @ residual  # (n, C)
        cross = proker_kernel(F, S, float(beta)) @ Q  # (m, n)
        shrink = lmbdas[:, None] / (w[None, :] + lmbdas[:, None])  # (L, n)
        ridge = cross @ (shrink[:, :, None] * rotated)  # (L, m, C)
        if zero_shot is None:
            yield ridge
        else:
            yield logit_scale * (ridge + zero_shot) + logit_bias
