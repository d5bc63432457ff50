"""Prompt templates, class-name cleaning and zero-shot text weights.

The text weights ``W`` of Tip-Adapter are the CLIP text embeddings of each class
name put into every prompt template, each L2-normalized, averaged over templates
and normalized again (prompt ensembling, Radford et al. 2021). They are cached per
(text weights, templates, class names): refitting a classifier never re-encodes text,
and a checkpoint folder rewritten in place is encoded afresh. The key is the loaded
model's ``text_fingerprint`` (its text tower's weights and tokenizer vocabulary), as
image embeddings are keyed by ``vision_fingerprint``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import numpy as np
import torch

from .backbones.loading import Backbone, on_clear

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
    key = (
        clip.text_fingerprint,
        str(clip.device),
        str(clip.dtype),
        tuple(templates),
        tuple(class_names),
    )
    with _TEXT_LOCK:
        cached = _TEXT_CACHE.get(key)
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
    return W


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
