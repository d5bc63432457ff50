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

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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
    hashed again only when it changed."""

    def __init__(self, maxsize: int = 1_000_000) -> None:
        self._memo: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize

    @staticmethod
    def _stamp(path: str) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (path, st.st_size, st.st_mtime_ns)

    def known(self, path: str) -> str | None:
        """The digest if the file is unchanged since it was last hashed, else None."""
        stamp = self._stamp(path)
        with self._lock:
            return None if stamp is None else self._memo.get(stamp)

    def read(self, path: str) -> tuple[str, bytes]:
        """Read the file, hash it, remember the digest; returns (digest, bytes)."""
        stamp = self._stamp(path)
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


class DiskStore:
    """One file per embedding under ``folder``, written atomically, with a checksum.

    File layout: 8-byte magic, 16-byte blake2b digest of the payload, float32 payload.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.emb"

    def get(self, key: str, dim: int) -> np.ndarray | None:
        try:
            raw = self._path(key).read_bytes()
        except OSError:
            return None
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

    def get(self, digest: str) -> np.ndarray | None:
        key = self.prefix + digest
        vec = MEMORY.get(key)
        if vec is None and self.disk is not None:
            vec = self.disk.get(key, self.dim)
            if vec is not None:
                MEMORY.put(key, vec)
        return vec

    def put(self, digest: str, vec: np.ndarray) -> None:
        key = self.prefix + digest
        MEMORY.put(key, vec)
        if self.disk is not None:
            self.disk.put(key, vec)
