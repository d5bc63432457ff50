"""APE: Adaptive Prior rEfinement, a Tip-Adapter cache on the most telling channels.

Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive Prior
Refinement", ICCV 2023 (arXiv:2304.01195; authors' code: github.com/yangyangyang127/APE,
``main.py`` function ``APE`` and ``utils.py`` ``cal_criterion``), training-free variant.

1. *Prior refinement*: score every feature channel ``j`` by
   ``-similarity_weight * sim_j + variance_weight * var_j``, where ``sim_j`` is how
   similar different classes are in channel ``j`` and ``var_j`` the variance of the
   text weights over classes in it (:func:`ape_criterion`); keep the best
   ``n_features_to_select`` channels. Primes (') below mean "selected channels,
   L2-normalized again".
2. *Trilateral affinities*: a Tip-Adapter cache on those channels, whose one-hot
   values ``V`` are re-weighted per key by how much the zero-shot prediction of the
   key disagrees with its label (:func:`ape_key_divergence`)::

       R_fW = 100 * f @ W.T                                (zero-shot, all channels)
       R_fF = exp(-beta * (1 - f' @ K'.T))                 (query-key affinities)
       R_FW = exp(gamma * KL(V || softmax(K' @ W'.T)))     (one weight per key, KL in bits)
       logits = R_fW + alpha * R_fF @ (V * R_FW)

The logits live in :func:`ape_logits` only; what ``fit`` computes (steps 1 and 2 but
``gamma``) in :func:`ape_cache`, and the key weights ``V * R_FW`` in :func:`ape_values`.
None of alpha, beta and gamma changes what ``fit`` computes: :class:`~skclip.APEClassifierCV`
fits once per fold and scores the whole grid from it (:func:`ape_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.special import softmax
from sklearn.preprocessing import normalize

from ._compat import Interval
from .heads._formula import CLIP_LOGIT_SCALE, cache_logits, with_zero_shot
from .heads._base import TextHead

#: The smoothing constant of the authors' KL divergence.
_KL_EPS = 1e-6


def ape_criterion(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    text_weights: np.ndarray | None,
    similarity_weight: float,
    variance_weight: float,
) -> np.ndarray:
    """The per-channel score ``-similarity_weight * sim + variance_weight * var``.

    ``sim_j`` is the mean over ordered pairs of *different* classes ``(i, k)`` of the
    mean product ``a_j * b_j`` over the samples ``a`` of class ``i`` and ``b`` of class
    ``k``, each class's samples being its text embedding and its training features.
    Since the mean of products over two independent sets is the product of their
    means, that is ``mean_{i != k} m_ij * m_kj`` with ``m_i`` the mean of class ``i``'s
    samples. With the same number of training samples per class (the authors' setting)
    this equals the authors' mean over all pairs of samples of different classes; with
    unequal numbers every pair of classes weighs the same however many samples each
    has (a per-sample mean would let the largest classes decide).

    ``var_j`` is the unbiased variance over classes of the text weights in channel
    ``j``. Without text weights, ``sim`` uses the training features alone and ``var``
    the variance of the class means.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        L2-normalized training features.
    y : ndarray of shape (n_samples,)
        Class index of each sample; every class occurs.
    n_classes : int
        Number of classes, at least 2.
    text_weights : ndarray of shape (n_classes, n_features) or None
        L2-normalized text weights.
    similarity_weight, variance_weight : float
        The weights of the two terms (the authors' ``cfg['w']``).

    Returns
    -------
    criterion : ndarray of shape (n_features,)
        Higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.6, 0.8], [-0.6, 0.8]])  # channel 0 tells the classes apart,
    >>> W = X.copy()                             # channel 1 is the same for both
    >>> ape_criterion(X, np.array([0, 1]), 2, W, 0.7, 0.3).round(3)
    array([ 0.468, -0.448])
    """
    counts = np.bincount(y, minlength=n_classes).astype(X.dtype)
    sums = np.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    np.add.at(sums, y, X)
    if text_weights is not None:
        sums += text_weights
        counts += 1
    means = sums / counts[:, None]
    total = means.sum(axis=0)
    # sum over ordered pairs i != k of m_i * m_k = (sum_i m_i)^2 - sum_i m_i^2
    sim = (total**2 - (means**2).sum(axis=0)) / (n_classes * (n_classes - 1))
    spread = text_weights if text_weights is not None else means
    return -similarity_weight * sim + variance_weight * spread.var(axis=0, ddof=1)


def select_channels(criterion: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, ascending (ties go to the lower index).

    Examples
    --------
    >>> select_channels(np.array([0.1, 0.5, 0.3, 0.5]), 2)
    array([1, 3])
    """
    return np.sort(np.argsort(-criterion, kind="stable")[:k])


def ape_key_divergence(keys: np.ndarray, y: np.ndarray, text_weights: np.ndarray) -> np.ndarray:
    """Per key, the KL divergence in bits of its zero-shot prediction from its label.

    The authors' ``sum_c V_c log2((V_c + eps) / (p_c + eps))`` with ``p`` the softmax
    of the key-text cosines ``K' W'^T`` (without CLIP's logit scale, as theirs) and
    ``V`` the one-hot label: ``log2((1 + eps) / (p_y + eps))``.

    Parameters
    ----------
    keys : ndarray of shape (n_keys, k)
        Cache keys on the selected channels, L2-normalized.
    y : ndarray of shape (n_keys,)
        Class index of each key.
    text_weights : ndarray of shape (n_classes, k)
        Text weights on the selected channels, L2-normalized.

    Returns
    -------
    divergence : ndarray of shape (n_keys,)

    Examples
    --------
    >>> import numpy as np
    >>> # p_y = softmax([1, 0])[0] = e / (e + 1): log2(1 + 1 / e) bits
    >>> ape_key_divergence(np.eye(2), np.array([0, 1]), np.eye(2)).round(4)
    array([0.4519, 0.4519])
    """
    p = softmax(keys @ text_weights.T, axis=1)[np.arange(len(y)), y]
    return np.log2((1.0 + _KL_EPS) / (p + _KL_EPS))


class APECache(NamedTuple):
    """What APE's ``fit`` computes (see :func:`ape_cache`)."""

    criterion: np.ndarray
    selected: np.ndarray
    keys: np.ndarray
    divergence: np.ndarray


def ape_cache(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    text_weights: np.ndarray | None,
    n_selected: int,
    similarity_weight: float,
    variance_weight: float,
) -> APECache:
    """APE's fit: the channel criterion, the selected channels, the cache keys on them
    and each key's divergence, none of which depends on alpha, beta or gamma.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        L2-normalized training features.
    y : ndarray of shape (n_samples,)
        Class index of each sample; every class occurs.
    n_classes : int
        Number of classes, at least 2.
    text_weights : ndarray of shape (n_classes, n_features) or None
        L2-normalized text weights; ``None``: no zero-shot term, every divergence is 0.
    n_selected : int
        Channels to keep, ``1 <= n_selected <= n_features``.
    similarity_weight, variance_weight : float
        The weights of :func:`ape_criterion`.

    Returns
    -------
    cache : APECache
        ``criterion`` (see :func:`ape_criterion`), ``selected`` (see
        :func:`select_channels`), ``keys`` (``X`` on the selected channels,
        L2-normalized) and ``divergence`` (see :func:`ape_key_divergence`), all in
        ``X``'s dtype but ``selected``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.6, 0.8, 0.0], [-0.6, 0.8, 0.0]])
    >>> cache = ape_cache(X, np.array([0, 1]), 2, None, 1, 0.7, 0.3)
    >>> cache.selected, cache.keys
    (array([0]), array([[ 1.],
           [-1.]]))
    """
    criterion = ape_criterion(X, y, n_classes, text_weights, similarity_weight, variance_weight)
    selected = select_channels(criterion, n_selected)
    keys = normalize(X[:, selected])
    if text_weights is None:
        divergence = np.zeros(len(X), dtype=X.dtype)
    else:
        text = normalize(text_weights[:, selected])
        divergence = ape_key_divergence(keys, y, text).astype(X.dtype)
    return APECache(criterion, selected, keys, divergence)


def ape_values(values: np.ndarray, divergence: np.ndarray, gamma: Any) -> np.ndarray:
    """The re-weighted cache values ``V * exp(gamma * KL)`` (``R_FW``: one weight per key).

    Parameters
    ----------
    values : ndarray of shape (n_keys, n_classes)
        One-hot cache values ``V``.
    divergence : ndarray of shape (n_keys,)
        Each key's divergence ``KL`` (see :func:`ape_key_divergence`).
    gamma : float or ndarray of shape (n_gammas,)
        One gamma, or a grid of them (computed in ``divergence``'s dtype).

    Returns
    -------
    weighted : ndarray of shape (n_keys, n_classes), or (n_gammas, n_keys, n_classes)

    Examples
    --------
    >>> import numpy as np
    >>> ape_values(np.eye(2), np.array([0.0, np.log(2.0)]), 1.0)
    array([[1., 0.],
           [0., 2.]])
    >>> ape_values(np.eye(2), np.array([0.0, np.log(2.0)]), np.array([0.0, 1.0])).shape
    (2, 2, 2)
    """
    gamma = np.asarray(gamma, dtype=divergence.dtype)  # float32 stays float32
    weights = np.exp(np.multiply.outer(gamma, divergence))  # R_FW
    return values * weights[..., None]


def ape_logits(
    queries: torch.Tensor,
    selected: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text_weights: torch.Tensor | None,
    alpha: float | torch.Tensor,
    beta: float,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """APE logits ``s f W^T + b + alpha exp(-beta (1 - f' K'^T)) V_w``; CLIP's ``s, b``
    are 100, 0.

    Parameters
    ----------
    queries : Tensor of shape (n_queries, d)
        L2-normalized query features ``f`` (all channels).
    selected : integer Tensor of shape (k,)
        The selected channels; ``f'`` is ``f`` on them, L2-normalized again.
    keys : Tensor of shape (n_keys, k)
        Cache keys ``K'`` on the selected channels, L2-normalized.
    values : Tensor of shape (n_keys, n_classes)
        Re-weighted cache values ``V * R_FW`` (see :func:`ape_key_divergence`).
    text_weights : Tensor of shape (n_classes, d) or None
        Zero-shot text weights ``W`` (all channels); ``None`` gives the cache term alone.
    alpha : float or Tensor of shape (n_alphas, 1, 1)
        Residual ratio, as in Tip-Adapter; a grid of them gives every alpha's logits
        at once.
    beta : float
        Sharpness, as in Tip-Adapter.
    logit_scale, logit_bias : float, default=100.0, 0.0
        Zero-shot scale ``s`` and bias ``b`` of the text model (CLIP: 100 and 0).

    Returns
    -------
    logits : Tensor of shape (n_queries, n_classes), or (n_alphas, n_queries, n_classes)

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[0.6, 0.8, 0.0]])
    >>> K, V = torch.eye(2), torch.eye(2)
    >>> ape_logits(f, torch.tensor([0, 2]), K, V, None, alpha=1.0, beta=1.0)
    tensor([[1.0000, 0.3679]])
    """
    reduced = torch.nn.functional.normalize(queries[:, selected], dim=1)
    logits = alpha * cache_logits(reduced @ keys.T, values, beta)
    return with_zero_shot(logits, queries, text_weights, logit_scale, logit_bias)


def ape_grid(
    queries: torch.Tensor,
    selected: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text_weights: torch.Tensor | None,
    alphas: torch.Tensor,
    betas: Any,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> Iterator[torch.Tensor]:
    """APE logits for a grid of (alpha, beta, gamma), from one fit.

    Each (beta, gamma) is one call of :func:`ape_logits` (the formula, whose affinities
    are cheap next to a fit) with all the alphas at once.

    Parameters
    ----------
    queries, selected, keys, text_weights, logit_scale, logit_bias
        As in :func:`ape_logits`.
    values : Tensor of shape (n_gammas, n_keys, n_classes)
        The re-weighted values of each gamma (:func:`ape_values` of the gamma grid).
    alphas : Tensor of shape (n_alphas,)
        Residual ratios, in the queries' dtype.
    betas : iterable of float
        Sharpness values.

    Yields
    ------
    logits : Tensor of shape (n_alphas, n_gammas, n_queries, n_classes)
        One per beta, in order.

    Examples
    --------
    >>> import torch
    >>> f, K = torch.tensor([[0.6, 0.8, 0.0]]), torch.eye(2)
    >>> values = torch.stack([torch.eye(2), 2 * torch.eye(2)])  # two gammas
    >>> [g.shape for g in ape_grid(f, torch.tensor([0, 2]), K, values, None,
    ...                            torch.tensor([1.0, 2.0, 3.0]), [1.0, 5.0])]
    [torch.Size([3, 2, 1, 2]), torch.Size([3, 2, 1, 2])]
    """
    scale = alphas.view(-1, 1, 1)
    zero_shot = {"logit_scale": logit_scale, "logit_bias": logit_bias}
    for beta in betas:
        per_gamma = [
            ape_logits(queries, selected, keys, v, text_weights, scale, float(beta), **zero_shot)
            for v in values
        ]
        yield torch.stack(per_gamma, dim=1)


class APEClassifier(TextHead):
    """Training-free APE head: a re-weighted Tip-Adapter cache on selected channels.

    ``fit`` scores every feature channel by how well it separates the classes (low
    similarity between classes, high variance of the text weights over classes),
    keeps the best ``n_features_to_select`` (``selected_features_``), builds a cache
    model on those channels (keys: the normalized training features there), and gives
    each key a weight ``exp(gamma * KL)`` that grows with the divergence between its
    label and CLIP's zero-shot prediction for it. A query ``f`` is scored by::

        logits = 100 * f @ W.T + alpha * exp(-beta * (1 - f' @ K'.T)) @ (V * exp(gamma * KL))

    where ``'`` means the selected channels, normalized again. This is the
    training-free APE of Zhu et al., ICCV 2023; nothing is trained.
    ``100`` is CLIP's zero-shot logit scale; with a SigLIP-family ``clip_model`` the
    zero-shot term is the model's own ``s * f @ W.T + b``, as in
    :class:`TipAdapterClassifier`.

    Parameters
    ----------
    alpha : float, default=2.0
        Residual ratio: weight of the cache term; ``alpha=0`` is zero-shot CLIP.
    beta : float, default=1.0
        Sharpness of the affinity kernel ``exp(-beta (1 - cos))``.
    gamma : float, default=0.1
        How much keys that zero-shot CLIP gets wrong weigh more; ``gamma=0`` gives every
        key weight 1. The defaults of alpha, beta and gamma are the starting values of
        the authors' ImageNet config, from which they *search* per data set (alpha and
        beta over ``[0.1, 7)``, gamma over ``[0, 0.5)`` to ``[0, 1)``): tune them with
        ``GridSearchCV`` on training data.
    n_features_to_select : int or float, default=0.5
        Channels to keep: a count, or a fraction of the features in ``(0, 1]`` (at
        least one channel). The authors keep 500 of RN50's 1024 on ImageNet and
        200-900 elsewhere.
    similarity_weight : float, default=0.7
        Weight of the inter-class similarity in the channel criterion (the authors'
        ``cfg['w'][0]`` for training-free APE).
    variance_weight : float, default=0.3
        Weight of the text weights' variance over classes (``cfg['w'][1]``).
    <text-head parameters>

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Feature dimension seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Defined only when ``X`` had string feature names.
    criterion_ : ndarray of shape (n_features,)
        The channel scores (higher is better).
    selected_features_ : ndarray of shape (n_selected,)
        Indices of the kept channels, ascending.
    cache_keys_ : ndarray of shape (n_samples, n_selected)
        Training features on the selected channels, L2-normalized.
    cache_values_ : ndarray of shape (n_samples, n_classes)
        One-hot labels of the keys.
    key_divergence_ : ndarray of shape (n_samples,)
        KL divergence (bits) of each key's zero-shot prediction from its label; each
        key's value is weighted by ``exp(gamma * key_divergence_)``.
    text_features_ : ndarray of shape (n_classes, n_features) or None
        Text weights ``W``; ``None`` without a zero-shot term.

    See Also
    --------
    TipAdapterClassifier : The same cache model on all channels, unweighted.
    GDAClassifier : Gaussian discriminant analysis with the same text head.

    Notes
    -----
    **Unequal class sizes.** The authors' similarity term averages the channel-wise
    product over all pairs of samples from different classes, which they compute for
    exactly ``shots`` samples per class. Here it is the mean over pairs of different
    classes of the product of the two classes' mean samples (text embedding counted
    as one sample), identical to theirs with equal class sizes, and weighing every
    pair of classes the same otherwise (see :func:`skclip.ape.ape_criterion`).

    **Without text features** (``clip_model=None``, ``text_features=None``), the
    criterion uses the training features alone, the class means stand in for the
    text weights in its variance term, and the keys are not re-weighted (``gamma``
    has no effect).

    **Augmented keys.** The authors' keys are the mean of 10 augmented views of each
    training image, normalized: in a ``Pipeline``, ``CLIPFeaturizer(augment=10)``
    gives exactly that for the training images, while queries are encoded from the
    clean view. The channel criterion uses the same keys.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import APEClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> clf = APEClassifier(clip_model=None, n_features_to_select=2, beta=5.0).fit(X, y)
    >>> clf.selected_features_  # the two channels that carry the classes
    array([0, 1])
    >>> clf.predict(X[[0, -1]])
    array(['cat', 'dog'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "n_features_to_select": [
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="right"),
        ],
        "similarity_weight": [Interval(Real, 0, None, closed="left")],
        "variance_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        n_features_to_select: int | float = 0.5,
        similarity_weight: float = 0.7,
        variance_weight: float = 0.3,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.n_features_to_select = n_features_to_select
        self.similarity_weight = similarity_weight
        self.variance_weight = variance_weight

    def fit(self, X: Any, y: Any) -> APEClassifier:
        """Select the channels, build the cache and weigh its keys.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels of any type (strings give the class names for the prompts).

        Returns
        -------
        self : APEClassifier
        """
        self._validate_params()
        X, y_enc = self._prepare(X, y)
        self._set_fitted(X, y_enc)
        return self

    def _n_selected(self, n_features: int) -> int:
        """``n_features_to_select`` as a count of channels."""
        k = self.n_features_to_select
        if isinstance(k, Integral):
            if k > n_features:
                raise ValueError(
                    f"n_features_to_select={k} is more than X has: n_features={n_features}."
                )
            return int(k)
        return max(1, int(k * n_features))

    def _cache(
        self, X: np.ndarray, y_enc: np.ndarray, n_classes: int, W: np.ndarray | None
    ) -> APECache:
        """:func:`ape_cache` with this head's parameters: the one fit of the classifier,
        of its CV's refit and of each of the CV's folds."""
        k = self._n_selected(X.shape[1])
        return ape_cache(X, y_enc, n_classes, W, k, self.similarity_weight, self.variance_weight)

    def _set_fitted(self, X: np.ndarray, y_enc: np.ndarray) -> None:
        """Set the fitted attributes from :meth:`_cache` (also the CV's refit)."""
        cache = self._cache(X, y_enc, len(self.classes_), self.text_features_)
        self.criterion_, self.selected_features_ = cache.criterion, cache.selected
        self._set_cache(cache.keys, y_enc)
        self.key_divergence_ = cache.divergence

    def _prediction_params(self) -> tuple[float, float, float]:
        return float(self.alpha), float(self.beta), float(self.gamma)

    def _head_parts(self, device: torch.device) -> tuple[Callable, tuple, dict, np.dtype, int]:
        alpha, beta, gamma = self._prediction_params()
        weighted = ape_values(self.cache_values_, self.key_divergence_, gamma)
        values = torch.from_numpy(weighted).to(device)
        selected = torch.from_numpy(self.selected_features_).to(device)
        keys = torch.from_numpy(self.cache_keys_).to(device)
        params = {"alpha": alpha, "beta": beta}
        # the selected channels of the queries, the affinities and a matmul temporary
        row_floats = keys.shape[1] + 2 * keys.shape[0]
        return ape_logits, (selected, keys, values), params, self.cache_keys_.dtype, row_floats
