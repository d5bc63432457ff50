"""Loading CLIP checkpoints once per process.

A featurizer and a classifier that name the same checkpoint, device and dtype
share one loaded model through :func:`load_clip`. Estimators only ever store the
*name* of a checkpoint, so pickled estimators hold no weights and reload the model
lazily on first use.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL = "openai/clip-vit-base-patch32"

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(eq=False)
class LoadedCLIP:
    """A loaded CLIP checkpoint with what is needed to use it.

    Attributes
    ----------
    name : str
        The name or path the checkpoint was loaded from.
    model : transformers.CLIPModel
        The model, in eval mode, on ``device`` in ``dtype``.
    tokenizer : transformers tokenizer
        The checkpoint's tokenizer (``None`` if the folder has none).
    image_config : dict
        The checkpoint's image-processor settings (size, crop size, mean, std...).
    device : torch.device
    dtype : torch.dtype
    """

    name: str
    model: Any
    tokenizer: Any
    image_config: dict
    device: torch.device
    dtype: torch.dtype

    @property
    def embedding_dim(self) -> int:
        """Dimension of the projected image/text embeddings."""
        return int(self.model.config.projection_dim)

    @functools.cached_property
    def vision_fingerprint(self) -> str:
        """Hash of the image tower's weights (names, shapes, dtypes and values).

        Identifies the model in embedding-cache keys across processes: two folders with
        the same weights share entries, a retrained model with the same name does not.
        """
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        modules = {"vision_model": self.model.vision_model,
                   "visual_projection": self.model.visual_projection}
        for prefix, module in modules.items():
            for name, tensor in module.state_dict().items():
                t = tensor.detach().cpu().contiguous()
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    @functools.cached_property
    def text_fingerprint(self) -> str:
        """Hash of the text tower's weights and the tokenizer's vocabulary.

        Keys the text-weight cache (``skclip.text``) as ``vision_fingerprint`` keys the
        embedding cache: a checkpoint folder rewritten in place gets fresh text weights.
        """
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        modules = {"text_model": self.model.text_model,
                   "text_projection": self.model.text_projection}
        for prefix, module in modules.items():
            for name, tensor in module.state_dict().items():
                t = tensor.detach().cpu().contiguous()
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if self.tokenizer is not None:
            vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            h.update(f"{type(self.tokenizer).__name__}:{len(vocab)}".encode())
            h.update("\n".join(token for token, _ in vocab).encode("utf-8", "surrogatepass"))
        return h.hexdigest()


_CACHE: dict[tuple[str, str, str], LoadedCLIP] = {}
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


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``"name"`` or ``"org/name"``; anything else is meant as a folder."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _offline_error(name: str, cause: BaseException) -> OSError:
    return OSError(
        f"Could not load the CLIP checkpoint {name!r}: it is not a local folder, and it is neither "
        "in the Hugging Face cache nor downloadable from the hub (no internet connection, or "
        "HF_HUB_OFFLINE=1). Pass a local folder instead, e.g. model='/path/to/clip-folder'. To make "
        "one, on a machine with internet run:\n"
        "    from transformers import CLIPModel, CLIPProcessor\n"
        f"    CLIPModel.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"    CLIPProcessor.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"and copy 'clip-folder' here. Original error: {cause}"
    )


def _from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)``: the local cache first, then the hub, with clear errors."""
    path = Path(name).expanduser()
    if path.is_dir():
        return cls.from_pretrained(str(path), **kwargs)
    if path.exists() or _looks_like_path(name):
        raise OSError(
            f"CLIP checkpoint folder {name!r} does not exist or is not a folder. Pass the folder "
            "written by `save_pretrained` (it holds config.json and the weights), or a hub id such "
            f"as {DEFAULT_MODEL!r}."
        )
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as first:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise _offline_error(name, first) from first
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise _offline_error(name, exc) from exc


def _image_config(name: str) -> dict:
    """Read the checkpoint's image-processor settings without needing torchvision."""
    from transformers import CLIPImageProcessorPil

    proc = _from_pretrained(CLIPImageProcessorPil, name)
    size = dict(proc.size)
    crop = dict(proc.crop_size) if proc.crop_size is not None else None
    return {
        "do_resize": bool(proc.do_resize),
        "shortest_edge": size.get("shortest_edge"),
        "size": (size.get("height"), size.get("width")),
        "resample": int(proc.resample),
        "do_center_crop": bool(proc.do_center_crop),
        "crop_size": (crop["height"], crop["width"]) if crop else None,
        "do_rescale": bool(proc.do_rescale),
        "rescale_factor": float(proc.rescale_factor),
        "do_normalize": bool(proc.do_normalize),
        "image_mean": tuple(float(m) for m in proc.image_mean),
        "image_std": tuple(float(s) for s in proc.image_std),
    }


def load_clip(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> LoadedCLIP:
    """Load a CLIP checkpoint once per ``(name_or_path, device, dtype)``.

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
    LoadedCLIP
        The shared, process-wide loaded model (eval mode).

    Raises
    ------
    OSError
        If the checkpoint cannot be found; for a hub id without internet the message
        shows how to pass a local folder instead.

    Examples
    --------
    >>> from skclip._models import load_clip
    >>> clip = load_clip(tiny_clip_path)  # a local folder, or a hub id with internet
    >>> clip.embedding_dim
    16
    """
    name = os.fspath(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (name, str(dev), str(dt))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoTokenizer, CLIPModel

        model = _from_pretrained(CLIPModel, name, dtype=dt)
        model.to(dev).eval()
        model.requires_grad_(False)
        try:
            tokenizer = _from_pretrained(AutoTokenizer, name)
        except (OSError, ValueError):
            tokenizer = None
        loaded = LoadedCLIP(
            name=name,
            model=model,
            tokenizer=tokenizer,
            image_config=_image_config(name),
            device=dev,
            dtype=dt,
        )
        _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model (frees their memory once no estimator uses them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
