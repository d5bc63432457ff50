"""Each backbone family's own image preprocessing, reproduced for the decode threads.

A checkpoint's image processor (its ``preprocessor_config.json``) says how its images
are prepared; :func:`image_config` reads it into a plain dict and
:func:`make_preprocessor` turns that dict into a preprocessor that splits the work as
:class:`skclip._images.CLIPPreprocessor` does: the geometric part (resize, crop,
patchify) on ``uint8`` pixels in a decode thread, the arithmetic part (rescale,
normalize) batched in torch on the model's device.

Two kinds cover the supported families, each equal to the processor's own output to
float rounding:

* :class:`ResizeCropPreprocessor`: resize (the shortest edge, or to a fixed height and
  width) then optionally center-crop: CLIP and MetaCLIP 2 (shortest edge, crop),
  SigLIP and SigLIP 2 fixed-resolution (fixed size, no crop), DINOv2 and other
  ``BitImageProcessor``/``ViTImageProcessor`` backbones (shortest edge, crop).
* :class:`NaFlexPreprocessor`: SigLIP 2 NaFlex: resize, keeping the aspect ratio, to
  the largest size whose patches fit ``max_num_patches``, then cut into patches,
  padded to ``max_num_patches`` with an attention mask and the patch grid's shape.

Every preprocessor has the same four methods: ``__call__`` (one image to one
``uint8`` array), ``random_view`` (an augmented view, same kind of array),
``collate`` (arrays to a batch: a dict of ``uint8``/integer arrays) and
``model_inputs`` (a batch, as tensors on the device, to the model's keyword
arguments).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from .._images import CLIPPreprocessor, _random_resized_crop_box
from ._hub import from_pretrained

#: Keys that mark a NaFlex config (a resize-crop config has those CLIPPreprocessor reads).
NAFLEX_KEYS = ("patch_size", "max_num_patches")


class Preprocessor(Protocol):
    """What the encoding engine needs from a family's preprocessing."""

    config: dict

    def __call__(self, img: Image.Image) -> np.ndarray: ...

    def random_view(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray: ...

    def collate(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]: ...

    def model_inputs(
        self, batch: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor]: ...


class UnsupportedPreprocessingError(ValueError):
    """The checkpoint's image processor does something skclip does not reproduce."""


#: transformers 4: the PIL/numpy processors whose ``preprocess`` is the plain pipeline.
_PLAIN_V4 = frozenset(
    {"CLIPImageProcessor", "SiglipImageProcessor", "BitImageProcessor", "ViTImageProcessor"}
)
_NAFLEX = frozenset({"Siglip2ImageProcessorPil", "Siglip2ImageProcessor"})


def _plain_pipeline(proc: Any) -> bool:
    """True if ``proc`` runs the standard resize / crop / rescale / normalize pipeline."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:  # transformers 4
        return type(proc).__name__ in _PLAIN_V4
    return isinstance(proc, PilBackend) and type(proc)._preprocess is PilBackend._preprocess


def _naflex_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """transformers' own NaFlex target size (height, width), from where this version has it."""
    try:
        from transformers.models.siglip2.image_processing_pil_siglip2 import (
            get_image_size_for_max_num_patches,
        )
    except ImportError:  # transformers 4
        from transformers.models.siglip2.image_processing_siglip2 import (
            get_image_size_for_max_num_patches,
        )
    return get_image_size_for_max_num_patches(height, width, patch_size, max_num_patches)


def config_from_processor(proc: Any, name: str = "the checkpoint") -> dict:
    """The preprocessing settings of a ``transformers`` PIL image processor, as a dict.

    Parameters
    ----------
    proc : transformers image processor (PIL backend)
    name : str
        Checkpoint name for error messages.

    Returns
    -------
    config : dict
        For a NaFlex processor (SigLIP 2): ``patch_size``, ``max_num_patches``,
        ``resample``, rescale and normalize settings. For the plain pipeline: the keys
        :class:`skclip._images.CLIPPreprocessor` reads.

    Raises
    ------
    UnsupportedPreprocessingError
        For a processor whose steps are not reproduced here, naming it.
    """
    kind = type(proc).__name__
    common = {
        "resample": int(proc.resample),
        "do_rescale": bool(proc.do_rescale),
        "rescale_factor": float(proc.rescale_factor),
        "do_normalize": bool(proc.do_normalize),
        "image_mean": tuple(float(m) for m in np.broadcast_to(proc.image_mean, 3)),
        "image_std": tuple(float(s) for s in np.broadcast_to(proc.image_std, 3)),
    }
    if kind in _NAFLEX:
        return _naflex_config(proc, name, common)
    if not _plain_pipeline(proc):
        raise UnsupportedPreprocessingError(
            f"The image processor of {name!r} is {kind}, whose preprocessing skclip does not "
            "reproduce. Supported: processors that resize (the shortest edge, or to a fixed "
            "height and width), optionally center-crop, rescale and normalize (CLIP, SigLIP, "
            "BiT/DINOv2, ViT), and SigLIP 2 NaFlex."
        )
    size = dict(proc.size) if proc.size is not None else {}
    crop = dict(proc.crop_size) if getattr(proc, "crop_size", None) is not None else None
    shortest, height, width = size.get("shortest_edge"), size.get("height"), size.get("width")
    known = ("shortest_edge", "height", "width")
    other = {k: v for k, v in size.items() if v is not None and k not in known}
    if proc.do_resize and (other or (shortest is None and None in (height, width))):
        raise UnsupportedPreprocessingError(
            f"The image processor of {name!r} ({kind}) resizes with size={size}; skclip supports "
            "{'shortest_edge': n} or {'height': h, 'width': w}."
        )
    do_crop = bool(getattr(proc, "do_center_crop", False))
    if not do_crop and (not proc.do_resize or shortest is not None):
        raise UnsupportedPreprocessingError(
            f"The image processor of {name!r} ({kind}) neither resizes to a fixed size nor "
            "center-crops, so images of different sizes would give arrays of different "
            "shapes; skclip needs a fixed-size resize or a center crop."
        )
    if getattr(proc, "do_pad", False):
        raise UnsupportedPreprocessingError(
            f"The image processor of {name!r} ({kind}) pads images (do_pad=True); not supported."
        )
    return {
        "do_resize": bool(proc.do_resize),
        "shortest_edge": shortest,
        "size": (height, width),
        "resample": common["resample"],
        "do_center_crop": do_crop,
        "crop_size": (crop["height"], crop["width"]) if crop else None,
        "do_rescale": common["do_rescale"],
        "rescale_factor": common["rescale_factor"],
        "do_normalize": common["do_normalize"],
        "image_mean": common["image_mean"],
        "image_std": common["image_std"],
    }


def _naflex_config(proc: Any, name: str, common: dict) -> dict:
    """SigLIP 2's NaFlex settings: patches of the image resized to at most a number of them."""
    kind = type(proc).__name__
    if not proc.do_resize:
        raise UnsupportedPreprocessingError(
            f"The image processor of {name!r} ({kind}) has do_resize=False: images would "
            "have to be multiples of the patch size; skclip needs do_resize=True."
        )
    return {
        "patch_size": int(proc.patch_size),
        "max_num_patches": int(proc.max_num_patches),
        **common,
    }


def image_config(name: str) -> dict:
    """Read the preprocessing settings of checkpoint ``name`` (folder or hub id).

    Uses the checkpoint's own image processor class, its PIL/numpy version (no
    torchvision needed).
    """
    from transformers import AutoImageProcessor

    try:
        import transformers.image_processing_backends  # noqa: F401 - transformers 5
    except ImportError:  # transformers 4: the "slow" processors are the PIL/numpy ones
        proc = from_pretrained(AutoImageProcessor, name, use_fast=False)
    else:
        proc = from_pretrained(AutoImageProcessor, name, backend="pil")
    return config_from_processor(proc, name)


def make_preprocessor(config: dict) -> Preprocessor:
    """The preprocessor for a config from :func:`image_config`.

    Examples
    --------
    >>> from skclip.backbones.preprocess import image_config, make_preprocessor
    >>> type(make_preprocessor(image_config(tiny_clip_path))).__name__
    'ResizeCropPreprocessor'
    """
    if all(k in config for k in NAFLEX_KEYS):
        return NaFlexPreprocessor(config)
    return ResizeCropPreprocessor(config)


class ResizeCropPreprocessor(CLIPPreprocessor):
    """Resize, then optionally center-crop: every fixed-size family.

    :class:`skclip._images.CLIPPreprocessor` (resize the shortest edge or to a fixed
    size, crop, rescale, normalize) with the batch interface shared with
    :class:`NaFlexPreprocessor`.

    Parameters
    ----------
    config : dict
        From :func:`image_config`.
    """

    def collate(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Stack ``uint8`` ``(3, H, W)`` arrays into a batch ``{"pixel_values": (B, 3, H, W)}``."""
        return {"pixel_values": np.stack(arrays)}

    def model_inputs(
        self, batch: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for a collated batch (tensors on the device)."""
        return {"pixel_values": self.normalize(batch["pixel_values"], dtype)}


class NaFlexPreprocessor:
    """SigLIP 2 NaFlex preprocessing (``Siglip2ImageProcessor``), split for threads.

    Each image is resized, keeping its aspect ratio, to the largest size that is a
    multiple of ``patch_size`` on both sides and holds at most ``max_num_patches``
    patches (with the checkpoint's resampling filter), then cut into patches. A
    batch pads every image to ``max_num_patches`` patches; the attention mask marks
    the real ones and ``spatial_shapes`` gives each image's patch grid.

    Parameters
    ----------
    config : dict
        From :func:`image_config` (``patch_size``, ``max_num_patches``, ``resample``,
        rescale and normalize settings).
    """

    def __init__(self, config: dict) -> None:
        self.config = dict(config)
        self.patch_size = int(config["patch_size"])
        self.max_num_patches = int(config["max_num_patches"])
        self._scale = config["rescale_factor"] if config["do_rescale"] else 1.0

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, exactly as transformers computes it."""
        h, w = _naflex_size(height, width, self.patch_size, self.max_num_patches)
        return w, h

    def _patchify(self, img: Image.Image) -> np.ndarray:
        """``uint8`` patches of shape ``(rows, cols, patch_size**2 * 3)``, each patch
        flattened row by row with channels last, as the processor flattens them."""
        arr = np.asarray(img)
        p = self.patch_size
        rows, cols = arr.shape[0] // p, arr.shape[1] // p
        patches = arr.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(patches.reshape(rows, cols, p * p * 3))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Resize one RGB image and cut it into patches: ``uint8`` ``(rows, cols, p*p*3)``."""
        img = img.resize(self.target_size(*img.size), resample=self.config["resample"])
        return self._patchify(img)

    def random_view(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """A random augmented view: random resized crop (scale 0.5-1, aspect 3/4-4/3),
        resized as the NaFlex rule says for the crop's size, flipped with probability 1/2."""
        left, top, w, h = _random_resized_crop_box(img.size, rng)
        view = img.resize(
            self.target_size(w, h),
            resample=self.config["resample"],
            box=(left, top, left + w, top + h),
        )
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self._patchify(view)

    def collate(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Pad each image's patches to ``max_num_patches``: ``patches`` ``uint8``
        ``(B, N, p*p*3)``, ``pixel_attention_mask`` ``(B, N)`` and ``spatial_shapes``
        ``(B, 2)``."""
        n = len(arrays)
        dim = self.patch_size**2 * 3
        patches = np.zeros((n, self.max_num_patches, dim), dtype=np.uint8)
        mask = np.zeros((n, self.max_num_patches), dtype=np.int32)
        shapes = np.empty((n, 2), dtype=np.int64)
        for i, a in enumerate(arrays):
            rows, cols = a.shape[:2]
            patches[i, : rows * cols] = a.reshape(rows * cols, dim)
            mask[i, : rows * cols] = 1
            shapes[i] = rows, cols
        return {"patches": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def model_inputs(
        self, batch: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Rescale and normalize the patches (padding stays 0, as the processor pads);
        returns ``pixel_values``, ``pixel_attention_mask`` and ``spatial_shapes``."""
        patches, mask = batch["patches"], batch["pixel_attention_mask"]
        b, n, _ = patches.shape
        out = patches.to(torch.float32).mul_(self._scale).view(b, n, -1, 3)
        if self.config["do_normalize"]:
            mean = torch.tensor(self.config["image_mean"], device=out.device)
            std = torch.tensor(self.config["image_std"], device=out.device)
            out.sub_(mean).div_(std)
        out = out.view(b, n, -1).mul_(mask.unsqueeze(-1).to(out.dtype))
        return {
            "pixel_values": out.to(dtype),
            "pixel_attention_mask": mask,
            "spatial_shapes": batch["spatial_shapes"],
        }
