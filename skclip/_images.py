"""Opening images of any supported kind and turning them into CLIP pixel arrays.

Everything here works on one image at a time and is thread-safe, so the featurizer
can decode and preprocess in worker threads while the model runs (PIL releases the
GIL while decoding and resizing).
"""

from __future__ import annotations

import io
import re
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


class ImageLoadError(ValueError):
    """An input could not be turned into an image; the message names the input."""


class ImageLoadWarning(UserWarning):
    """Some inputs were not usable images (``CLIPFeaturizer(on_error="warn")``).

    Attributes
    ----------
    errors : dict of int to str
        The position of each bad input and the reason it could not be used.
    """

    def __init__(self, message: str = "", errors: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


def describe(item: Any, index: int) -> str:
    """A short, human-readable name for input ``item`` at position ``index``."""
    if isinstance(item, (str, os.PathLike)):
        return f"{os.fspath(item)!r} (input {index})"
    if isinstance(item, np.ndarray):
        return f"array input {index} with shape {item.shape} and dtype {item.dtype}"
    return f"{type(item).__name__} input {index}"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as ``CLIPImageProcessor`` does)."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert("RGB") clips instead of scaling.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray, index: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"Cannot use {describe(arr, index)} as an image: expected HxW (grayscale), HxWx3 (RGB) "
            "or HxWx4 (RGBA), channels last."
        )
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ImageLoadError(
                f"Cannot use {describe(arr, index)} as an image: float arrays must hold finite "
                "values in [0, 1]; pass uint8 for values in [0, 255]."
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise ImageLoadError(
                f"Cannot use {describe(arr, index)} as an image: integer values must lie in [0, 255]."
            )
        arr = arr.astype(np.uint8)
    else:
        raise ImageLoadError(f"Cannot use {describe(arr, index)} as an image: unsupported dtype.")
    # uint8 HxW, HxWx3, HxWx4 map to PIL modes L, RGB, RGBA.
    return Image.fromarray(np.ascontiguousarray(arr))


def _check_size(img: Image.Image, item: Any, index: int) -> None:
    """Refuse images over Pillow's decompression-bomb limit before decoding them."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.size[0] * img.size[1] > limit:
        raise ImageLoadError(
            f"Image {describe(item, index)} has {img.size[0]}x{img.size[1]} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS={limit} (a guard against decompression bombs). If "
            "the file is trusted, raise that limit (or set it to None) before encoding."
        )


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_UNIDENTIFIED = re.compile(r"cannot identify image file(?: (?:<[^>]*>|'[^']*'|\"[^\"]*\"))?")


def readable(message: str) -> str:
    """``message`` without object reprs such as ``<_io.BytesIO object at 0x7f...>`` (PIL
    names the in-memory copy of a file that way, and the file is named already), and
    PIL's "cannot identify image file ..." said plainly.

    Examples
    --------
    >>> readable("cannot identify image file <_io.BytesIO object at 0x7f3a>")
    'not an image file (cannot identify its format)'
    >>> readable("broken data stream when reading <_io.BytesIO object at 0x7f3a>")
    "broken data stream when reading the file's bytes"
    """
    message = _UNIDENTIFIED.sub("not an image file (cannot identify its format)", message)
    return _OBJECT_REPR.sub("the file's bytes", message)


def open_image(item: Any, index: int = 0, data: bytes | None = None) -> Image.Image:
    """Open ``item`` (path, PIL image or array) as an upright RGB PIL image.

    EXIF orientation is applied, transparency is composited on white, grayscale,
    palette, CMYK and 16-bit images are converted to 8-bit RGB. For a path whose bytes
    were already read (to hash them), pass them as ``data`` to avoid a second read.

    Raises
    ------
    ImageLoadError
        With a message naming the file (or input position) that failed.
    """
    if isinstance(item, (str, os.PathLike)):
        source = io.BytesIO(data) if data is not None else Path(item)
        try:
            with Image.open(source) as img:
                _check_size(img, item, index)  # from the header, before decoding
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
        except FileNotFoundError:
            raise ImageLoadError(f"Image file not found: {describe(item, index)}.") from None
        except IsADirectoryError:
            raise ImageLoadError(
                f"Expected an image file but got a directory: {describe(item, index)}."
            ) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(
                f"Cannot read image {describe(item, index)}: {readable(str(exc))}"
            ) from exc
    if isinstance(item, Image.Image):
        try:
            return _to_rgb(ImageOps.exif_transpose(item))
        except (OSError, ValueError) as exc:
            raise ImageLoadError(f"Cannot convert {describe(item, index)}: {exc}") from exc
    if isinstance(item, np.ndarray):
        return _to_rgb(_array_to_image(item, index))
    raise ImageLoadError(
        f"Unsupported input type for {describe(item, index)}: expected a file path (str or "
        "pathlib.Path), a PIL.Image.Image or a numpy array."
    )


class CLIPPreprocessor:
    """CLIP preprocessing from a checkpoint's image-processor settings.

    Equal (to float rounding) to ``transformers.CLIPImageProcessor``: resize the
    shortest side with the checkpoint's resampling filter (bicubic for CLIP), center
    crop (zero-padding images smaller than the crop), rescale to [0, 1], normalize
    with the checkpoint's mean and std.

    It works in two steps so the expensive part runs in decode threads and the cheap
    part runs batched on the model's device: calling it on an image does the
    geometric part and returns a ``uint8`` array of shape ``(3, H, W)``;
    :meth:`normalize` turns a batch of those into the model's float input.

    Parameters
    ----------
    config : dict
        As returned by ``skclip._preprocess_families.image_config``.
    """

    def __init__(self, config: dict) -> None:
        self.config = dict(config)
        self._scale = config["rescale_factor"] if config["do_rescale"] else 1.0

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the arrays this preprocessor returns for any input."""
        if self.config["do_center_crop"]:
            return tuple(self.config["crop_size"])
        if self.config["shortest_edge"] is None:
            return tuple(self.config["size"])
        raise ValueError(
            "This checkpoint resizes the shortest edge without a center crop, so images of "
            "different aspect ratios give arrays of different shapes; it is not supported."
        )

    def _resize_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, exactly as transformers computes it."""
        edge = self.config["shortest_edge"]
        if edge is None:
            h, w = self.config["size"]
            return w, h
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (edge, new_long) if width <= height else (new_long, edge)

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rescale and normalize a ``uint8`` batch ``(B, 3, H, W)`` into model input.

        Runs wherever ``pixels`` lives (CPU or GPU); computes in float32, returns ``dtype``.
        """
        out = pixels.to(torch.float32).mul_(self._scale)
        if self.config["do_normalize"]:
            mean = torch.tensor(self.config["image_mean"], device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(self.config["image_std"], device=out.device).view(1, 3, 1, 1)
            out.sub_(mean).div_(std)
        return out.to(dtype)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Resize and center-crop one RGB image into a ``uint8`` ``(3, H, W)`` array."""
        if self.config["do_resize"]:
            img = img.resize(self._resize_shape(*img.size), resample=self.config["resample"])
        arr = np.asarray(img)
        if self.config["do_center_crop"]:
            arr = _center_crop(arr, *self.config["crop_size"])
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def random_view(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """A random augmented view, ``uint8`` ``(3, H, W)``: random resized crop (scale
        0.5-1, aspect 3/4-4/3) to the output size, then a horizontal flip with
        probability 1/2.

        This is the augmentation the Tip-Adapter paper uses to build its cache keys.
        """
        out_h, out_w = self.output_size
        left, top, w, h = _random_resized_crop_box(img.size, rng)
        view = img.resize(
            (out_w, out_h), resample=self.config["resample"], box=(left, top, left + w, top + h)
        )
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.ascontiguousarray(np.asarray(view).transpose(2, 0, 1))


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < crop_h or w < crop_w:  # pad with zeros first, like transformers
        new = np.zeros((max(h, crop_h), max(w, crop_w), arr.shape[2]), dtype=arr.dtype)
        top_pad, left_pad = math.ceil((new.shape[0] - h) / 2), math.ceil((new.shape[1] - w) / 2)
        new[top_pad : top_pad + h, left_pad : left_pad + w] = arr
        arr = new
        h, w = arr.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return arr[top : top + crop_h, left : left + crop_w]


def _random_resized_crop_box(
    size: tuple[int, int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random crop covering ``scale`` of the area."""
    width, height = size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # Fallback: the largest centered crop within the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
