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
import stat
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


#: The version of the rules that turn an input into pixels (float images, conversions,
#: orientation). It is part of every embedding-cache key: change it whenever a rule
#: changes the pixels an input gives, so that no entry made under the old rules is served.
DECODE_RULES = (
    "3: float images in [0, 1] scaled x255 in every form; 16-bit (uint16, I;16, I) /65535 "
    "with 16-bit tRNS; bool arrays 0/255"
)


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


def _to_rgb(img: Image.Image, item: Any = None, index: int = 0) -> Image.Image:
    """RGB, with transparency composited on white (as ``CLIPImageProcessor`` does).

    Float images (mode ``"F"``) follow :func:`_float_to_uint8`; ``item`` and ``index``
    name the input in its error."""
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        what = img if item is None else item
        gray = _float_to_uint8(np.asarray(img), what, index, "float images")  # float32
        return Image.fromarray(gray).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert() clips instead of scaling; its own tRNS
        # colour is a 16-bit value, so transparency is composited here, on white.
        arr = np.asarray(img)  # uint16 or int32: no wider copy (images at the pixel limit)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageLoadError(
                f"Cannot use {describe(img if item is None else item, index)} as an image: "
                "32-bit integer (PIL mode 'I') pixels are read as 16-bit values in "
                f"[0, 65535], it has values from {arr.min()} to {arr.max()}."
            )
        gray = _uint16_to_uint8(arr)
        key = img.info.get("transparency")
        if isinstance(key, int):
            gray[arr == key] = 255
        return Image.fromarray(gray).convert("RGB")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _uint16_to_uint8(arr: np.ndarray) -> np.ndarray:
    """The 16-bit rule of every form (16-bit files, PIL ``"I;16"``/``"I"`` images,
    ``uint16`` arrays): values in [0, 65535] scaled by 255/65535 and rounded (half up,
    in integers), a block of rows at a time (see :func:`_by_rows`)."""
    return _by_rows(arr, lambda block: (block.astype(np.uint32) * 255 + 32767) // 65535)


#: Pixels converted at a time from 16-bit or float images to 8 bits, so that the
#: temporaries stay small for images at the pixel limit (not 8-16 bytes per pixel).
_BLOCK_PIXELS = 1 << 20


def _by_rows(arr: np.ndarray, fn: Any) -> np.ndarray:
    """``fn(block).astype(uint8)`` over blocks of rows of ``arr``, into one uint8 array."""
    out = np.empty(arr.shape, dtype=np.uint8)
    per_row = max(1, arr[:1].size)
    step = max(1, _BLOCK_PIXELS // per_row)
    for top in range(0, arr.shape[0], step):
        out[top : top + step] = fn(arr[top : top + step])
    return out


def _float_to_uint8(arr: np.ndarray, item: Any, index: int, kind: str) -> np.ndarray:
    """The one rule for float pixels, whatever their form (float arrays, PIL ``"F"``
    images, float TIFF files): finite values in [0, 1], scaled to [0, 255] and rounded;
    any other range is refused, naming the input, rather than guessed (values in
    [0, 255] read as [0, 1] would be white, [0, 1] clipped as [0, 255] would be black)."""
    finite = bool(np.all(np.isfinite(arr)))
    if not finite or arr.min() < 0 or arr.max() > 1:
        found = (
            "NaN or infinite values"
            if not finite
            else (f"values from {float(arr.min()):g} to {float(arr.max()):g}")
        )
        raise ImageLoadError(
            f"Cannot use {describe(item, index)} as an image: {kind} must hold finite values "
            f"in [0, 1] (scaled to [0, 255]), it has {found}. Scale it to [0, 1], or pass "
            "uint8 values in [0, 255]."
        )
    return _by_rows(arr, lambda block: np.round(block.astype(np.float64) * 255.0))


def _array_to_image(arr: np.ndarray, index: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"Cannot use {describe(arr, index)} as an image: expected HxW (grayscale), HxWx3 (RGB) "
            "or HxWx4 (RGBA), channels last."
        )
    _check_size((arr.shape[1], arr.shape[0]), arr, index)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:  # a mask: False black, True white (as PIL's mode "1")
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype == np.uint16:  # 16-bit, as 16-bit files and PIL "I;16" images
        arr = _uint16_to_uint8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr, arr, index, "float arrays")
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ImageLoadError(
                f"Cannot use {describe(arr, index)} as an image: integer values must lie in "
                "[0, 255]."
            )
        arr = arr.astype(np.uint8)
    else:
        raise ImageLoadError(f"Cannot use {describe(arr, index)} as an image: unsupported dtype.")
    # uint8 HxW, HxWx3, HxWx4 map to PIL modes L, RGB, RGBA.
    return Image.fromarray(np.ascontiguousarray(arr))


# -- limits -------------------------------------------------------------------------------------
#: Images whose longer side is more than this many times their shorter side are refused,
#: from the header, before decoding: resizing the shortest side of a 1,000,000 x 1 image
#: (about a kilobyte as a PNG, far below Pillow's pixel limit) to 224 pixels would make it
#: 224,000,000 x 224. Real photos, panoramas and line-scan strips stay well below 100:1;
#: set ``skclip._images.MAX_ASPECT_RATIO`` higher, or to None, for stranger trusted images.
MAX_ASPECT_RATIO: float | None = 100.0

#: The byte cap of one image file is this many bytes per pixel of Pillow's decompression-bomb
#: limit ``PIL.Image.MAX_IMAGE_PIXELS`` (8: an uncompressed 16-bit RGBA file of the largest
#: size Pillow decodes), plus :data:`HEADER_BYTES`; see :func:`image_byte_cap`.
BYTES_PER_PIXEL = 8
#: Room for metadata (EXIF, ICC profiles, embedded thumbnails) in the byte cap.
HEADER_BYTES = 16 * 2**20


def image_byte_cap() -> int | None:
    """The most bytes :func:`read_image_bytes` reads from one image file.

    ``BYTES_PER_PIXEL * PIL.Image.MAX_IMAGE_PIXELS + HEADER_BYTES``: about 732 MB with
    Pillow's default limit (89,478,485 pixels). It follows that limit, so raising
    ``PIL.Image.MAX_IMAGE_PIXELS`` (for larger trusted images) raises it too, and setting
    it to None (trusted files) lifts both.

    Examples
    --------
    >>> from PIL import Image
    >>> image_byte_cap() == 8 * Image.MAX_IMAGE_PIXELS + 16 * 2**20
    True
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(BYTES_PER_PIXEL * limit) + HEADER_BYTES


def _check_size(size: tuple[int, int], item: Any, index: int) -> None:
    """Refuse images without pixels, over Pillow's decompression-bomb limit or thinner
    than :data:`MAX_ASPECT_RATIO`, from their (width, height) alone: before decoding."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageLoadError(
            f"Cannot use {describe(item, index)} as an image: it has {width}x{height} pixels, "
            "none to encode."
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            f"Cannot use {describe(item, index)} as an image: it has {width}x{height} pixels, "
            f"more than PIL.Image.MAX_IMAGE_PIXELS={limit} (a guard against decompression "
            "bombs). If the file is trusted, raise that limit (or set it to None) before encoding."
        )
    if MAX_ASPECT_RATIO is not None and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(
            f"Cannot use {describe(item, index)} as an image: it has {width}x{height} pixels, "
            f"an aspect ratio over skclip._images.MAX_ASPECT_RATIO={MAX_ASPECT_RATIO:g}: "
            "resizing its shorter side to the model's input size would make it huge. If the "
            "image is trusted, raise that limit (or set it to None)."
        )


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _check_regular(info: os.stat_result, path: Any, index: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(
            f"Expected an image file but got a directory: {describe(path, index)}."
        )
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(
            f"Image {describe(path, index)} is {_file_kind(info.st_mode)}, not a regular file: "
            "only regular files are read as images (a FIFO or a device could block or never end)."
        )


def _too_large(path: Any, index: int, size: str, cap: int) -> ImageLoadError:
    return ImageLoadError(
        f"Image file {describe(path, index)} has {size} bytes, more than the {cap}-byte cap "
        "of one image (skclip._images.image_byte_cap(), 8 bytes per pixel of "
        "PIL.Image.MAX_IMAGE_PIXELS). If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS "
        "(or set it to None) before encoding."
    )


def _read_capped(fd: int, size_hint: int, cap: int | None, path: Any, index: int) -> bytes:
    """Everything ``fd`` holds, but never more than ``cap`` bytes (then an error)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        want = max(size_hint + 1 - total, 2**16)
        if cap is not None:
            want = min(want, cap + 1 - total)
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if cap is not None and total > cap:
            raise _too_large(path, index, f"more than {cap}", cap)


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def read_image_bytes(path: str | os.PathLike, index: int = 0) -> bytes:
    """The bytes of the image file ``path``, read with the limits that hold for every input.

    Only a regular file (or a symbolic link to one) is read: a FIFO, a device, a socket or
    a folder is refused without reading it. The file is opened non-blocking (a FIFO
    cannot hang the open) and checked again on the open descriptor. At most
    :func:`image_byte_cap` bytes are read (raise ``PIL.Image.MAX_IMAGE_PIXELS`` to raise
    it); a file that reports size 0 but has contents (``/proc``, ``/sys``) is refused.

    Parameters
    ----------
    path : str or path-like
        The image file.
    index : int, default=0
        Its position among the inputs, to name it in errors.

    Returns
    -------
    data : bytes

    Raises
    ------
    ImageLoadError
        Naming the file: missing, unreadable, not a regular file or over the byte cap.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "a.png"), "wb") as f:
    ...     f.write(b"not really a PNG")
    16
    >>> read_image_bytes(os.path.join(folder, "a.png"))
    b'not really a PNG'
    >>> os.mkfifo(os.path.join(folder, "pipe.jpg"))  # a reader would wait for a writer
    >>> read_image_bytes(os.path.join(folder, "pipe.jpg"), index=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    skclip._images.ImageLoadError: Image '...pipe.jpg' (input 3) is a FIFO (named pipe), ...
    """
    try:
        _check_regular(os.stat(path), path, index)  # never open a device or a FIFO at all
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ImageLoadError(f"Image file not found: {describe(path, index)}.") from None
    except IsADirectoryError:
        raise ImageLoadError(
            f"Expected an image file but got a directory: {describe(path, index)}."
        ) from None
    except OSError as exc:  # permissions, symbolic-link loops, names too long...
        raise ImageLoadError(
            f"Cannot read image {describe(path, index)}: {exc.strerror or exc}."
        ) from None
    try:
        info = os.fstat(fd)
        _check_regular(info, path, index)  # what was opened, if the path changed meanwhile
        cap = image_byte_cap()
        if cap is not None and info.st_size > cap:
            raise _too_large(path, index, str(info.st_size), cap)
        try:
            data = _read_capped(fd, info.st_size, cap, path, index)
        except OSError as exc:
            raise ImageLoadError(
                f"Cannot read image {describe(path, index)}: {exc.strerror or exc}."
            ) from None
    finally:
        os.close(fd)
    if info.st_size == 0 and data:
        raise ImageLoadError(
            f"Image {describe(path, index)} is a file of a virtual file system (such as /proc "
            "or /sys: size 0, yet it has contents), not an image file."
        )
    return data


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
    palette, CMYK and 16-bit images are converted to 8-bit RGB: 16-bit pixels (files,
    PIL ``"I;16"`` and ``"I"`` images, ``uint16`` arrays) scaled by 255/65535, ``bool``
    arrays as 0 and 255, other integer arrays must lie in [0, 255]. Float pixels (float
    arrays, PIL ``"F"`` images, float TIFF files) must lie in [0, 1] and are scaled to
    [0, 255]. A path is read with :func:`read_image_bytes` (regular files only, at most
    :func:`image_byte_cap` bytes); for a path whose bytes were already read (to hash
    them), pass them as ``data`` to avoid a second read. Images without pixels, over
    Pillow's ``MAX_IMAGE_PIXELS`` or thinner than :data:`MAX_ASPECT_RATIO` are refused
    before decoding.

    Raises
    ------
    ImageLoadError
        With a message naming the file (or input position) that failed.
    """
    if isinstance(item, (str, os.PathLike)):
        source = io.BytesIO(read_image_bytes(item, index) if data is None else data)
        try:
            with Image.open(source) as img:
                _check_size(img.size, item, index)  # from the header, before decoding
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img, item, index)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            if isinstance(exc, ImageLoadError):
                raise
            raise ImageLoadError(
                f"Cannot read image {describe(item, index)}: {readable(str(exc))}"
            ) from exc
    if isinstance(item, Image.Image):
        _check_size(item.size, item, index)
        try:
            return _to_rgb(ImageOps.exif_transpose(item), item, index)
        except ImageLoadError:
            raise
        except (OSError, ValueError) as exc:
            raise ImageLoadError(f"Cannot convert {describe(item, index)}: {exc}") from exc
    if isinstance(item, np.ndarray):
        return _to_rgb(_array_to_image(item, index))
    raise ImageLoadError(
        f"Unsupported input type for {describe(item, index)}: expected a file path (str or "
        "pathlib.Path), a PIL.Image.Image or a numpy array."
    )


def fixed_size(config: dict) -> tuple[int, int] | None:
    """The (height, width) of every preprocessed input of an image ``config`` (as
    ``skclip.backbones.preprocess.image_config`` returns it): the center crop, else the
    resized size; None where inputs vary (a resize of the shortest edge without a crop,
    or SigLIP 2's NaFlex patches, whose configs have no ``crop_size``).

    Examples
    --------
    >>> fixed_size({"do_center_crop": True, "crop_size": (224, 224), "size": (None, None)})
    (224, 224)
    >>> fixed_size({"do_center_crop": False, "crop_size": None, "size": (None, None)}) is None
    True
    """
    if "crop_size" not in config:
        return None
    height, width = config["crop_size"] if config["do_center_crop"] else config["size"]
    return None if height is None or width is None else (int(height), int(width))


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
        As returned by ``skclip.backbones.preprocess.image_config``.
    """

    def __init__(self, config: dict) -> None:
        self.config = dict(config)
        self._scale = config["rescale_factor"] if config["do_rescale"] else 1.0

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the arrays this preprocessor returns for any input."""
        size = fixed_size(self.config)
        if size is not None:
            return size
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
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and edge * new_long > limit:  # before any pixel is allocated
            raise ValueError(
                f"resizing its {width}x{height} pixels to a shortest side of {edge} would make "
                f"{edge * new_long} pixels, more than PIL.Image.MAX_IMAGE_PIXELS={limit}"
            )
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
