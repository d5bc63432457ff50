"""Where skclip keeps files between runs: the user's cache folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """skclip's folder in the user's cache directory, joined with ``parts``.

    ``$SKCLIP_CACHE_DIR`` if set; otherwise ``$XDG_CACHE_HOME/skclip`` (default
    ``~/.cache/skclip``) on Linux and other Unix systems, ``~/Library/Caches/skclip`` on
    macOS and ``%LOCALAPPDATA%\\skclip\\Cache`` on Windows (as ``platformdirs`` places
    them). The folder is not created here.

    Parameters
    ----------
    *parts : str
        Sub-folders, e.g. ``"onnx"``.

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> from skclip._paths import user_cache_dir
    >>> user_cache_dir("onnx").name  # e.g. ~/.cache/skclip/onnx
    'onnx'
    """
    if os.environ.get("SKCLIP_CACHE_DIR"):
        root = Path(os.environ["SKCLIP_CACHE_DIR"]).expanduser()
    elif sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        root = Path(base) / "skclip" / "Cache"
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches" / "skclip"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skclip"
    return root.joinpath(*parts)
