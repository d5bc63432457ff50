"""Tip-Adapter-F: training the cache keys, as a pure function.

Like the private solvers of ``sklearn/linear_model/_ridge.py``, :func:`fine_tune_keys`
does the maths on arrays and knows nothing of estimators: ``TipAdapterClassifier.fit``
calls it once, ``TipAdapterClassifierCV.fit`` once per fold and once to refit. The
loss is the cross-entropy of :func:`skclip._formula.tip_adapter_logits`, the one
place the formula lives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from ._formula import CLIP_LOGIT_SCALE, tip_adapter_logits
from ._models import resolve_device


class FineTuneResult(NamedTuple):
    """What :func:`fine_tune_keys` returns.

    Attributes
    ----------
    keys : ndarray of shape (n_kept, n_features)
        The trained keys (of the best epoch with a validation split, else the last),
        in ``X``'s dtype.
    kept : ndarray of int of shape (n_kept,)
        Sorted indices into ``X`` of the samples whose keys are in the cache (all of
        them, or the training part when ``validation_fraction`` holds some out).
    loss_curve : list of float
        Mean training loss per epoch.
    validation_scores : list of float or None
        Held-out accuracy per epoch; ``None`` without a validation split.
    best_epoch : int
        1-based epoch whose keys were kept.
    """

    keys: np.ndarray
    kept: np.ndarray
    loss_curve: list[float]
    validation_scores: list[float] | None
    best_epoch: int


def fine_tune_keys(
    X: np.ndarray,
    y_enc: np.ndarray,
    n_classes: int,
    text_weights: np.ndarray | None,
    *,
    alpha: float,
    beta: float,
    epochs: int,
    lr: float,
    batch_size: int,
    validation_fraction: float | None = None,
    leave_one_out: bool = True,
    device: str | torch.device = "auto",
    random_state: int | np.random.RandomState | None = None,
    verbose: int = 0,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
) -> FineTuneResult:
    """Train Tip-Adapter cache keys with cross-entropy (Tip-Adapter-F).

    AdamW (``eps=1e-4``) with a cosine learning-rate schedule over all steps; the
    keys start as the training features and the values stay their one-hot labels.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        L2-normalized training features (float32 or float64).
    y_enc : ndarray of int of shape (n_samples,)
        Labels encoded as ``0 .. n_classes - 1``.
    n_classes : int
        Number of classes (columns of the logits).
    text_weights : ndarray of shape (n_classes, n_features) or None
        L2-normalized zero-shot text weights ``W``; ``None`` trains a pure cache model.
    alpha, beta : float
        Residual ratio and sharpness the loss is computed at.
    epochs, lr, batch_size : int, float, int
        Epochs, AdamW learning rate and mini-batch size.
    validation_fraction : float or None, default=None
        Hold out this stratified fraction, score it after every epoch and keep the
        keys of the first best epoch; the held-out samples are not kept in the cache.
    leave_one_out : bool, default=True
        Drop each training sample's affinity with its own key from its logits.
    device : str or torch.device, default="auto"
        Where to train.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split and the per-epoch shuffles (in that order).
    verbose : int, default=0
        Print the loss (and validation accuracy) per epoch if > 0.
    logit_scale, logit_bias : float, default=100.0, 0.0
        Zero-shot scale and bias of the text model (CLIP: 100 and 0).

    Returns
    -------
    result : FineTuneResult
        ``keys``, ``kept``, ``loss_curve``, ``validation_scores``, ``best_epoch``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import normalize
    >>> rng = np.random.RandomState(0)
    >>> X = normalize(rng.normal(size=(20, 4)))
    >>> y = np.arange(20) % 2
    >>> res = fine_tune_keys(X, y, 2, None, alpha=1.0, beta=5.5, epochs=3, lr=1e-2,
    ...                      batch_size=8, device="cpu", random_state=0)
    >>> res.keys.shape, len(res.loss_curve), res.best_epoch
    ((20, 4), 3, 3)
    """
    rng = check_random_state(random_state)
    dev = resolve_device(device)
    train = np.arange(len(X))
    val = None
    if validation_fraction is not None:
        try:
            train, val = train_test_split(
                train, test_size=validation_fraction, stratify=y_enc, random_state=rng
            )
        except ValueError as exc:
            raise ValueError(
                f"validation_fraction={validation_fraction} cannot hold out a stratified "
                f"part of {len(X)} samples in {n_classes} classes ({exc}); use more "
                "samples per class or validation_fraction=None."
            ) from exc
        train.sort()
        val.sort()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=dev)

    feats, labels = t(X[train]), torch.as_tensor(y_enc[train], device=dev)
    W = None if text_weights is None else t(text_weights)
    zero_shot = {"logit_scale": logit_scale, "logit_bias": logit_bias}
    keys = torch.nn.Parameter(feats.clone())
    n, n_batches = len(train), math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)
    loss_curve: list[float] = []
    validation_scores: list[float] | None = [] if val is not None else None
    best_score, best_keys, best_epoch = -np.inf, None, epochs
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for b in range(n_batches):
            idx = torch.as_tensor(order[b * batch_size : (b + 1) * batch_size], device=dev)
            exclude = None
            if leave_one_out:
                exclude = torch.zeros(len(idx), n, dtype=torch.bool, device=dev)
                exclude[torch.arange(len(idx), device=dev), idx] = True
            logits = tip_adapter_logits(
                feats[idx], keys, labels, W, alpha, beta, exclude, n_classes, **zero_shot
            )
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        loss_curve.append(total / n)
        msg = f"epoch {epoch + 1}/{epochs}: loss {loss_curve[-1]:.4f}"
        if val is not None:
            with torch.no_grad():
                pred = tip_adapter_logits(
                    t(X[val]), keys, labels, W, alpha, beta, n_classes=n_classes, **zero_shot
                )
                score = float((pred.argmax(1).cpu().numpy() == y_enc[val]).mean())
            validation_scores.append(score)
            msg += f", validation accuracy {score:.4f}"
            if score > best_score:
                best_score, best_keys, best_epoch = score, keys.detach().clone(), epoch + 1
        if verbose:
            print(msg)
    final = best_keys if best_keys is not None else keys.detach()
    return FineTuneResult(
        keys=final.cpu().numpy().astype(X.dtype),
        kept=train,
        loss_curve=loss_curve,
        validation_scores=validation_scores,
        best_epoch=best_epoch,
    )
