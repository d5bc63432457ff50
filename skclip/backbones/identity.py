"""A checkpoint's identity without loading it: recorded once, checked by file stamps.

Embedding-cache keys name the checkpoint by the fingerprints of its loaded weights
(:attr:`~skclip.backbones.families.Backbone.vision_fingerprint` and the rest), so a
process had to load the model, seconds of reading weights and building modules, plus
hashing them, before it could even look up an embedding. A process whose images are
all in the cache (a search's final refit, a later run sharing ``cache_dir``) needs
none of it: only those fingerprints.

So the first process that loads a checkpoint *records* what its keys depend on
(:class:`CheckpointInfo`: the fingerprints, the embedding dimension, the preprocessing,
the image tower's configuration, the zero-shot scale and bias) in a small file of the
user's cache folder (``user_cache_dir("checkpoints")``), under the *stamps* of the
checkpoint folder's files: ``(name, size, mtime_ns, inode, ctime_ns, device)`` of
every file, as :mod:`skclip.encoding.stamps` stamps images. Later processes read the
record if the folder's files have exactly those stamps now, and the same versions of
torch, transformers and skclip would load them (all part of the record's key):

- an edit in place changes the change time (``ctime``), which no program can set back,
  even if the size and modification time are restored (``cp -p``, ``touch -r``);
- a replaced file (written elsewhere and renamed over, as ``save_pretrained`` and git
  do) has another inode; an added or removed file changes the list;
- a moved or renamed checkpoint *folder* keeps its files' stamps, and its identity:
  the same files, the same fingerprints.

Files changed in the last two seconds are not recorded (a change within one tick of a
coarse clock could leave the same stamp: git's "racily clean" rule), nor is a folder
whose stamps changed while the model was loaded. Records are written atomically, read
only from a folder of this user that others cannot write to, and checked field by
field; anything else is ignored and the model is loaded as before. A hub id is
recorded under the folder of its local snapshot (the one loading it offline reads).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .._paths import user_cache_dir
from .._version import __version__
from . import families
from ._hub import _path_reason
from .families import Backbone

#: Version of the record; part of its key. Bump it when a fingerprint's recipe changes.
RECORD_FORMAT = 1

#: A file modified or changed this recently (ns) is not recorded (coarse clocks).
RACY_NS = 2_000_000_000

#: Most bytes of a record that are read.
_RECORD_CAP = 1 << 20

Stamps = tuple  # ((name, size, mtime_ns, inode, ctime_ns, device), ...), sorted by name


@dataclass(frozen=True, eq=False)
class CheckpointInfo:
    """What the cache keys and the heads need of a checkpoint, without its weights.

    Has the attributes of a :class:`~skclip.backbones.families.Backbone` that name it
    (same meaning, same values): a record stands in for the loaded model wherever
    only those are read.

    Attributes
    ----------
    name : str
    family : str
    has_text : bool
    tokenizer_error : str or None
        Why there is no tokenizer (None: there is one, or the backbone is image-only).
    vision_fingerprint, fingerprint : str
    text_fingerprint : str or None
        None for an image-only backbone or one without a tokenizer.
    embedding_dim : int
    image_config : dict
    vision_config_json : str
    logit_scale, logit_bias : float
        None for an image-only backbone.
    device : torch.device
    dtype : torch.dtype
    """

    name: str
    family: str
    has_text: bool
    tokenizer_error: str | None
    vision_fingerprint: str
    fingerprint: str
    text_fingerprint: str | None
    embedding_dim: int
    image_config: dict
    vision_config_json: str
    logit_scale: float | None
    logit_bias: float | None
    device: torch.device
    dtype: torch.dtype


def info_of(clip: Backbone) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a loaded model (computes its fingerprints)."""
    text_ready = clip.has_text and clip.tokenizer is not None
    return CheckpointInfo(
        name=clip.name,
        family=clip.family,
        has_text=clip.has_text,
        tokenizer_error=clip.tokenizer_error,
        vision_fingerprint=clip.vision_fingerprint,
        fingerprint=clip.fingerprint,
        text_fingerprint=clip.text_fingerprint if text_ready else None,
        embedding_dim=int(clip.embedding_dim),
        image_config=dict(clip.image_config),
        vision_config_json=clip.vision_config_json,
        logit_scale=float(clip.logit_scale) if clip.has_text else None,
        logit_bias=float(clip.logit_bias) if clip.has_text else None,
        device=clip.device,
        dtype=clip.dtype,
    )


# -- where a checkpoint lives, and its stamps ----------------------------------------------------
def checkpoint_folder(name: str) -> Path | None:
    """The folder ``name`` is loaded from: a local folder, or the local snapshot of a hub
    id (None if there is none yet)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or _path_reason(name) is not None:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an odd cache: no record, load as before
        return None
    return Path(config).parent if isinstance(config, str) else None


def folder_stamps(folder: Path | None) -> Stamps | None:
    """The stamps of the files in ``folder`` (links followed, sub-folders left out),
    sorted by name; None if it cannot be listed or a file cannot be stat'ed."""
    if folder is None:
        return None
    out = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                st = os.stat(entry.path)
                if stat.S_ISREG(st.st_mode):
                    out.append((entry.name, *_stamp(st)))
    except OSError:
        return None
    return tuple(sorted(out))


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev


def settled(stamps: Stamps, now_ns: int) -> bool:
    """Whether no file of ``stamps`` was modified or changed within :data:`RACY_NS` of
    ``now_ns``: only then can a later edit not leave the same stamp."""
    return all(max(s[2], s[4]) < now_ns - RACY_NS for s in stamps)


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    """What else the fingerprints depend on: skclip's and torch's versions, the code that
    computes them (the stamp of :mod:`skclip.backbones.families`), and transformers'
    version without importing it (a second that a process whose images are all cached
    need not spend): the stamp of the file ``import transformers`` runs, which an
    upgrade or a reinstall rewrites."""
    spec = importlib.util.find_spec("transformers")
    files = [spec.origin if spec is not None else None, families.__file__]
    return __version__, torch.__version__, *[(f, _file_stamp(f)) for f in files]


def _file_stamp(path: str | None) -> tuple | None:
    try:
        return _stamp(os.stat(path)) if path else None
    except OSError:
        return None


def record_key(stamps: Stamps, device: torch.device, dtype: torch.dtype) -> str:
    """The name of the record of a folder with ``stamps``, loaded on ``device`` in
    ``dtype`` by these versions of skclip, torch and transformers."""
    parts = [RECORD_FORMAT, *_versions(), device.type, str(dtype), [list(s) for s in stamps]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


# -- the records ---------------------------------------------------------------------------
def record_folder() -> Path:
    """Where records are kept: ``user_cache_dir("checkpoints")``."""
    return user_cache_dir("checkpoints")


def write(clip: Backbone, stamps: Stamps | None, start_ns: int) -> None:
    """Record ``clip``'s identity under ``stamps``, the folder's stamps before it was
    loaded, if they are unchanged now and settled (see :func:`settled`). Never raises:
    a record that cannot be written only means the next process loads the model."""
    if stamps is None or not stamps or not settled(stamps, start_ns):
        return
    try:
        info = info_of(clip)  # hashes the weights (once per loaded model)
    except Exception:  # noqa: BLE001 - raised again where a fingerprint is needed
        return
    if folder_stamps(checkpoint_folder(clip.name)) != stamps:
        return  # changed while it was loaded: its fingerprints may be of the old files
    data = asdict(info)
    data.update(
        image_config=repr(info.image_config),  # tuples, exactly (JSON would make lists)
        device=info.device.type,
        dtype=str(info.dtype),
        stamps=[list(s) for s in stamps],
    )
    if _literal(data["image_config"]) != info.image_config:
        return  # not plain literals: it would not read back the same
    data["key"] = record_key(stamps, info.device, info.dtype)
    with contextlib.suppress(OSError, TypeError, ValueError):
        folder = record_folder()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, folder / f"{data['key']}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _read_record(path: Path) -> dict | None:
    """The record at ``path`` if it is a regular file of this user that others cannot
    write to (nor its folder), else None."""
    try:
        folder = os.stat(path.parent)
        if not _own(folder):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not (stat.S_ISREG(os.fstat(f.fileno()).st_mode) and _own(os.fstat(f.fileno()))):
                return None
            text = f.read(_RECORD_CAP + 1)
        data = json.loads(text) if len(text) <= _RECORD_CAP else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _literal(text: Any) -> Any:
    """The Python literal ``text`` holds (``repr`` of a dict of plain values), or None."""
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if repr(value) == text else None


def _own(st: os.stat_result) -> bool:
    """Of this user and not writable by others (always True where there are no uids)."""
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "family": (str,),
    "has_text": (bool,),
    "tokenizer_error": (str, type(None)),
    "vision_fingerprint": (str,),
    "fingerprint": (str,),
    "text_fingerprint": (str, type(None)),
    "embedding_dim": (int,),
    "image_config": (dict,),
    "vision_config_json": (str,),
    "logit_scale": (float, type(None)),
    "logit_bias": (float, type(None)),
}


def _valid(name: str, value: Any) -> bool:
    """Whether a record's field has its type (a bool is no int here)."""
    return type(value) in _TYPES[name]


def read(name: str, device: torch.device, dtype: torch.dtype) -> CheckpointInfo | None:
    """The recorded identity of checkpoint ``name`` loaded on ``device`` in ``dtype``, if a
    record matches the stamps its folder's files have now; else None."""
    stamps = folder_stamps(checkpoint_folder(name))
    if not stamps:
        return None
    key = record_key(stamps, device, dtype)
    data = _read_record(record_folder() / f"{key}.json")
    if data is None or data.get("key") != key:
        return None
    if data.get("stamps") != [list(s) for s in stamps]:
        return None
    if data.get("device") != device.type or data.get("dtype") != str(dtype):
        return None
    values = {**data, "image_config": _literal(data.get("image_config"))}
    names = [f.name for f in fields(CheckpointInfo) if f.name not in ("device", "dtype")]
    if not all(_valid(field, values.get(field)) for field in names):
        return None
    values = {field: values[field] for field in names}
    return CheckpointInfo(**{**values, "name": name, "device": device, "dtype": dtype})


def seed(clip: Backbone, info: CheckpointInfo) -> None:
    """Give a freshly loaded ``clip`` the fingerprints recorded for its files, so they are
    not computed again (the same files, loaded by the same versions: the same values)."""
    clip.__dict__["vision_fingerprint"] = info.vision_fingerprint
    clip.__dict__["fingerprint"] = info.fingerprint
    if info.text_fingerprint is not None:
        clip.__dict__["text_fingerprint"] = info.text_fingerprint
