"""Loading labelled images from folders, like :func:`sklearn.datasets.load_files`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.utils import Bunch

from ._compat import validate_params

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


class _Listing(NamedTuple):
    """What :func:`_list_images` found below a folder, each list sorted."""

    images: list[str]  # regular files (or links to one) with an image extension
    special: list[str]  # entries with an image extension that are FIFOs, devices, sockets
    other: list[str]  # regular files with another extension
    links: list[str]  # the images that are symbolic links (to check where they lead)


def _list_images(folder: Path, extensions: tuple[str, ...]) -> _Listing:
    """Image files in ``folder`` and its sub-folders, hidden entries skipped.

    Only regular files count (a FIFO would block its reader, a device never end); links
    to files are followed, links to folders are not (as :func:`os.walk`). A link that
    cannot be followed stays an image, so that encoding names it as missing."""
    images, special, other, links = [], [], [], []
    stack = [os.fspath(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif not entry.name.lower().endswith(extensions):
                    if entry.is_file():
                        other.append(entry.path)
                elif entry.is_file():  # the d_type, or the target of a link: no stat call
                    images.append(entry.path)
                    if entry.is_symlink():
                        links.append(entry.path)
                elif not entry.is_dir():  # a link to a folder is not followed
                    try:
                        entry.stat()
                    except OSError:
                        images.append(entry.path)  # dangling: encoding says it is missing
                    else:
                        special.append(entry.path)
    return _Listing(sorted(images), sorted(special), sorted(other), links)


def _check_link_class(link: Path, folder: str, seen: dict[Path, str]) -> None:
    """Record the target of the file link ``link`` in class folder ``folder``; an error if
    it is an image of another class (see :func:`_images_below`)."""
    target = link.resolve()
    first = next((seen[p] for p in (target, *target.parents) if p in seen), None)
    if first is None:
        seen[target] = first = folder
    if first != folder:
        raise ValueError(
            f"Image {os.fspath(link)!r} is a symbolic link to {os.fspath(target)!r}, an image of "
            f"class folder {first!r}: it would get two labels. Remove the link, or copy the image."
        )


def _images_below(
    folder: Path, extensions: tuple[str, ...], seen: dict[Path, str] | None = None
) -> list[str]:
    """Image files in ``folder`` and its sub-folders (see :func:`_list_images`), sorted;
    a warning names the entries skipped because they are not regular files.

    ``seen`` maps the resolved class folders, and the targets of file links met so far,
    to their class folder: a link to an image of another class (in its folder, or the
    target of another class's link) is an error, since that image would get two labels."""
    listing = _list_images(folder, extensions)
    if seen is not None:
        for link in listing.links:
            _check_link_class(Path(link), os.fspath(folder), seen)
    if listing.special:
        shown = ", ".join(repr(p) for p in listing.special[:5])
        more = f" and {len(listing.special) - 5} more" if len(listing.special) > 5 else ""
        warnings.warn(
            f"Skipped {len(listing.special)} entries of {os.fspath(folder)!r} that are not "
            f"regular files (FIFOs, devices or sockets): {shown}{more}.",
            UserWarning,
            stacklevel=4,  # the caller of load_image_folder
        )
    return listing.images


def _overlap(a: Path, b: Path) -> bool:
    """Whether one of two resolved folders is, or lies inside, the other."""
    return a == b or a in b.parents or b in a.parents


def _class_folders(root: Path, follow_symlinks: bool) -> list[str]:
    """The names of the class folders of ``root``, sorted. A link into ``root`` (or to
    ``root`` or a folder holding it) is an error: its images would get two labels. A link
    to a folder outside ``root`` is followed if ``follow_symlinks``, else skipped with a
    warning; two followed links may not share images either."""
    real_root = root.resolve()
    names: list[str] = []
    targets: dict[str, Any] = {}
    for path in root.iterdir():
        if not _hidden(path.name) and path.is_symlink() and not path.exists():
            warnings.warn(
                f"Class folder {os.fspath(path)!r} is a symbolic link to "
                f"{os.readlink(path)!r}, which does not exist: skipped, its class is missing.",
                UserWarning,
                stacklevel=4,
            )
        if _hidden(path.name) or not path.is_dir():
            continue
        if path.is_symlink():
            target = path.resolve()
            if _overlap(target, real_root):
                where = (
                    "the image folder itself"
                    if target == real_root
                    else "inside the image folder"
                    if real_root in target.parents
                    else "a folder holding the image folder"
                )
                raise ValueError(
                    f"Class folder {os.fspath(path)!r} is a symbolic link to "
                    f"{os.fspath(target)!r}, {where}: its images would be counted under two "
                    "classes. Remove the link, or copy the images."
                )
            if not follow_symlinks:
                warnings.warn(
                    f"Class folder {os.fspath(path)!r} is a symbolic link to "
                    f"{os.fspath(target)!r}, outside the image folder: skipped. Pass "
                    "follow_symlinks=True to use it.",
                    UserWarning,
                    stacklevel=4,
                )
                continue
            for name, other in targets.items():
                if _overlap(target, other):
                    raise ValueError(
                        f"Class folders {name!r} and {path.name!r} of {os.fspath(root)!r} are "
                        f"symbolic links to overlapping folders ({os.fspath(other)!r} and "
                        f"{os.fspath(target)!r}): their images would get two labels."
                    )
            targets[path.name] = target
        names.append(path.name)
    return sorted(names)


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
        "follow_symlinks": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def load_image_folder(
    root: str | os.PathLike,
    extensions: str | Iterable[str] = IMAGE_EXTENSIONS,
    return_X_y: bool = False,
    follow_symlinks: bool = False,
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
    are files directly in ``root``, files with other extensions and entries that are not
    regular files (FIFOs, devices, sockets: a warning names them). Links to files are
    followed; links to folders below a class folder are not. Classes and files are
    sorted, so the result is deterministic.

    Parameters
    ----------
    root : str or path-like
        The folder holding one sub-folder per class.
    extensions : str or iterable of str, default=IMAGE_EXTENSIONS
        ``(".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")``.
        File extensions counted as images, compared case-insensitively, with or without
        the leading dot. A single string is one extension (``".png"``).
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.
    follow_symlinks : bool, default=False
        Whether a class folder that is a symbolic link to a folder *outside* ``root``
        is used (``root/cat -> /mnt/photos/cats``). If False it is skipped with a
        warning. A class folder that links to ``root`` itself, into it or to a folder
        holding it is always an error, as are two followed links to overlapping
        folders: their images would be counted under two classes. Likewise a link to an
        image *file* that belongs to another class (a file of its folder, or the target
        of another class's link) is an error naming both. A class folder that is a
        dangling link (its target does not exist) is skipped with a warning naming it.

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
        If ``root`` is not a folder, has fewer than two class folders, a class folder
        has no images or is a symbolic link that would label images twice; the message
        names the folder. If an extension is not a non-empty string.

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
    classes = _class_folders(root_path, follow_symlinks)
    if len(classes) < 2:
        raise ValueError(
            f"Image folder {os.fspath(root)!r} has {len(classes)} class folder(s) "
            f"{classes}; it needs one sub-folder per class, at least two."
        )
    filenames, target = [], []
    # what belongs to each class so far: its folder (resolved), then its file links' targets
    seen = {(root_path / name).resolve(): os.fspath(root_path / name) for name in classes}
    for index, name in enumerate(classes):
        files = _images_below(root_path / name, exts, seen)
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
