"""Loading checkpoints once per process.

A featurizer and a classifier that name the same checkpoint, device and dtype
share one loaded model through :func:`load_model` (also known as :func:`load_clip`).
What is loaded is a :class:`skclip.backbones.families.Backbone`: the model with its family's
adapter (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, image-only), chosen from the checkpoint's
config. Estimators only ever store the *name* of a checkpoint, so pickled estimators
hold no weights and reload the model lazily on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from .families import Backbone, build_backbone

DEFAULT_MODEL = "openai/clip-vit-base-patch32"

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


#: A loaded checkpoint of any supported family (the name predates the other families).
LoadedCLIP = Backbone

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
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or device='cpu'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available on this machine.")
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
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'."
        ) from None


def _path_reason(name: str) -> str | None:
    """Why ``name`` is meant as a local folder rather than a hub id (``None``: a hub id).

    Hub ids are ``"name"`` or ``"org/name"``. A name is a path when it is absolute,
    starts with ``.`` or ``~``, ends with a separator, uses ``\\`` (Windows) or more
    than one ``/``, is not a valid hub id, or its first part is a folder here
    (``models/clip-b32`` while ``models/`` exists).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isabs(name) or name.startswith((".", "~")):
        return "it is an absolute path or starts with '.' or '~'"
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if "\\" in name or name.endswith(tuple(seps)) or name.count("/") > 1:
        return "it is a path, not a hub id of the form 'name' or 'org/name'"
    if "/" in name and Path(name.split("/")[0]).is_dir():
        return f"the folder {name.split('/')[0]!r} exists here"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "it is not a valid hub id"
    return None


def _hub_unreachable(timeout: float = 2.0) -> str | None:
    """``None`` if the hub answers within ``timeout`` seconds, else why not.

    One quick request instead of the download code's retries, which take half a minute
    to give up without a network.
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # any transport error (httpx or requests): not reachable
        return f"{constants.ENDPOINT} did not answer within {timeout:g} s ({type(exc).__name__})"
    return None


def _offline_error(name: str, cause: BaseException | str) -> OSError:
    return OSError(
        f"Could not load the checkpoint {name!r}: it is not a local folder, and it is neither "
        "in the Hugging Face cache nor downloadable from the hub (no internet connection, or "
        "HF_HUB_OFFLINE=1). Pass a local folder instead, e.g. model='/path/to/clip-folder'. To make "
        "one, on a machine with internet run:\n"
        "    from transformers import AutoModel, AutoProcessor\n"
        f"    AutoModel.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"    AutoProcessor.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"and copy 'clip-folder' here. Original error: {cause}"
    )


def _check_readable(folder: Path, name: str) -> None:
    """A checkpoint folder whose listing or files cannot be read is named as such:
    transformers would report it as missing ("No such file") or as "Unrecognized model"."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"Checkpoint folder {name!r} cannot be read: {reason}.") from None
    for entry in entries:
        if entry.is_file() and not os.access(entry.path, os.R_OK):
            raise OSError(
                f"Checkpoint folder {name!r} cannot be read: its file {entry.name!r} is not "
                "readable (permission denied)."
            )


def _from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)``: a local folder, else the local cache, then the hub
    (if it answers within 2 s), with clear errors."""
    path = Path(name).expanduser()
    if path.is_dir():
        _check_readable(path, name)
        return cls.from_pretrained(str(path), **kwargs)
    reason = "it exists but is a file" if path.exists() else _path_reason(name)
    if reason is not None:
        raise OSError(
            f"Checkpoint folder {name!r} does not exist or is not a folder (read as a local "
            f"path, not a hub id: {reason}). Pass the folder written by `save_pretrained` (it "
            f"holds config.json and the weights), or a hub id such as {DEFAULT_MODEL!r}."
        )
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as first:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise _offline_error(name, first) from first
        unreachable = _hub_unreachable()
        if unreachable:
            raise _offline_error(name, f"the hub cannot be reached: {unreachable}") from first
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise _offline_error(name, exc) from exc


def _pil_image_processor_class() -> type:
    """The CLIP image processor that needs no torchvision: ``CLIPImageProcessorPil`` in
    transformers 5, ``CLIPImageProcessor`` (the PIL/numpy one) in transformers 4."""
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil
    return CLIPImageProcessorPil


def load_model(
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
    >>> from skclip.backbones.loading import load_model
    >>> clip = load_model(tiny_clip_path)  # a local folder, or a hub id with internet
    >>> clip.family, clip.embedding_dim, clip.logit_scale
    ('clip', 16, 100.0)
    """
    name = os.fspath(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (name, str(dev), str(dt))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_backbone(name, dev, dt)
        return _CACHE[key]


#: The loader's first name, from when only CLIP was supported.
load_clip = load_model


class CheckpointMismatchError(ValueError):
    """A fitted estimator found a different checkpoint than the one it was fitted with."""


def check_fingerprint(estimator: Any, name: Any, clip: LoadedCLIP) -> None:
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


def clear_model_cache() -> None:
    """Forget every loaded model and the text weights computed with them (frees their
    memory once no estimator uses them)."""
    from ..text import clear_text_cache  # text.py imports this module

    with _CACHE_LOCK:
        _CACHE.clear()
    clear_text_cache()
