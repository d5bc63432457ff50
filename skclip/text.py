"""Prompt templates, class-name cleaning and zero-shot text weights.

The text weights ``W`` of Tip-Adapter are the CLIP text embeddings of each class
name put into every prompt template, each L2-normalized, averaged over templates
and normalized again (prompt ensembling, Radford et al. 2021). They are cached per
(text weights, templates, class names): refitting a classifier never re-encodes text,
and a checkpoint folder rewritten in place is encoded afresh. The key is the loaded
model's ``text_fingerprint`` (its text tower's weights and tokenizer vocabulary), as
image embeddings are keyed by ``vision_fingerprint``.

Worker processes of a parallel search also leave them in the temporary folder they
share with their parent (:func:`skclip.encoding.cache.worker_folder`), so the final
refit in the parent, whose images the workers encoded, finds them too
(:func:`shared_text_weights`) and needs no model at all.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import numpy as np
import torch

from .backbones.identity import CheckpointInfo
from .backbones.loading import Backbone, on_clear
from .encoding.cache import DiskStore, settings_digest, worker_folder

#: The 7-prompt ensemble that the CLIP authors selected for ImageNet and that the
#: Tip-Adapter paper uses for its ImageNet experiments.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: The single prompt CLIP uses by default.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

_TEXT_CACHE: dict[tuple, np.ndarray] = {}
_TEXT_LOCK = threading.Lock()


def clean_class_name(label: object) -> str:
    """A readable class name from a label: ``"scratch_mark"`` -> ``"scratch mark"``.

    Examples
    --------
    >>> clean_class_name("golden_retriever-dog")
    'golden retriever dog'
    """
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(label))).strip()


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Validate ``templates`` (``"auto"``, ``"simple"`` or a list of strings with ``{}``).

    Examples
    --------
    >>> resolve_templates(["a photo of a {}, a defect."])
    ('a photo of a {}, a defect.',)
    """
    if isinstance(templates, str):
        if templates == "auto":
            return IMAGENET_TEMPLATES
        if templates == "simple":
            return SIMPLE_TEMPLATES
        raise ValueError(
            f"templates={templates!r} is not valid: use 'auto', 'simple' or a list of strings "
            "containing '{}' (for example ['a photo of a {}.'])."
        )
    out = tuple(templates)
    if not out:
        raise ValueError("templates must not be empty.")
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(
                "Each template must be a string with exactly one '{}' for the class name; "
                f"got {t!r}."
            )
    return out


def text_weights(
    clip: Backbone, class_names: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """Prompt-ensembled, L2-normalized text embeddings, one row per class.

    Parameters
    ----------
    clip : Backbone
        The loaded checkpoint (see ``skclip.backbones.loading.load_backbone``).
    class_names : sequence of str
    templates : sequence of str
        Each with one ``{}`` for the class name.

    Returns
    -------
    W : ndarray of shape (n_classes, embedding_dim), dtype float32
        Cached per (text weights and tokenizer, device, dtype, templates, class
        names); a read-only array.

    Raises
    ------
    ValueError
        For an image-only backbone, or a checkpoint without a usable tokenizer.

    Examples
    --------
    >>> from skclip.backbones.loading import load_backbone
    >>> W = text_weights(load_backbone(tiny_clip_path, "cpu"), ["cat", "dog"], SIMPLE_TEMPLATES)
    >>> W.shape, W.dtype
    ((2, 16), dtype('float32'))
    """
    key = _key(clip, class_names, templates)
    cached = _cached(key, clip.embedding_dim)
    if cached is not None:
        return cached
    prompts = [t.format(name) for name in class_names for t in templates]
    embs = []
    for start in range(0, len(prompts), 256):
        # the family's text tower, tokenized as it was trained (SigLIP: max-length padding)
        out = clip.text_features(prompts[start : start + 256])
        embs.append(torch.nn.functional.normalize(out, dim=-1).cpu())
    emb = torch.cat(embs).reshape(len(class_names), len(templates), -1).mean(dim=1)
    W = torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32)
    W.setflags(write=False)
    with _TEXT_LOCK:
        _TEXT_CACHE[key] = W
    store = _shared_store(W.size)
    if store is not None:
        store.put(settings_digest(*key), W.ravel())
    return W


def shared_text_weights(
    clip: Backbone | CheckpointInfo, class_names: Sequence[str], templates: Sequence[str]
) -> np.ndarray | None:
    """:func:`text_weights` if they were computed before, in this process or by a worker
    process of it (or a sibling worker), found without the model: ``clip`` may be the
    checkpoint's recorded identity. None if they were not.

    Examples
    --------
    >>> from skclip.backbones.loading import load_backbone
    >>> clip = load_backbone(tiny_clip_path, "cpu")
    >>> shared_text_weights(clip, ["an owl"], SIMPLE_TEMPLATES) is None
    True
    >>> W = text_weights(clip, ["an owl"], SIMPLE_TEMPLATES)
    >>> shared_text_weights(clip, ["an owl"], SIMPLE_TEMPLATES) is W
    True
    """
    if isinstance(clip, CheckpointInfo):
        ready = clip.text_fingerprint is not None
    else:
        ready = clip.has_text and clip.tokenizer is not None
    if not ready:
        return None  # text_weights() says why
    return _cached(_key(clip, class_names, templates), clip.embedding_dim)


def _key(
    clip: Backbone | CheckpointInfo, class_names: Sequence[str], templates: Sequence[str]
) -> tuple:
    return (
        clip.text_fingerprint,
        str(clip.device),
        str(clip.dtype),
        tuple(templates),
        tuple(class_names),
    )


def _cached(key: tuple, dim: int) -> np.ndarray | None:
    """The text weights of ``key`` from memory, else from the folder shared with worker
    processes (then kept in memory)."""
    with _TEXT_LOCK:
        cached = _TEXT_CACHE.get(key)
    if cached is not None:
        return cached
    n_classes = len(key[-1])
    store = _shared_store(n_classes * dim)
    vec = None if store is None else store.get(settings_digest(*key))
    if vec is None:
        return None
    W = np.array(vec, dtype=np.float32).reshape(n_classes, dim)
    W.setflags(write=False)
    with _TEXT_LOCK:
        _TEXT_CACHE[key] = W
    return W


def _shared_store(size: int) -> DiskStore | None:
    """The store of text weights of ``size`` floats in the folder a process shares with
    its workers, or None (a process without workers)."""
    folder = worker_folder()
    return None if folder is None else DiskStore(folder / "text", size)


def clear_text_cache() -> None:
    """Forget every cached text weight matrix (frees their memory).

    Not needed for correctness: entries are keyed by the text tower's weights, so a
    changed checkpoint never reads a stale one.

    Examples
    --------
    >>> clear_text_cache()
    """
    with _TEXT_LOCK:
        _TEXT_CACHE.clear()


on_clear(clear_text_cache)  # clear_model_cache() forgets the text weights too
