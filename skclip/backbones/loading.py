"""Loading checkpoints once per process.

A featurizer and a classifier that name the same checkpoint, device and dtype
share one loaded model through :func:`load_backbone`.
What is loaded is a :class:`skclip.backbones.families.Backbone`: the model with its family's
adapter (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, image-only), chosen from the checkpoint's
config. Estimators only ever store the *name* of a checkpoint, so pickled estimators
hold no weights and reload the model lazily on first use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from . import identity as _identity
from ._hub import DEFAULT_MODEL
from .families import Backbone, build_backbone
from .identity import CheckpointInfo


_DEVICES = ("auto", "cpu", "cuda", "mps")
#: The torch dtype of each ``dtype`` name skclip accepts (models, Tip-Adapter-F training).
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


_CACHE: dict[tuple[str, str, str], Backbone] = {}
_CACHE_LOCK = threading.Lock()


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a user ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` means CUDA when available, else CPU. Asking for ``"cuda"`` on a
    machine without CUDA raises a :class:`ValueError`.
    """
    device_str = str(device)
    if device_str == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device_str)
    except RuntimeError as exc:
        raise ValueError(
            f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or device='cpu'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={device!r} was requested but MPS is not available on this machine."
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Turn a user ``dtype`` parameter into a :class:`torch.dtype`.

    ``"auto"`` is float16 on CUDA and float32 elsewhere.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'."
        ) from None


def _pil_image_processor_class() -> type:
    """The CLIP image processor that needs no torchvision: ``CLIPImageProcessorPil`` in
    transformers 5, ``CLIPImageProcessor`` (the PIL/numpy one) in transformers 4."""
    import transformers

    pil = getattr(transformers, "CLIPImageProcessorPil", None)  # None in transformers 4.x
    return pil if pil is not None else transformers.CLIPImageProcessor


def load_backbone(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> Backbone:
    """Load a checkpoint once per ``(name_or_path, device, dtype)``.

    The checkpoint's config (``model_type``) picks its family's adapter: CLIP,
    MetaCLIP 2, SigLIP, SigLIP 2 (NaFlex) or, for any other image model with a pooled
    output (DINOv2...), an image-only backbone.

    Parameters
    ----------
    name_or_path : str or path-like, default="openai/clip-vit-base-patch32"
        A Hugging Face hub id or a local folder written by ``save_pretrained``.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
        ``"auto"`` is CUDA when available, else CPU.
    dtype : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        ``"auto"`` is float16 on CUDA and float32 elsewhere.

    Returns
    -------
    Backbone
        The shared, process-wide loaded model (eval mode) with its family's adapter.

    Raises
    ------
    OSError
        If the checkpoint cannot be found; for a hub id without internet the message
        shows how to pass a local folder instead.
    ValueError
        If the checkpoint is of no supported family (the message names its model type).

    Examples
    --------
    >>> from skclip.backbones.loading import load_backbone
    >>> clip = load_backbone(tiny_clip_path)  # a local folder, or a hub id with internet
    >>> clip.family, clip.embedding_dim, clip.logit_scale
    ('clip', 16, 100.0)
    """
    name = os.fspath(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (name, str(dev), str(dt))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _build_and_record(name, dev, dt)
        return _CACHE[key]


def _build_and_record(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    """:func:`~skclip.backbones.families.build_backbone`, with its identity recorded for
    later processes (:mod:`skclip.backbones.identity`), or taken from the record of its
    files (their fingerprints are then not computed again)."""
    start = time.time_ns()
    stamps = _identity.folder_stamps(_identity.checkpoint_folder(name))
    clip = build_backbone(name, device, dtype)
    if stamps is None or _identity.folder_stamps(_identity.checkpoint_folder(name)) != stamps:
        return clip  # no folder, or changed while loading: fingerprints from the weights
    info = _identity.read(name, device, dtype)
    if info is not None:
        _identity.seed(clip, info)
    else:
        _identity.write(clip, stamps, start)
    return clip


def loaded(
    name_or_path: str | os.PathLike, device: str | torch.device, dtype: str | torch.dtype
) -> Backbone | None:
    """The model :func:`load_backbone` would return, if it is loaded in this process."""
    dev = resolve_device(device)
    key = (os.fspath(name_or_path), str(dev), str(resolve_dtype(dtype, dev)))
    with _CACHE_LOCK:
        return _CACHE.get(key)


def checkpoint_identity(
    name_or_path: str | os.PathLike, device: str | torch.device, dtype: str | torch.dtype
) -> Backbone | CheckpointInfo:
    """What names the checkpoint, at the least cost: the model if it is loaded, else its
    recorded identity if its files are those recorded (see
    :mod:`skclip.backbones.identity`), else the model, loaded now.

    Both have the same ``fingerprint``, ``vision_fingerprint``, ``embedding_dim``,
    ``image_config``, ``device`` and ``dtype``.
    """
    clip = loaded(name_or_path, device, dtype)
    if clip is not None:
        return clip
    dev = resolve_device(device)
    info = _identity.read(os.fspath(name_or_path), dev, resolve_dtype(dtype, dev))
    return info if info is not None else load_backbone(name_or_path, device, dtype)


class CheckpointMismatchError(ValueError):
    """A fitted estimator found a different checkpoint than the one it was fitted with."""


def check_fingerprint(estimator: Any, name: Any, clip: Backbone | CheckpointInfo) -> None:
    """Raise :class:`CheckpointMismatchError` if ``estimator`` was fitted on another
    checkpoint than ``clip`` (its ``model_fingerprint_`` differs); no-op before fit."""
    stored = getattr(estimator, "model_fingerprint_", None)
    if stored is None or stored == clip.fingerprint:
        return
    raise CheckpointMismatchError(
        f"{type(estimator).__name__} was fitted with a checkpoint whose weights fingerprint is "
        f"{stored}, but {os.fspath(name)!r} now holds a different checkpoint (fingerprint "
        f"{clip.fingerprint}), so its results would not match what was fitted. Point it at the "
        "checkpoint it was fitted with (set_params(model=...) / clip_model=..., or "
        "`skclip predict --model PATH`), or fit again."
    )


_ON_CLEAR: list[Callable[[], None]] = []


def on_clear(forget: Callable[[], None]) -> None:
    """Call ``forget`` whenever :func:`clear_model_cache` runs: what was computed with the
    loaded models (the text weights of :mod:`skclip.text`) goes with them. Registering
    here lets those callers import this module, never the reverse."""
    if forget not in _ON_CLEAR:
        _ON_CLEAR.append(forget)


def clear_model_cache() -> None:
    """Forget every loaded model and the text weights computed with them (frees their
    memory once no estimator uses them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    for forget in _ON_CLEAR:
        forget()
