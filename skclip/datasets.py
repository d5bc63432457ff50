"""Loading labelled images from folders, like :func:`sklearn.datasets.load_files`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._compat import validate_params

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _images_below(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image files in ``folder`` and its sub-folders, hidden entries skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in filenames:
            if not _hidden(name) and name.lower().endswith(extensions):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def _normalize_extensions(extensions: str | Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot; a single string is one extension."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = []
    for ext in extensions:
        if not isinstance(ext, str) or ext.strip(".") == "":
            raise ValueError(
                f"extensions must be file extensions such as '.jpg' or 'png', got {ext!r}."
            )
        exts.append(ext.lower() if ext.startswith(".") else f".{ext.lower()}")
    return tuple(exts)


@validate_params(
    {
        "root": [str, os.PathLike],
        "extensions": [str, Iterable],
        "return_X_y": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def load_image_folder(
    root: str | os.PathLike,
    extensions: str | Iterable[str] = IMAGE_EXTENSIONS,
    return_X_y: bool = False,
) -> Bunch | tuple[np.ndarray, np.ndarray]:
    """Load the file names and labels of images stored one folder per class.

    ::

        root/
            dent/       img_001.jpg, img_002.jpg, ...
            ok/         a.png, batch2/b.png, ...
            scratch/    ...

    Each immediate sub-folder of ``root`` is a class, named after the folder. Its images
    are found recursively (so ``ok/batch2/b.png`` belongs to class ``ok``). Hidden files
    and folders (names starting with ``.`` or ``__``, e.g. ``.DS_Store``) are skipped, as
    are files directly in ``root`` and files with other extensions. Classes and files are
    sorted, so the result is deterministic.

    Parameters
    ----------
    root : str or path-like
        The folder holding one sub-folder per class.
    extensions : str or iterable of str, default=IMAGE_EXTENSIONS
        ``(".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")``.
        File extensions counted as images, compared case-insensitively, with or without
        the leading dot. A single string is one extension (``".png"``).
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``filenames`` : ndarray of str, the image paths;
        ``target`` : ndarray of int, the class index of each image;
        ``target_names`` : ndarray of str, the class names (folder names), sorted;
        ``labels`` : ndarray of str, the class name of each image
        (``target_names[target]``), ready to use as ``y`` so that the class names reach
        the text prompts.
    (filenames, target) : tuple
        If ``return_X_y`` is True.

    Raises
    ------
    ValueError
        If ``root`` is not a folder, has fewer than two class folders, or a class folder
        has no images; the message names the folder. If an extension is not a
        non-empty string.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skclip.datasets import load_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["cat", "dog"]:
    ...     (root / name).mkdir()
    ...     Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name / "1.png")
    >>> data = load_image_folder(root)
    >>> data.target_names.tolist(), data.target.tolist(), data.labels.tolist()
    (['cat', 'dog'], [0, 1], ['cat', 'dog'])
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"Image folder {os.fspath(root)!r} does not exist or is not a folder.")
    exts = _normalize_extensions(extensions)
    classes = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not _hidden(p.name))
    if len(classes) < 2:
        raise ValueError(
            f"Image folder {os.fspath(root)!r} has {len(classes)} class folder(s) "
            f"{classes}; it needs one sub-folder per class, at least two."
        )
    filenames, target = [], []
    for index, name in enumerate(classes):
        files = _images_below(root_path / name, exts)
        if not files:
            raise ValueError(
                f"Class folder {os.fspath(root_path / name)!r} has no images with extensions "
                f"{list(exts)}."
            )
        filenames.extend(files)
        target.extend([index] * len(files))
    filenames_arr, target_arr = np.array(filenames), np.array(target)
    if return_X_y:
        return filenames_arr, target_arr
    names = np.array(classes)
    return Bunch(
        filenames=filenames_arr, target=target_arr, target_names=names, labels=names[target_arr]
    )
