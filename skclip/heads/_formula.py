"""The Tip-Adapter formula, in one place.

For L2-normalized query features ``f``, cache keys ``K``, one-hot cache values ``V``
and text weights ``W``::

    logits = s * f @ W.T + b + alpha * exp(-beta * (1 - f @ K.T)) @ V

``s`` and ``b`` are the text model's zero-shot logit scale and bias: 100 and 0 for
CLIP and MetaCLIP 2 (the paper's formula), the learned ``exp(logit_scale)`` and
``logit_bias`` for SigLIP and SigLIP 2 (see ``skclip.backbones.families``).

:func:`tip_adapter_logits` is the formula; :func:`tip_adapter_grid` evaluates it for
a grid of (alpha, beta) sharing the work. The classifiers (``tip_adapter.py``,
``model_selection.py``) and the Tip-Adapter-F training loss (``_finetune.py``) all
call these; they live in their own module so that both sides can import them
without a cycle. ``skclip.tip_adapter`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..backbones.families import CLIP_LOGIT_SCALE


def zero_shot_logits(
    queries: torch.Tensor,
    text_weights: torch.Tensor,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """Zero-shot logits ``s f W^T + b`` (the first Tip-Adapter term); CLIP's are
    ``100 f W^T``. The bias, the same for every class, is only added when non-zero."""
    logits = logit_scale * (queries @ text_weights.T)
    return logits + logit_bias if logit_bias else logits


def with_zero_shot(
    logits: torch.Tensor,
    queries: torch.Tensor,
    text_weights: torch.Tensor | None,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """A head's own ``logits`` plus the zero-shot term of ``queries`` (nothing without
    ``text_weights``): the ending of every head's formula, written once."""
    if text_weights is None:
        return logits
    return logits + zero_shot_logits(queries, text_weights, logit_scale, logit_bias)


def cache_logits(
    affinity: torch.Tensor,
    values: torch.Tensor,
    beta: float,
    exclude: torch.Tensor | None = None,
    n_classes: int | None = None,
) -> torch.Tensor:
    """Cache-model votes ``exp(-beta (1 - A)) V`` from affinities ``A = f K^T``.

    ``values`` is either the dense ``(n_keys, n_classes)`` matrix ``V`` or, for one-hot
    ``V``, the ``(n_keys,)`` integer class of each key (then ``n_classes`` is needed):
    the product is then a per-class sum, memory-bound instead of ``n_classes`` times
    the work (13x faster at 16k keys x 1000 classes). Modifies ``affinity`` in place
    unless it requires grad (one buffer, not three).
    """
    if affinity.requires_grad:  # training: out of place, autograd needs the inputs
        weights = torch.exp(beta * (affinity - 1.0))
    else:
        weights = affinity.sub_(1.0).mul_(beta).exp_()
    if exclude is not None:
        weights = weights.masked_fill(exclude, 0.0)
    if values.dtype.is_floating_point:
        return weights @ values
    if n_classes is None:
        raise ValueError("n_classes is required when values are class indices.")
    return _votes_function(weights.device)(weights, values, n_classes)


def _index_add_votes(weights: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class sums of ``weights``' columns with ``index_add``: memory-bound, no
    ``(n_keys, n_classes)`` matrix. On the CPU it adds in index order (deterministic)."""
    votes = weights.new_zeros((weights.shape[0], n_classes))
    return votes.index_add(1, labels, weights)


def _one_hot_votes(weights: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class sums as a product with the one-hot matrix: deterministic on every device."""
    return weights @ torch.nn.functional.one_hot(labels, n_classes).to(weights.dtype)


def _votes_function(device: torch.device):
    """How to sum the votes per class on ``device``.

    On accelerators ``index_add`` accumulates with atomic adds, whose order (and so the
    last bits of the sums) changes from run to run; the estimators promise
    deterministic results (``non_deterministic=False`` in their tags), so there the
    sums are a matmul with the one-hot labels instead (``n_keys x n_classes`` values,
    e.g. 64 MB at 16k keys x 1000 classes in float32). Only Tip-Adapter-F training
    runs off the CPU; prediction and the CV grid run on the CPU.
    """
    return _index_add_votes if device.type == "cpu" else _one_hot_votes


def tip_adapter_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text_weights: torch.Tensor | None,
    alpha: float,
    beta: float,
    exclude: torch.Tensor | None = None,
    n_classes: int | None = None,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """Tip-Adapter logits ``s f W^T + b + alpha exp(-beta (1 - f K^T)) V``.

    Parameters
    ----------
    queries : Tensor of shape (n_queries, d)
        L2-normalized query features ``f``.
    keys : Tensor of shape (n_keys, d)
        Cache keys ``K`` (may require grad, as in Tip-Adapter-F).
    values : Tensor of shape (n_keys, n_classes), or integer Tensor of shape (n_keys,)
        Cache values ``V``: one-hot labels as a matrix, or as class indices (faster).
    text_weights : Tensor of shape (n_classes, d) or None
        Zero-shot text weights ``W``; ``None`` gives the cache term alone.
    alpha, beta : float
        Residual ratio and sharpness.
    exclude : bool Tensor of shape (n_queries, n_keys), optional
        Affinities to drop from the cache term (``True`` = excluded), e.g. each
        training sample's own key while fine-tuning.
    n_classes : int, optional
        Number of classes; needed when ``values`` are class indices.
    logit_scale, logit_bias : float, default=100.0, 0.0
        Zero-shot scale ``s`` and bias ``b`` of the text model (CLIP: 100 and 0).

    Returns
    -------
    logits : Tensor of shape (n_queries, n_classes)

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0]])
    >>> K, V = torch.eye(2), torch.eye(2)
    >>> tip_adapter_logits(f, K, V, None, alpha=1.0, beta=1.0)
    tensor([[1.0000, 0.3679]])
    """
    logits = alpha * cache_logits(queries @ keys.T, values, beta, exclude, n_classes)
    return with_zero_shot(logits, queries, text_weights, logit_scale, logit_bias)


def tip_adapter_grid(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text_weights: torch.Tensor | None,
    alphas: torch.Tensor,
    betas: Iterable[float],
    n_classes: int | None = None,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> Iterator[torch.Tensor]:
    """Tip-Adapter logits for a whole grid of (alpha, beta), sharing all the work.

    The affinities ``f K^T`` and the zero-shot term are computed once; the cache votes
    once per beta; every alpha is then a scaled sum. Same terms as
    :func:`tip_adapter_logits`, so each candidate's logits equal it.

    Yields
    ------
    logits : Tensor of shape (n_alphas, n_queries, n_classes)
        One per beta, in order: ``logits[i]`` is for ``alphas[i]``.
    """
    affinity = queries @ keys.T
    zero_shot = None
    if text_weights is not None:
        zero_shot = zero_shot_logits(queries, text_weights, logit_scale, logit_bias)
    for beta in betas:
        votes = cache_logits(affinity.clone(), values, float(beta), n_classes=n_classes)
        logits = alphas.view(-1, 1, 1) * votes
        yield logits if zero_shot is None else logits + zero_shot
