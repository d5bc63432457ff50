"""Tip-Adapter-F: training the cache keys, as a pure function.

Like the private solvers of ``sklearn/linear_model/_ridge.py``, :func:`fine_tune_keys`
does the maths on arrays and knows nothing of estimators: ``TipAdapterClassifier.fit``
calls it once, ``TipAdapterClassifierCV.fit`` once per fold and once to refit. The
loss is the cross-entropy of :func:`skclip.heads._formula.tip_adapter_logits`, the one
place the formula lives.

The defaults (at least 300 optimizer steps, normalized keys) were chosen on
``benchmarks/bench_tip_f.py``; the user guide's "When does fine-tuning help?" has the
table. ``train_dtype="float16"`` reproduces the float16 regime of the reference
code's GPU runs, where AdamW's second moment underflows.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from ._formula import CLIP_LOGIT_SCALE, tip_adapter_logits
from ..backbones.loading import TORCH_DTYPES, resolve_device

#: ``epochs="auto"``: the reference's 20 epochs, or more to make at least 300 AdamW steps.
AUTO_EPOCHS = 20
AUTO_STEPS = 300
#: ``validation_fraction="auto"`` holds out this fraction ...
AUTO_VALIDATION_FRACTION = 0.1
#: ... when every class has at least this many samples (else it holds out nothing).
AUTO_VALIDATION_MIN_SAMPLES = 20


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
        Mean training loss per epoch (empty when nothing could be trained).
    validation_scores : list of float or None
        Held-out accuracy per epoch; ``None`` without a validation split.
    best_epoch : int
        1-based epoch whose keys were kept; 0 when nothing was trained.
    """

    keys: np.ndarray
    kept: np.ndarray
    loss_curve: list[float]
    validation_scores: list[float] | None
    best_epoch: int


def resolve_validation_fraction(
    validation_fraction: float | str | None, y_enc: np.ndarray, n_classes: int
) -> float | None:
    """``"auto"``: ``AUTO_VALIDATION_FRACTION`` if every class has at least
    ``AUTO_VALIDATION_MIN_SAMPLES`` samples, else ``None``; other values unchanged."""
    if not isinstance(validation_fraction, str):  # the only string is "auto"
        return validation_fraction
    smallest = np.bincount(y_enc, minlength=n_classes).min()
    return AUTO_VALIDATION_FRACTION if smallest >= AUTO_VALIDATION_MIN_SAMPLES else None


def resolve_epochs(epochs: int | str, n_queries: int, batch_size: int) -> int:
    """``"auto"``: ``AUTO_EPOCHS``, or the fewest whole epochs with ``AUTO_STEPS`` steps
    if that is more (small data sets, where an epoch is a step or two)."""
    if epochs != "auto":
        return int(epochs)
    steps_per_epoch = max(1, math.ceil(n_queries / batch_size))
    return max(AUTO_EPOCHS, math.ceil(AUTO_STEPS / steps_per_epoch))


def fine_tune_keys(
    X: np.ndarray,
    y_enc: np.ndarray,
    n_classes: int,
    text_weights: np.ndarray | None,
    *,
    alpha: float,
    beta: float,
    epochs: int | str,
    lr: float,
    batch_size: int,
    validation_fraction: float | str | None = None,
    leave_one_out: bool = True,
    normalize_keys: bool = True,
    train_dtype: str = "float32",
    device: str | torch.device = "auto",
    random_state: int | np.random.RandomState | None = None,
    verbose: int = 0,
    logit_scale: float = CLIP_LOGIT_SCALE,
    logit_bias: float = 0.0,
    views: np.ndarray | None = None,
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
    epochs : int or "auto"
        Epochs; ``"auto"``: see :func:`resolve_epochs`.
    lr, batch_size : float, int
        AdamW learning rate and mini-batch size.
    validation_fraction : float, "auto" or None, default=None
        Hold out this stratified fraction, score it after every epoch and keep the
        keys of the first best epoch; the held-out samples are not kept in the cache.
        ``"auto"``: see :func:`resolve_validation_fraction`.
    leave_one_out : bool, default=True
        Drop each training sample's affinity with its own key from its logits. A
        sample alone in its class then has no key left to vote for it: it is not used
        as a query (its key still trains as the others' neighbour).
    normalize_keys : bool, default=True
        Use the keys L2-normalized in the loss and return them normalized.
    train_dtype : {"float32", "float16"}, default="float32"
        Dtype of the keys, their gradients and AdamW's moments (torch's single-tensor
        AdamW, whose float16 moments are those of the reference's float16 GPU runs);
        features and text weights are rounded to it. The loss is computed in float32.
    device : str or torch.device, default="auto"
        Where to train.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split and the per-epoch shuffles (in that order).
    verbose : int, default=0
        Print the loss (and validation accuracy) per epoch if > 0.
    logit_scale, logit_bias : float, default=100.0, 0.0
        Zero-shot scale and bias of the text model (CLIP: 100 and 0).
    views : ndarray of shape (n_views, n_samples, n_features) or None, default=None
        L2-normalized features of random views of the training images (row ``i`` of
        each view is sample ``i``). Epoch ``e`` uses ``views[e % n_views]`` as the
        training queries, as the reference trains on a fresh augmented view of every
        image each epoch; the keys still start as ``X``, leave-one-out still drops a
        sample's own key, and validation scores the held-out rows of ``X``. ``None``:
        ``X`` is every epoch's queries.

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
    _check_views(views, X)
    rng = check_random_state(random_state)
    dev = resolve_device(device)
    dtype = TORCH_DTYPES[train_dtype]
    validation_fraction = resolve_validation_fraction(validation_fraction, y_enc, n_classes)
    train, val = _validation_split(X, y_enc, n_classes, validation_fraction, rng)
    t = functools.partial(_on, device=dev, dtype=dtype)
    feats, labels = t(X[train]), torch.as_tensor(y_enc[train], device=dev)
    # Queries per epoch: the training features, or a view of them (cycled).
    epoch_queries = [feats] if views is None else [t(v[train]) for v in views]
    keys = torch.nn.Parameter(feats.to(dtype, copy=True))
    queries = _query_rows(y_enc[train], n_classes, leave_one_out)
    epochs = resolve_epochs(epochs, len(queries), batch_size) if len(queries) else 0
    W = None if text_weights is None else t(text_weights)
    zero_shot = {"logit_scale": logit_scale, "logit_bias": logit_bias}
    head = _Loss(labels, W, alpha, beta, n_classes, normalize_keys, leave_one_out, zero_shot)
    held_out = None if val is None else (t(X[val]), y_enc[val])
    loss_curve, validation_scores, best_keys, best_epoch = _train(
        head, keys, epoch_queries, queries, held_out, epochs, lr, batch_size, rng, verbose
    )
    with torch.no_grad():
        final = head.used(best_keys if best_keys is not None else keys.detach())
    final_keys = final.cpu().numpy().astype(X.dtype)
    return FineTuneResult(final_keys, train, loss_curve, validation_scores, best_epoch)


def _check_views(views: np.ndarray | None, X: np.ndarray) -> None:
    if views is not None and (views.ndim != 3 or views.shape[1:] != X.shape):
        raise ValueError(
            f"views must have shape (n_views, n_samples, n_features) = (n_views, {X.shape[0]}, "
            f"{X.shape[1]}) like X; got shape {views.shape}."
        )


def _train(
    head: _Loss,
    keys: torch.nn.Parameter,
    epoch_queries: list[torch.Tensor],
    queries: np.ndarray,
    held_out: tuple[torch.Tensor, np.ndarray] | None,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.RandomState,
    verbose: int,
) -> tuple[list[float], list[float] | None, torch.Tensor | None, int]:
    """The training loop: the loss per epoch, the held-out accuracy per epoch (None
    without ``held_out``), the keys of the first best epoch (None without) and its
    number (``epochs`` without validation)."""
    n_batches = math.ceil(len(queries) / batch_size)
    # torch's single-tensor AdamW keeps float16 moments for float16 keys, as the
    # reference's runs did; the fused kernel would compute them in float32.
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4, foreach=False, fused=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    loss_curve: list[float] = []
    validation_scores: list[float] | None = [] if held_out is not None else None
    best_score, best_keys, best_epoch = -np.inf, None, epochs
    for epoch in range(epochs):
        order = queries[rng.permutation(len(queries))]
        epoch_feats = epoch_queries[epoch % len(epoch_queries)]
        total = _epoch(head, keys, opt, sched, epoch_feats, order, batch_size)
        loss_curve.append(total / len(queries))
        msg = f"epoch {epoch + 1}/{epochs}: loss {loss_curve[-1]:.4f}"
        if held_out is not None and validation_scores is not None:
            score = head.accuracy(keys, *held_out)
            validation_scores.append(score)
            msg += f", validation accuracy {score:.4f}"
            if score > best_score:
                best_score, best_keys, best_epoch = score, keys.detach().clone(), epoch + 1
        if verbose:
            print(msg)
    return loss_curve, validation_scores, best_keys, best_epoch


def _on(a: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """On the device, rounded to the training dtype, computed in float32."""
    return torch.as_tensor(a, device=device).to(dtype).to(torch.float32)


def _validation_split(
    X: np.ndarray,
    y_enc: np.ndarray,
    n_classes: int,
    validation_fraction: float | None,
    rng: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training rows and the held-out rows (None without validation), sorted."""
    train = np.arange(len(X))
    if validation_fraction is None:
        return train, None
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
    return train, val


def _query_rows(y_train: np.ndarray, n_classes: int, leave_one_out: bool) -> np.ndarray:
    """The training rows used as queries: all, or with ``leave_one_out`` those whose
    class has another key to vote for it (a warning when there is none)."""
    if not leave_one_out:
        return np.arange(len(y_train))
    per_class = np.bincount(y_train, minlength=n_classes)
    queries = np.flatnonzero(per_class[y_train] >= 2)
    if len(queries) == 0:
        warnings.warn(
            "fine_tune=True with leave_one_out=True needs a class with 2 or more "
            "training samples (each sample is scored without its own key); every "
            "class has 1, so the keys stay the training features (training-free "
            "Tip-Adapter). Set leave_one_out=False to train anyway.",
            UserWarning,
            stacklevel=4,
        )
    return queries


class _Loss(NamedTuple):
    """The Tip-Adapter logits the keys are trained on (values: the training labels)."""

    labels: torch.Tensor
    text_weights: torch.Tensor | None
    alpha: float
    beta: float
    n_classes: int
    normalize_keys: bool
    leave_one_out: bool  # each query's own key is left out of its logits
    zero_shot: dict

    def used(self, keys: torch.Tensor) -> torch.Tensor:
        """The keys as the loss and the predictions see them."""
        keys = keys.to(torch.float32)
        return torch.nn.functional.normalize(keys, dim=1) if self.normalize_keys else keys

    def logits(
        self, queries: torch.Tensor, keys: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        return tip_adapter_logits(
            queries,
            self.used(keys),
            self.labels,
            self.text_weights,
            self.alpha,
            self.beta,
            exclude,
            self.n_classes,
            **self.zero_shot,
        )

    def accuracy(self, keys: torch.Tensor, queries: torch.Tensor, y: np.ndarray) -> float:
        """Accuracy of the current keys on held-out ``queries`` with labels ``y``."""
        with torch.no_grad():
            pred = self.logits(queries, keys)
            return float((pred.argmax(1).cpu().numpy() == y).mean())


def _epoch(
    head: _Loss,
    keys: torch.nn.Parameter,
    opt: torch.optim.Optimizer,
    sched: Any,
    feats: torch.Tensor,
    order: np.ndarray,
    batch_size: int,
) -> float:
    """One pass over the queries in ``order``, in mini-batches: the summed loss."""
    dev, n = feats.device, len(feats)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = torch.as_tensor(order[start : start + batch_size], device=dev)
        exclude = None
        if head.leave_one_out:
            exclude = torch.zeros(len(idx), n, dtype=torch.bool, device=dev)
            exclude[torch.arange(len(idx), device=dev), idx] = True
        loss = torch.nn.functional.cross_entropy(
            head.logits(feats[idx], keys, exclude), head.labels[idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total
