"""One small adapter per backbone family, chosen from the checkpoint's config.

A loaded checkpoint is a :class:`Backbone`: the model with what skclip needs to use
it, whatever its family: how to embed a preprocessed image batch
(:meth:`Backbone.embed_images`) and prompts (:meth:`Backbone.text_features`), the
logit scale and bias of its zero-shot head, its preprocessing, the fingerprint of its
image tower (embedding-cache keys) and its embedding dimension.

The family comes from the checkpoint's ``config.json`` (``model_type``), never from
its name:

============  ===============================  ==========================================
family        model class                      zero-shot logits of the text head
============  ===============================  ==========================================
clip          ``CLIPModel``                    ``100 cos(f, w)`` (Tip-Adapter's fixed scale)
metaclip_2    ``MetaClip2Model``               ``100 cos(f, w)``, as CLIP
siglip        ``SiglipModel``                  ``exp(logit_scale) cos(f, w) + logit_bias``
siglip2       ``Siglip2Model`` (NaFlex input)  ``exp(logit_scale) cos(f, w) + logit_bias``
image-only    any ``AutoModel`` with a         none: cache model only
              ``pooler_output`` (DINOv2...)
============  ===============================  ==========================================

CLIP and MetaCLIP 2 are trained with a softmax loss whose scale is clamped at 100,
and released weights sit at that clamp; skclip uses exactly 100 there, as the
Tip-Adapter paper does, so CLIP results are unchanged bit for bit (the stored value
stays available as ``learned_logit_scale``). SigLIP's sigmoid loss learns a scale and
a bias (initialised at 10 and -10 in the SigLIP paper) that both shape its
probabilities: they are read from the weights.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .._compat import pooled_embeddings
from .._hashing import hasher
from ._hub import from_pretrained
from .preprocess import image_config, make_preprocessor

#: The zero-shot scale of the CLIP family (see the module docstring).
CLIP_LOGIT_SCALE = 100.0


class NoTextTowerError(ValueError):
    """The backbone has no text tower (image-only), or no usable tokenizer."""


#: Keys of a model's configuration that say how it was loaded, not what it computes.
_CONFIG_VOLATILE = frozenset(
    {"_name_or_path", "dtype", "torch_dtype", "transformers_version", "_commit_hash"}
)


def _config_json(model: Any) -> str:
    """The model's configuration as canonical JSON, without :data:`_CONFIG_VOLATILE`
    keys (at any depth): part of the fingerprints."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _CONFIG_VOLATILE}
        return value

    config = getattr(model, "config", None)
    if config is None:
        return ""
    return json.dumps(clean(config.to_dict()), sort_keys=True, default=repr)


@dataclass(eq=False)
class Backbone:
    """A loaded checkpoint of one family, with what is needed to use it.

    Attributes
    ----------
    name : str
        The name or path the checkpoint was loaded from.
    model : torch.nn.Module
        The model, in eval mode, on ``device`` in ``dtype``, gradients off.
    tokenizer : transformers tokenizer or None
        ``None`` for an image-only backbone, or when the tokenizer cannot be loaded
        (``tokenizer_error`` says why).
    image_config : dict
        The checkpoint's image-processor settings.
    device : torch.device
    dtype : torch.dtype
    tokenizer_error : str or None
        Why there is no tokenizer, for error messages.
    """

    family: ClassVar[str] = ""
    has_text: ClassVar[bool] = True
    #: Sub-modules whose weights define the image embedding (the cache fingerprint).
    vision_modules: ClassVar[tuple[str, ...]] = ()
    #: Sub-modules whose weights define the text embedding (the text-weight cache key).
    text_modules: ClassVar[tuple[str, ...]] = ()

    name: str
    model: Any
    tokenizer: Any
    image_config: dict
    device: torch.device
    dtype: torch.dtype
    tokenizer_error: str | None = field(default=None, repr=False)

    # -- what every family says -------------------------------------------------------
    @functools.cached_property
    def preprocessor(self) -> Any:
        """The checkpoint's preprocessing (``__call__``, ``random_view``, ``collate``,
        ``model_inputs``), see :mod:`skclip.backbones.preprocess`."""
        return make_preprocessor(self.image_config)

    @property
    def embedding_dim(self) -> int:
        """Dimension of the image (and text) embeddings."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """Multiplier of the cosine similarity in the zero-shot logits."""
        raise NotImplementedError

    @property
    def logit_bias(self) -> float:
        """Added to every zero-shot logit (0 for the softmax-trained families)."""
        return 0.0

    def _hash_weights(self, h: Any, prefixes: tuple[str, ...]) -> None:
        """Feed the names, shapes, dtypes and values of sub-modules' weights to ``h``."""
        for prefix in prefixes:
            module = self.model if prefix == "model" else self.model.get_submodule(prefix)
            for name, tensor in module.state_dict().items():
                t = tensor.detach().cpu().contiguous()
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    @functools.cached_property
    def vision_fingerprint(self) -> str:
        """Hash of the image tower's weights (names, shapes, dtypes and values).

        Identifies the model in embedding-cache keys across processes: two folders with
        the same weights share entries, a retrained model with the same name does not.
        The model's configuration (``config.json`` as loaded, less its path, dtype and
        transformers version) is hashed too: an edited activation or layer-norm epsilon
        changes the embeddings without changing a weight.
        """
        h = hasher()
        self._hash_weights(h, self.vision_modules)
        h.update(_config_json(self.model).encode())  # activations, eps...: not in the weights
        return h.hexdigest()

    @functools.cached_property
    def vision_config_json(self) -> str:
        """The image tower's configuration as transformers writes it (all values, not the
        difference to the defaults): part of the name of its ONNX export."""
        vision_config = getattr(self.model.config, "vision_config", self.model.config)
        return vision_config.to_json_string(use_diff=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the whole checkpoint as skclip uses it: both towers and the tokenizer
        (the image tower alone for an image-only backbone).

        Fitted estimators record it (``model_fingerprint_``) and refuse to run on a
        different checkpoint found later under the same name.
        """
        text = self.text_fingerprint if self.has_text else "image-only"
        parts = f"{self.vision_fingerprint}:{text}"
        return hasher(parts.encode()).hexdigest()

    @functools.cached_property
    def text_fingerprint(self) -> str:
        """Hash of the text tower's weights and the tokenizer's vocabulary.

        Keys the text-weight cache (``skclip.text``) as ``vision_fingerprint`` keys the
        embedding cache: a checkpoint folder rewritten in place gets fresh text weights.
        """
        if not self.has_text:
            raise self._no_text_error()
        h = hasher()
        self._hash_weights(h, self.text_modules)
        h.update(_config_json(self.model).encode())
        if self.tokenizer is not None:
            vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            h.update(f"{type(self.tokenizer).__name__}:{len(vocab)}".encode())
            h.update("\n".join(token for token, _ in vocab).encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    # -- images -----------------------------------------------------------------------
    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw image embeddings ``(B, d)`` for model inputs from the preprocessor."""
        raise NotImplementedError

    def forward_images(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """Raw embeddings of a collated batch (``preprocessor.collate``): ``(B, d)``
        float32 on the device. Call under ``torch.inference_mode()``.

        The ``uint8`` arrays cross to the device (pinned on CUDA: 4x less than float32);
        rescaling and normalization run there.
        """
        tensors = {}
        for key, arr in batch.items():
            t = torch.from_numpy(arr)
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            tensors[key] = t.to(self.device)
        return self.image_features(self.preprocessor.model_inputs(tensors, self.dtype)).float()

    def embed_images(self, batch: dict[str, np.ndarray], normalize: bool = True) -> np.ndarray:
        """:meth:`forward_images` as a numpy ``(B, d)`` float32 array, L2-normalized if
        ``normalize``."""
        with torch.inference_mode():
            emb = self.forward_images(batch)
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            return emb.cpu().numpy()

    # -- text -------------------------------------------------------------------------
    def _text_padding(self) -> dict:
        """Tokenizer padding arguments the text tower was trained with."""
        return {"padding": True}

    def require_text(self) -> None:
        """Raise :class:`NoTextTowerError` (a ``ValueError`` saying what to do instead)
        unless class names can be encoded: a text tower and a tokenizer."""
        if not self.has_text or self.tokenizer is None:
            raise self._no_text_error()

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids (and mask) for ``prompts``, on the device."""
        self.require_text()
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        tokens = self.tokenizer(
            prompts,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
            **self._text_padding(),
        )
        return dict(tokens.to(self.device))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Raw text embeddings ``(len(prompts), d)`` (float32, on the device)."""
        with torch.inference_mode():
            return pooled_embeddings(self.model.get_text_features(**self.tokenize(prompts))).float()

    def _no_text_error(self) -> NoTextTowerError:
        if not self.has_text:
            return NoTextTowerError(
                f"{self.name!r} is an image-only backbone ({type(self.model).__name__}): it has no "
                "text tower to encode class names. Use clip_model=None (the cache model alone), "
                "or pass text_features= computed elsewhere."
            )
        why = f" ({self.tokenizer_error})" if self.tokenizer_error else ""
        return NoTextTowerError(
            f"The checkpoint {self.name!r} has no usable tokenizer{why}, so class names cannot be "
            "encoded; pass text_features= or clip_model=None."
        )


class ClipBackbone(Backbone):
    """OpenAI CLIP (``CLIPModel``): projected pooled outputs, zero-shot scale 100."""

    family = "clip"
    vision_modules = ("vision_model", "visual_projection")
    text_modules = ("text_model", "text_projection")

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def learned_logit_scale(self) -> float:
        """``exp(logit_scale)`` as stored in the weights (about 100 for released CLIPs)."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_scale(self) -> float:
        return CLIP_LOGIT_SCALE

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled_embeddings(self.model.get_image_features(**inputs))


class MetaClip2Backbone(ClipBackbone):
    """MetaCLIP 2 (``MetaClip2Model``, worldwide multilingual CLIP): as CLIP."""

    family = "metaclip_2"


class SiglipBackbone(Backbone):
    """SigLIP (``SiglipModel``): attention-pooled outputs, learned scale and bias, text
    padded to the full length it was trained with."""

    family = "siglip"
    vision_modules = ("vision_model",)
    text_modules = ("text_model",)  # its projection head is inside

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> float:
        return float(self.model.logit_bias.detach().float())

    def _text_padding(self) -> dict:
        # The text tower pools the *last* position: it was trained on max-length padding.
        return {"padding": "max_length"}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled_embeddings(self.model.get_image_features(**inputs))


class Siglip2Backbone(SiglipBackbone):
    """SigLIP 2 NaFlex (``Siglip2Model``): patches, attention mask and patch-grid shapes."""

    family = "siglip2"


class ImageOnlyBackbone(Backbone):
    """An image encoder alone (DINOv2, ViT...): the embedding is ``pooler_output``."""

    family = "image-only"
    has_text = False
    vision_modules = ("model",)

    @functools.cached_property
    def embedding_dim(self) -> int:
        """Read from one forward pass on a blank image (any pooled width is right)."""
        from PIL import Image

        prep = self.preprocessor
        arr = prep(Image.new("RGB", (64, 64)))
        return int(self.embed_images(prep.collate([arr]), normalize=False).shape[1])

    @property
    def logit_scale(self) -> float:
        raise self._no_text_error()

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**inputs).pooler_output
        if out is None:
            raise ValueError(f"{self.name!r} returns no pooled output.")
        return out.flatten(1)  # e.g. (B, C, 1, 1) for convolutional poolers

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        raise self._no_text_error()


#: Dual encoders by ``config.model_type``: adapter and model class.
FAMILIES: dict[str, tuple[type[Backbone], str]] = {
    "clip": (ClipBackbone, "CLIPModel"),
    "metaclip_2": (MetaClip2Backbone, "MetaClip2Model"),
    "siglip": (SiglipBackbone, "SiglipModel"),
    "siglip2": (Siglip2Backbone, "Siglip2Model"),
}


def _model_type(name: str) -> str:
    from transformers import AutoConfig

    return str(from_pretrained(AutoConfig, name).model_type)


def _load_tokenizer(name: str) -> tuple[Any, str | None]:
    from transformers import AutoTokenizer

    try:
        return from_pretrained(AutoTokenizer, name), None
    except (OSError, ValueError, ImportError, AttributeError) as exc:
        # e.g. no tokenizer files, or SigLIP's SentencePiece tokenizer without the
        # `sentencepiece` and `protobuf` packages
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def build_backbone(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    """Load checkpoint ``name`` with the adapter its config calls for (not cached).

    Raises
    ------
    ValueError
        For a checkpoint that is neither a supported dual encoder nor an image model
        with a pooled output, naming its ``model_type``.
    """
    import transformers

    model_type = _model_type(name)
    if model_type in FAMILIES:
        cls, model_class = FAMILIES[model_type]
        model = from_pretrained(getattr(transformers, model_class), name, dtype=dtype)
        tokenizer, why = _load_tokenizer(name)
    else:
        cls, tokenizer, why = ImageOnlyBackbone, None, None
        try:
            model = from_pretrained(transformers.AutoModel, name, dtype=dtype)
        except ValueError as exc:
            raise ValueError(_unsupported(name, model_type)) from exc
        if "pixel_values" not in _forward_params(model):
            raise ValueError(_unsupported(name, model_type))
    model.to(device).eval()
    model.requires_grad_(False)
    backbone = cls(
        name=name,
        model=model,
        tokenizer=tokenizer,
        image_config=image_config(name),
        device=device,
        dtype=dtype,
        tokenizer_error=why,
    )
    if cls is ImageOnlyBackbone:
        try:
            backbone.embedding_dim  # noqa: B018 - one forward pass checks the pooled output
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(_unsupported(name, model_type) + f" ({exc})") from exc
    return backbone


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _unsupported(name: str, model_type: str) -> str:
    return (
        f"The checkpoint {name!r} (model_type {model_type!r}) is not supported: skclip takes "
        f"dual encoders of the families {sorted(FAMILIES)} and image models whose output has a "
        "pooler_output (DINOv2, ViT...)."
    )
