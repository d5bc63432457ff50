"""Embedding cache: a process-wide LRU in memory, plus an optional folder on disk.

An entry is keyed by the *settings* (model weights fingerprint, preprocessing,
dtype/device, normalization, augmentation views and seed) and the image *content*
(a hash of the file's bytes or the array's pixels, never just the path), so an edited
file is re-encoded, and the same image under another path or in another fold is not.

The memory store is shared by every featurizer in the process: ``GridSearchCV``
clones the featurizer for each fit, and the clones must find what the first one
encoded. A disk folder is shared between processes (``GridSearchCV(n_jobs=2)``
workers, later runs); writes are atomic and every entry carries a checksum, so a
partial or corrupt file is ignored and recomputed, never returned.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._watch import FileStamps

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "maxsize", "currsize"])

_DIGEST_SIZE = 16


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=_DIGEST_SIZE)


def settings_digest(*parts: Any) -> str:
    """Stable hex digest of a tuple of settings (reprs of plain values)."""
    h = _hasher()
    h.update(repr(parts).encode())
    return h.hexdigest()


class _FileDigests:
    """Content digests of files, memoized by (path, size, mtime): a file is read and
    hashed again only when it changed.

    Stamps come from :class:`~skclip._watch.FileStamps`: a file is stat'ed again only
    when it may have changed (inotify on Linux), so looking up many unchanged files
    costs no system call per file."""

    def __init__(self, maxsize: int = 1_000_000) -> None:
        self._memo: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.stamps = FileStamps()

    def known(self, path: str) -> str | None:
        """The digest if the file is unchanged since it was last hashed, else None."""
        return self.known_many([path])[0]

    def known_many(self, paths: list[str]) -> list[str | None]:
        """:meth:`known` of each path, in one pass."""
        stamps = self.stamps.stamps(paths)
        with self._lock:
            get = self._memo.get
            return [None if stamp is None else get(stamp) for stamp in stamps]

    def read(self, path: str) -> tuple[str, bytes]:
        """Read the file, hash it, remember the digest; returns (digest, bytes)."""
        stamp = self.stamps.stamps([path])[0]
        with open(path, "rb") as f:
            data = f.read()
        h = _hasher()
        h.update(data)
        digest = h.hexdigest()
        if stamp is not None:
            with self._lock:
                self._memo[stamp] = digest
                if len(self._memo) > self.maxsize:
                    self._memo.popitem(last=False)
        return digest, data


FILE_DIGESTS = _FileDigests()


def memory_digest(item: Any) -> str:
    """Content digest of an in-memory image (PIL image or numpy array).

    For a PIL image it covers everything its RGB conversion reads: mode, size, pixels,
    EXIF orientation, the palette of a palette image and the ``transparency`` entry of
    ``img.info`` (composited on white). Hashing loads a lazily opened image, so it raises
    (``OSError``) for a truncated file.
    """
    h = _hasher()
    if isinstance(item, Image.Image):
        pixels = item.tobytes()  # first: loads a lazily opened image (and its palette)
        palette = item.palette
        colours = bytes(item.getpalette(rawmode=None) or ()) if palette is not None else b""
        h.update(
            f"PIL:{item.mode}:{item.size}:{item.getexif().get(0x0112)}:"
            f"transparency={item.info.get('transparency')!r}:"
            f"palette={palette.mode if palette is not None else None}:{len(colours)}:".encode()
        )
        h.update(colours)
        h.update(pixels)
    else:
        arr = np.ascontiguousarray(item)
        h.update(f"nd:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class MemoryStore:
    """Thread-safe LRU of embedding vectors, bounded by a number of entries."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vec = self._data.get(key)
            if vec is not None:
                self._data.move_to_end(key)
            return vec

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """:meth:`get` of each key under one lock."""
        with self._lock:
            data = self._data
            vecs = [data.get(key) for key in keys]
            touch = data.move_to_end
            for key, vec in zip(keys, vecs):
                if vec is not None:
                    touch(key)
            return vecs

    def put(self, key: str, vec: np.ndarray) -> None:
        vec = np.array(vec, dtype=np.float32)
        vec.setflags(write=False)
        with self._lock:
            self._data[key] = vec
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def count(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._data))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


MEMORY = MemoryStore()

_MAGIC = b"SKCLIPE1"
_WRITES = 0  # disk-cache writes of this process (trims are spread over them)


#: Default bound of a disk cache, in entries (about 2 GB of 512-d entries on a file
#: system with 4 kB blocks); the oldest entries go first.
DISK_MAX_ENTRIES = 500_000
_SHARDS = 256  # entries live in folder/<first 2 hex digits of the key>/
_TRIM_EVERY = 64  # writes of a process between two trims of the shard written to
_HOST = socket.gethostname()


class DiskStore:
    """One file per embedding under ``folder``, written atomically, with a checksum.

    File layout: 8-byte magic, 16-byte blake2b digest of the payload, float32 payload.

    Bounded by ``max_entries``: every ``_TRIM_EVERY`` writes of a process, the shard
    just written to is trimmed to its share of the bound, oldest entries first (a disk
    hit refreshes an entry's time, so the order is about least recently used).

    Processes sharing the folder do not encode an image twice at the same time: before
    encoding, a process *claims* the entry (an exclusive ``.claim`` file naming its host
    and process), and the others wait for the entry instead (see
    ``skclip._encode.encode``). A claim whose process is gone, or older than
    ``claim_timeout`` seconds, is void.
    """

    claim_timeout = 300.0

    def __init__(self, folder: str | os.PathLike, max_entries: int = DISK_MAX_ENTRIES) -> None:
        self.folder = Path(folder)
        self.max_entries = max_entries

    def _claim_path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.claim"

    def claim(self, key: str) -> bool:
        """Claim the entry for this process; False if another live process holds it."""
        path = self._claim_path(key)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.claimed(key):
                    return False
                try:  # void: its process is gone
                    os.unlink(path)
                except OSError:
                    pass
                continue
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{_HOST} {os.getpid()}")
            return True
        return False

    def claimed(self, key: str) -> bool:
        """Whether another live process claims the entry."""
        path = self._claim_path(key)
        try:
            owner = path.read_text().split()
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False
        if age > self.claim_timeout:
            return False
        if len(owner) == 2 and owner[0] == _HOST and owner[1].isdigit():
            pid = int(owner[1])
            return pid != os.getpid() and _alive(pid)
        return True

    def release(self, key: str) -> None:
        """Drop this process's claim on the entry."""
        try:
            os.unlink(self._claim_path(key))
        except OSError:
            pass

    def _trim(self, shard: Path) -> None:
        """Delete the oldest entries of ``shard`` beyond its share of the bound."""
        share = max(1, self.max_entries // _SHARDS)
        try:
            with os.scandir(shard) as it:
                entries = [e for e in it if e.name.endswith(".emb") and not e.name.startswith(".")]
            if len(entries) <= share:
                return
            dated = sorted(entries, key=lambda e: e.stat().st_mtime_ns)
        except OSError:
            return
        for entry in dated[: len(dated) - share]:
            try:
                os.unlink(entry.path)
            except OSError:
                pass

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.emb"

    def get(self, key: str, dim: int) -> np.ndarray | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)  # recently used: trimmed last
        except OSError:
            pass  # a read-only cache
        head = len(_MAGIC) + _DIGEST_SIZE
        if len(raw) != head + 4 * dim or not raw.startswith(_MAGIC):
            return None  # partial, foreign or corrupt: recompute
        payload = raw[head:]
        h = _hasher()
        h.update(payload)
        if h.digest() != raw[len(_MAGIC) : head]:
            return None
        vec = np.frombuffer(payload, dtype=np.float32)
        return vec if np.all(np.isfinite(vec)) else None

    def put(self, key: str, vec: np.ndarray) -> None:
        payload = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
        h = _hasher()
        h.update(payload)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".emb")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + h.digest() + payload)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        global _WRITES
        _WRITES += 1
        if _WRITES % _TRIM_EVERY == 0:
            self._trim(path.parent)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, dead but not yet reaped by
    its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # exists, another user's
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS...): trust kill()


_WORKERS_PREFIX = "skclip-workers-"


def worker_folder() -> Path | None:
    """The disk folder that a process and its worker processes share, or None.

    ``GridSearchCV(n_jobs=2)`` runs its fits in worker processes (joblib's loky, or
    multiprocessing), each with its own memory cache: without a shared folder every
    worker would encode every image again, and the final refit in the parent process
    once more. This folder, in the temporary directory and named after the parent
    process, lets them share embeddings (and, with the claims of :class:`DiskStore`,
    split the encoding work) without any setting. A worker gets its parent's folder; a
    process that is not a worker gets its own folder once its workers have made it
    (None before). Folders of processes that are gone are deleted when a new one is
    made.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:  # not a worker: its workers' folder, if any
        own = _folder_of(os.getpid())
        if not (own.is_dir() and _private(own)):
            return None
        global _CLEAN_AT_EXIT
        if not _CLEAN_AT_EXIT:  # the parent removes its workers' folder when it ends
            _CLEAN_AT_EXIT = True
            atexit.register(clear_worker_folder)
        return own
    folder = _folder_of(parent.pid)
    if not folder.exists():
        _remove_stale_worker_folders(folder.parent)
        try:
            os.mkdir(folder, 0o700)  # readable by this user alone
        except FileExistsError:
            pass  # another worker made it
        except OSError:
            return None
    return folder if _private(folder) else None  # never a folder another user made


_CLEAN_AT_EXIT = False


def _private(folder: Path) -> bool:
    """Whether ``folder`` is a real folder of this user that nobody else can read or write."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if not hasattr(os, "getuid"):  # Windows: the temporary folder is per user already
        return True
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def _folder_of(pid: int) -> Path:
    """The folder that the worker processes of process ``pid`` share."""
    return Path(tempfile.gettempdir()) / f"{_WORKERS_PREFIX}{_HOST}-{pid}"


def clear_worker_folder() -> None:
    """Delete the folder this process shares with its workers (not a parent's)."""
    if multiprocessing.parent_process() is None:
        own = _folder_of(os.getpid())
        shutil.rmtree(own, ignore_errors=True)


def _remove_stale_worker_folders(root: Path) -> None:
    try:
        with os.scandir(root) as it:
            names = [e.name for e in it if e.name.startswith(f"{_WORKERS_PREFIX}{_HOST}-")]
    except OSError:
        return
    for name in names:
        pid = name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        if not _alive(int(pid)):
            shutil.rmtree(root / name, ignore_errors=True)


class EmbeddingCache:
    """Memory (then disk) lookups for one set of settings; keys are content digests.

    Parameters
    ----------
    settings : str
        Digest of everything besides the image that determines an embedding.
    dim : int
        Embedding dimension (disk entries of another length are ignored).
    folder : path-like or None
        Disk folder shared between processes, or None for memory only.
    """

    def __init__(self, settings: str, dim: int, folder: str | os.PathLike | None = None) -> None:
        self.prefix = settings[:16]
        self.dim = dim
        self.disk = DiskStore(Path(folder) / f"d{dim}") if folder is not None else None

    def get_many(self, digests: list[str]) -> list[np.ndarray | None]:
        """:meth:`get` of each digest: one pass over memory, then disk for the misses."""
        prefix = self.prefix
        vecs = MEMORY.get_many([prefix + digest for digest in digests])
        if self.disk is not None:
            for j, vec in enumerate(vecs):
                if vec is None:
                    vecs[j] = self.get(digests[j])
        return vecs

    def get(self, digest: str) -> np.ndarray | None:
        key = self.prefix + digest
        vec = MEMORY.get(key)
        if vec is None and self.disk is not None:
            vec = self.disk.get(key, self.dim)
            if vec is not None:
                MEMORY.put(key, vec)
        return vec

    def claim(self, digest: str) -> bool:
        """Claim the entry before encoding it (True without a disk folder)."""
        return self.disk is None or self.disk.claim(self.prefix + digest)

    def claimed(self, digest: str) -> bool:
        """Whether another live process is encoding this entry."""
        return self.disk is not None and self.disk.claimed(self.prefix + digest)

    def release(self, digest: str) -> None:
        if self.disk is not None:
            self.disk.release(self.prefix + digest)

    def put(self, digest: str, vec: np.ndarray) -> None:
        key = self.prefix + digest
        MEMORY.put(key, vec)
        if self.disk is not None:
            self.disk.put(key, vec)
