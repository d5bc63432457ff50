"""The one door to the Hugging Face hub: ``from_pretrained`` with clear errors.

A leaf: it imports nothing of skclip, so every loader (configs, tokenizers, image
processors, models) can use it without an import running back up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def _path_reason(name: str) -> str | None:
    """Why ``name`` is meant as a local folder rather than a hub id (``None``: a hub id).

    Hub ids are ``"name"`` or ``"org/name"``. A name is a path when it is absolute,
    starts with ``.`` or ``~``, ends with a separator, uses ``\\`` (Windows) or more
    than one ``/``, is not a valid hub id, or its first part is a folder here
    (``models/clip-b32`` while ``models/`` exists).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isabs(name) or name.startswith((".", "~")):
        return "it is an absolute path or starts with '.' or '~'"
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if "\\" in name or name.endswith(tuple(seps)) or name.count("/") > 1:
        return "it is a path, not a hub id of the form 'name' or 'org/name'"
    if "/" in name and Path(name.split("/")[0]).is_dir():
        return f"the folder {name.split('/')[0]!r} exists here"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "it is not a valid hub id"
    return None


def _hub_unreachable(timeout: float = 2.0) -> str | None:
    """``None`` if the hub answers within ``timeout`` seconds, else why not.

    One quick request instead of the download code's retries, which take half a minute
    to give up without a network.
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # any transport error (httpx or requests): not reachable
        return f"{constants.ENDPOINT} did not answer within {timeout:g} s ({type(exc).__name__})"
    return None


def _offline_error(name: str, cause: BaseException | str) -> OSError:
    return OSError(
        f"Could not load the checkpoint {name!r}: it is not a local folder, and it is neither "
        "in the Hugging Face cache nor downloadable from the hub (no internet connection, or "
        "HF_HUB_OFFLINE=1). Pass a local folder instead, e.g. model='/path/to/clip-folder'. "
        "To make one, on a machine with internet run:\n"
        "    from transformers import AutoModel, AutoProcessor\n"
        f"    AutoModel.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"    AutoProcessor.from_pretrained({name!r}).save_pretrained('clip-folder')\n"
        f"and copy 'clip-folder' here. Original error: {cause}"
    )


def _check_readable(folder: Path, name: str) -> None:
    """A checkpoint folder whose listing or files cannot be read is named as such:
    transformers would report it as missing ("No such file") or as "Unrecognized model"."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"Checkpoint folder {name!r} cannot be read: {reason}.") from None
    for entry in entries:
        if entry.is_file() and not os.access(entry.path, os.R_OK):
            raise OSError(
                f"Checkpoint folder {name!r} cannot be read: its file {entry.name!r} is not "
                "readable (permission denied)."
            )


def from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)``: a local folder, else the local cache, then the hub
    (if it answers within 2 s), with clear errors."""
    path = Path(name).expanduser()
    if path.is_dir():
        _check_readable(path, name)
        return cls.from_pretrained(str(path), **kwargs)
    reason = "it exists but is a file" if path.exists() else _path_reason(name)
    if reason is not None:
        raise OSError(
            f"Checkpoint folder {name!r} does not exist or is not a folder (read as a local "
            f"path, not a hub id: {reason}). Pass the folder written by `save_pretrained` (it "
            f"holds config.json and the weights), or a hub id such as {DEFAULT_MODEL!r}."
        )
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as first:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise _offline_error(name, first) from first
        unreachable = _hub_unreachable()
        if unreachable:
            raise _offline_error(name, f"the hub cannot be reached: {unreachable}") from first
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise _offline_error(name, exc) from exc
