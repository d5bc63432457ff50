"""Encoding large image collections on a Dask cluster.

Needs the optional dependencies: ``pip install "skclip[distributed]"``. The core
package never imports Dask.

Two ways to scale out:

* :func:`transform` encodes a large collection with a ``dask.distributed`` client:
  the inputs are cut into partitions, each worker process loads the CLIP model once
  (lazily, on its first partition) and encodes its partitions, and the embeddings come
  back in input order.
* scikit-learn's own ``GridSearchCV``/``cross_val_score`` run on the cluster under
  ``joblib.parallel_config(backend="dask")``: skclip estimators pickle small (no
  weights), and every worker loads the model once.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any

import numpy as np

from .encoding import engine as _encode
from ._compat import HasMethods, Interval, validate_params
from .encoding.engine import Encoded, ItemError
from .backbones.loading import check_fingerprint, load_backbone
from ._images import describe
from .featurizer import CLIPFeaturizer


def _encode_partition(featurizer: CLIPFeaturizer, items: list) -> Encoded:
    """On a worker: embed one partition with the engine, keeping the good embeddings of a
    partition with bad inputs; those come back as errors (positions in the partition).

    A fitted featurizer first checks that the checkpoint the worker loads is the one it
    was fitted with, as :meth:`CLIPFeaturizer.transform` does."""
    clip = load_backbone(featurizer.model, featurizer.device, _encode.model_dtype(featurizer.dtype))
    check_fingerprint(featurizer, featurizer.model, clip)
    spec = _encode.spec_for(featurizer, n_views=0, seed=None, progress=False)
    return _encode.encode(items, spec, keep_going=True)


def _global_error(error: ItemError, start: int, partition: int, item: Any) -> ItemError:
    """A worker's error about input ``error.index`` of the partition that starts at input
    ``start``, numbered as the caller's input: the message names ``input start + index``
    (as ``featurizer.transform`` would), not the position in the partition."""
    local, position = describe(item, error.index), start + error.index
    message = error.message.replace(local, describe(item, position), 1)
    return ItemError(position, f"partition {partition}: {message}")


@validate_params(
    {
        "featurizer": [CLIPFeaturizer],
        "X": ["array-like", HasMethods(["__iter__"])],
        "client": [HasMethods(["map", "gather", "scheduler_info"])],
        "partition_size": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def transform(
    featurizer: CLIPFeaturizer,
    X: Any,
    client: Any,
    partition_size: int | None = None,
) -> np.ndarray:
    """Embed images on a Dask cluster, with the same result as ``featurizer.transform(X)``.

    Parameters
    ----------
    featurizer : CLIPFeaturizer
        Its parameters are sent to the workers (never model weights); ``model`` must be
        loadable on every worker (a hub id, or a folder on a shared file system).
    X : sequence of images
        As for :meth:`CLIPFeaturizer.transform`. File paths must be readable by the
        workers; PIL images and arrays travel with the tasks.
    client : distributed.Client
        A client of the cluster to use.
    partition_size : int, optional
        Images per task. By default enough for about 4 tasks per worker, and at least
        one batch.

    Returns
    -------
    embeddings : ndarray of shape (n_images, embedding_dim), dtype float32
        In input order.

    Raises
    ------
    CheckpointMismatchError
        If the featurizer is fitted and a worker finds another checkpoint under
        ``model`` than the one it was fitted with (checked on every worker).
    ImageLoadError
        With ``on_error="raise"`` (the featurizer's default), listing every bad input of
        every partition, after all partitions ran. With ``on_error="warn"``: one
        ``ImageLoadWarning`` and NaN rows instead.

    Examples
    --------
    >>> from dask.distributed import Client, LocalCluster  # doctest: +SKIP
    >>> from skclip import CLIPFeaturizer
    >>> from skclip.distributed import transform
    >>> with Client(LocalCluster(n_workers=2)) as client:  # doctest: +SKIP
    ...     X = transform(CLIPFeaturizer(model="clip-folder"), paths, client)
    """
    featurizer._validate_params()
    items = _encode.check_items(X)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    if partition_size is None:
        partition_size = max(featurizer.batch_size, math.ceil(len(items) / (4 * n_workers)))
    starts = range(0, len(items), partition_size)
    parts = [items[s : s + partition_size] for s in starts]
    futures = client.map(_encode_partition, [featurizer] * len(parts), parts, pure=False)
    results: list[Encoded] = client.gather(futures)  # in the order of the futures: input order
    out = np.concatenate([part.embeddings for part in results])
    errors = [
        _global_error(e, start, k, items[start + e.index])
        for k, (start, part) in enumerate(zip(starts, results))
        for e in part.errors
    ]
    _encode.report_errors(errors, len(items), featurizer.on_error, stacklevel=2)
    return out


__all__ = ["transform"]
