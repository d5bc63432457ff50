"""Embedding cache: a process-wide LRU in memory, plus an optional folder on disk.

An entry is keyed by the *settings* (model weights fingerprint, preprocessing,
dtype/device, the encoder that runs it, normalization, augmentation views and seed) and
the image *content*: a hash of exactly the bytes that were decoded (a file is read once,
hashed and decoded from the same buffer) or of the array's pixels, never the path. So an
edited file is encoded again, and the same image under another path or in another fold
is not.

The memory store is shared by every featurizer in the process: ``GridSearchCV``
clones the featurizer for each fit, and the clones must find what the first one
encoded. A disk folder is shared between processes (``GridSearchCV(n_jobs=2)``
workers, later runs). On disk, every entry proves itself: it carries its own key and a
checksum of key and vector, is read only if it is a regular file of the exact size (no
link is followed anywhere inside the folder), and a partial, corrupt, misplaced or
implausible entry is ignored and recomputed, never returned. A folder that cannot be
written (read-only, full, missing) or that others may write to (``o+w``, a link planted
in it) is *degraded*: its verified entries are still read, new embeddings stay in
memory, nothing is written through it, and one :class:`CacheDirWarning` says why.
"""

from __future__ import annotations

import atexit
import errno
import multiprocessing
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import warnings
from collections import OrderedDict, namedtuple
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._hashing import DIGEST_SIZE as _DIGEST_SIZE
from .._hashing import hasher as _hasher
from .._images import read_image_bytes
from .stamps import FileStamps, Lease

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "maxsize", "currsize"])


def settings_digest(*parts: Any) -> str:
    """Stable hex digest of a tuple of settings (reprs of plain values)."""
    h = _hasher()
    h.update(repr(parts).encode())
    return h.hexdigest()


def _read_bytes(path: str, index: int = 0) -> bytes:
    """All the bytes of the image file ``path`` (input ``index``), with the limits of
    every image (:func:`~skclip._images.read_image_bytes`: regular files only, a byte
    cap): the one place files are read, so that what is hashed is exactly what is
    decoded."""
    return read_image_bytes(path, index)


#: A digest is remembered under a file's stamp only once the file's last change is
#: older than this (nanoseconds before the read began): file systems record times at a
#: coarse granularity (a kernel tick; a second on some), so two writes of the same size
#: within one tick could leave the same stamp. Files changed more recently are hashed
#: again at every call until then (git's "racily clean" rule).
_RACY_NS = 2_000_000_000


class _FileDigests:
    """Content digests of files, memoized by stamp ``(path, size, mtime_ns, inode,
    ctime_ns, device)``: a file is read and hashed again only when it changed.

    Stamps come from :class:`~skclip.encoding.stamps.FileStamps`: a file is stat'ed again only
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
        return self.known_leased(paths)[0]

    def known_leased(
        self, paths: list[str], cwd: str | None = None
    ) -> tuple[list[str | None], Lease | None]:
        """:meth:`known_many`, and a lease on the files' stamps
        (:meth:`~skclip.encoding.stamps.FileStamps.leased`) when every digest is known."""
        stamps, lease = self.stamps.leased(paths, cwd)
        with self._lock:
            get = self._memo.get
            digests = [None if stamp is None else get(stamp) for stamp in stamps]
        return digests, lease if lease is not None and None not in digests else None

    def read(self, path: str, index: int = 0) -> tuple[str, bytes]:
        """Read the file once and hash those bytes; returns (digest, bytes): decode these
        bytes, not the file again. The digest is remembered for the file's stamp only if
        the stamp is the same before and after the read and older than ``_RACY_NS``."""
        start = time.time_ns()
        before = self.stamps.stamps([path])[0]
        data = _read_bytes(path, index)
        h = _hasher()
        h.update(data)
        digest = h.hexdigest()
        after = self.stamps.stamps([path])[0]
        if before is not None and before == after and max(after[2], after[4]) < start - _RACY_NS:
            with self._lock:
                self._memo[after] = digest
                if len(self._memo) > self.maxsize:
                    self._memo.popitem(last=False)
        return digest, data

    def clear(self) -> None:
        """Forget every digest and stamp (and remove the inotify watches)."""
        with self._lock:
            self._memo.clear()
        self.stamps.clear()


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


class RowsMemo:
    """The embeddings of whole lists of files, each of them a cache hit, kept while a
    lease on the files' stamps holds: a search looks the same lists up again and again
    (each fold's train and test images, once per candidate), and this answers with one
    copy instead of a stamp, a digest and an entry per file.

    A list is served only under the lease taken when its rows were gathered
    (:meth:`~skclip.encoding.stamps.FileStamps.holds`: void after any change the stamps
    would notice, and at the latest ``max_age`` after the oldest stamp), so it answers
    exactly what the per-file lookup would. Bounded by ``max_bytes`` (a list over a
    quarter of it is not kept) and ``max_entries``, least recently used first.

    Parameters
    ----------
    max_bytes : int, default=128 MiB
    max_entries : int, default=64
    """

    def __init__(self, max_bytes: int = 128 << 20, max_entries: int = 64) -> None:
        self._data: OrderedDict[tuple, tuple[Lease, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._bytes = 0

    def get(self, key: tuple) -> np.ndarray | None:
        """A new copy of the rows of ``key`` if its lease holds, else None."""
        with self._lock:
            entry = self._data.get(key)
        if entry is None:
            return None
        if not FILE_DIGESTS.stamps.holds(entry[0]):
            self._drop(key, entry)
            return None
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
        return entry[1].copy()

    def put(self, key: tuple, lease: Lease, rows: np.ndarray) -> None:
        """Keep a copy of ``rows`` for ``key`` under ``lease``."""
        if rows.nbytes > self.max_bytes // 4:
            return
        rows = rows.copy()
        rows.setflags(write=False)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            self._data[key] = (lease, rows)
            self._bytes += rows.nbytes
            while self._bytes > self.max_bytes or len(self._data) > self.max_entries:
                self._bytes -= self._data.popitem(last=False)[1][1].nbytes

    def _drop(self, key: tuple, entry: tuple) -> None:
        with self._lock:
            if self._data.get(key) is entry:
                del self._data[key]
                self._bytes -= entry[1].nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


ROWS = RowsMemo()

#: Version of the on-disk layout and entry format: part of every entry's path
#: (``<cache_dir>/v2-d<dim>/<shard>/<key>.emb``), so entries of another version are
#: never read.
FORMAT = 2
_MAGIC = b"SKCLIPE2"
_WRITES = 0  # disk-cache writes of this process (trims are spread over them)


#: Default bound of a disk cache, in entries (about 2 GB of 512-d entries on a file
#: system with 4 kB blocks); the oldest entries go first.
DISK_MAX_ENTRIES = 500_000
_SHARDS = 256  # entries live in <v2-d<dim>>/<first 2 hex digits of the content digest>/
_TRIM_EVERY = 64  # writes of a process between two trims of the shard written to
_HOST = socket.gethostname()


class CacheDirWarning(UserWarning):
    """A ``cache_dir`` is used read-only: its verified entries are read, new embeddings
    stay in memory, nothing is written to it. The message names the folder and says
    why: on a read-only file system, full, cannot be made (e.g. a link to a missing
    folder), may be written by other users (``o+w``), or holds a planted link. Warned
    once per folder and process (again after ``CLIPFeaturizer.cache_clear()``).

    Examples
    --------
    >>> import os, tempfile, warnings
    >>> import numpy as np
    >>> from skclip import CacheDirWarning, CLIPFeaturizer
    >>> folder = os.path.join(tempfile.mkdtemp(), "cache")
    >>> os.symlink(os.path.join(os.path.dirname(folder), "missing"), folder)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     X = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder).transform(
    ...         [np.zeros((8, 8, 3), dtype=np.uint8)])
    >>> [w.category.__name__ for w in caught if issubclass(w.category, CacheDirWarning)]
    ['CacheDirWarning']
    """


_DEGRADED: dict[str, str] = {}  # cache folder -> why nothing is written to it
_DEGRADED_LOCK = threading.Lock()


def _degrade(root: Path, reason: str) -> None:
    """Write nothing more to ``root`` in this process; warn once, saying why."""
    name = os.path.abspath(root)
    with _DEGRADED_LOCK:
        if name in _DEGRADED:
            return
        _DEGRADED[name] = reason
    warnings.warn(
        CacheDirWarning(
            f"The embedding cache folder {name!r} {reason}. Its entries are still read (each "
            "one verified); new embeddings are kept in memory only, and nothing is written "
            "to the folder by this process."
        ),
        stacklevel=2,
    )


def _reason(exc: OSError, root: Path) -> str:
    """Why writing to the cache folder ``root`` failed, in words."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
    if exc.errno == errno.EROFS:
        return f"is on a read-only file system{where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"is full: {exc.strerror}{where}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot be written by this user: {exc.strerror}{where}"
    if isinstance(exc, FileExistsError) and os.path.islink(root):
        return "is a symbolic link to a folder that does not exist"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and not os.path.isdir(root):
        return "is not a folder"
    return f"cannot be written: {exc}"


class _Link(OSError):
    """A symbolic link (or a non-folder) where the cache has a folder."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as an entry must not block
_BY_FD = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


class _Folder:
    """A folder of a disk cache whose children are reached without following links:
    by descriptor (``openat``) where the system allows, so a link planted meanwhile
    cannot redirect a read or a write."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def root(cls, path: Path, create: bool) -> _Folder:
        """The cache folder itself (links in its own path are the user's and followed)."""
        if create:
            os.makedirs(path, mode=0o775, exist_ok=True)
        if not _BY_FD:
            if not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
            return cls(path, None)
        return cls(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def child(self, name: str, create: bool) -> _Folder:
        made = False
        if create:
            with suppress(FileExistsError):
                self.call(os.mkdir, name, 0o775)
                made = True
        if self.fd is None:
            st = self.stat(name)
            if not stat.S_ISDIR(st.st_mode):
                raise _Link(errno.ELOOP, "not a folder", str(self.path / name))
            return _Folder(self.path / name, None)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Link(exc.errno, "a link or a file", str(self.path / name)) from None
            raise
        if made:
            self._share_with_group(fd)
        return _Folder(self.path / name, fd)

    def _share_with_group(self, fd: int) -> None:
        """A folder made here is group-writable if this one is (a team's cache), whatever
        the umask of whoever made it."""
        assert self.fd is not None  # only a folder opened by descriptor makes folders
        mode = os.fstat(self.fd).st_mode
        if mode & stat.S_IWGRP:
            with suppress(OSError):
                os.fchmod(
                    fd,
                    stat.S_IMODE(os.fstat(fd).st_mode)
                    | stat.S_IWGRP
                    | stat.S_IRGRP
                    | stat.S_IXGRP
                    | (mode & stat.S_ISGID),
                )

    def call(self, fn: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        """``fn(name, *args)`` relative to this folder."""
        if self.fd is None:
            return fn(str(self.path / name), *args, **kwargs)
        return fn(name, *args, dir_fd=self.fd, **kwargs)

    def stat(self, name: str) -> os.stat_result:
        return self.call(os.stat, name, follow_symlinks=False)

    def open(self, name: str, flags: int, mode: int = 0o644) -> int:
        return self.call(os.open, name, flags | _NOFOLLOW, mode)

    def replace(self, src: str, dst: str) -> None:
        if self.fd is None:
            os.replace(self.path / src, self.path / dst)
        else:
            os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def open_to_others(self) -> str | None:
        """Why others may write here (``o+w``), or None."""
        st = os.fstat(self.fd) if self.fd is not None else os.stat(self.path)
        if st.st_mode & stat.S_IWOTH:
            mode = stat.filemode(st.st_mode)
            return f"may be written by other users ({self.path} has mode {mode})"
        return None

    def regular_files(self, suffix: str) -> list[tuple[str, int]]:
        """(name, mtime_ns) of the regular files named ``*suffix`` (not hidden)."""
        out = []
        with os.scandir(self.fd if self.fd is not None else self.path) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.name.endswith(suffix):
                    continue
                with suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        out.append((entry.name, st.st_mtime_ns))
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_small(
    folder: _Folder, name: str, size: int | None, cap: int, touch: bool = False
) -> tuple[bytes, float] | None:
    """(bytes, mtime) of the regular file ``name`` (exactly ``size`` bytes, or at most
    ``cap``), opened without following a link and without blocking; None otherwise.
    ``touch``: then set its times to now (where the system allows it by descriptor)."""
    try:
        st = folder.stat(name)
    except OSError:
        return None
    fits = st.st_size == size if size is not None else st.st_size <= cap
    if not (stat.S_ISREG(st.st_mode) and fits):
        return None
    try:
        fd = folder.open(name, os.O_RDONLY | _NONBLOCK)
    except OSError:
        return None
    try:
        st2 = os.fstat(fd)
        if not stat.S_ISREG(st2.st_mode) or (st2.st_ino, st2.st_size) != (st.st_ino, st.st_size):
            return None
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        if touch and os.utime in os.supports_fd:
            with suppress(OSError):
                os.utime(fd)
        return b"".join(chunks), st2.st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _checksum(key: bytes, payload: bytes) -> bytes:
    h = _hasher()
    h.update(key)
    h.update(payload)
    return h.digest()


def _plausible(vec: np.ndarray, unit: bool) -> bool:
    """Finite, not zero, and of norm 1 when the embeddings are normalized."""
    if not np.all(np.isfinite(vec)):
        return False
    norm = float(np.linalg.norm(vec))
    return abs(norm - 1.0) < 1e-3 if unit else norm > 0.0


# -- claims ------------------------------------------------------------------------------------
_CLAIM_TAG = "skclip-claim-2"


def _first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


_MACHINE: dict[int, tuple[str, str, str]] = {}  # pid -> _machine()


def _machine() -> tuple[str, str, str]:
    """(host, boot id, pid namespace) of this process: where its PIDs mean something."""
    pid = os.getpid()
    if pid not in _MACHINE:
        ns = "-"
        with suppress(OSError):
            ns = os.readlink("/proc/self/ns/pid")
        _MACHINE[pid] = (_HOST, _first_line("/proc/sys/kernel/random/boot_id"), ns)
    return _MACHINE[pid]


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "-" where unknown: a
    PID reused by another process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[19].decode()
    except (OSError, IndexError):
        return "-"


_OWNER: dict[int, str] = {}  # pid -> this process's claim line


def _owner() -> str:
    """The line a claim of this process holds."""
    pid = os.getpid()
    if pid not in _OWNER:
        _OWNER[pid] = " ".join((_CLAIM_TAG, *_machine(), str(pid), _start_time(pid)))
    return _OWNER[pid]


def claim_holder(text: str, age: float, timeout: float, lease: float) -> str | None:
    """Who holds a claim whose file holds ``text`` and is ``age`` seconds old, or None
    if the claim is void: empty or damaged, of a process that is gone or whose PID was
    reused (start time), of this process, older than ``timeout``, or of another machine
    (or PID namespace, or boot) and older than ``lease``."""
    parts = text.split()
    if len(parts) != 6 or parts[0] != _CLAIM_TAG or not parts[4].isdigit():
        return None
    host, boot, ns, pid, start = parts[1], parts[2], parts[3], int(parts[4]), parts[5]
    if (host, boot, ns) != _machine():
        return f"a process on {host}" if 0 <= age < lease else None
    if age >= timeout or pid == os.getpid() or not _alive(pid):
        return None
    if start != "-" and _start_time(pid) != start:
        return None  # the PID now names another process
    return f"process {pid}"


# -- the disk store ----------------------------------------------------------------------------
class DiskStore:
    """One file per embedding under ``root/v2-d<dim>/<shard>/``, written atomically.

    Entry layout: 8-byte magic, one byte the key's length, the key, a 16-byte blake2b
    checksum of key and payload, the float32 payload (little-endian). An entry is read
    only if it is a regular file (opened with ``O_NOFOLLOW``, never blocking) of exactly
    that size, carries the key it was looked up under, matches its checksum and holds a
    plausible embedding (finite, non-zero, unit norm when ``unit``); otherwise it is
    ignored, and recomputed. No link is followed below ``root``.

    Bounded by ``max_entries``: the shard is the first two hex digits of the image's
    content digest, so entries spread over the 256 shards whatever the settings; every
    ``_TRIM_EVERY`` writes of a process, the shard just written to is trimmed to its
    share of the bound, oldest entries first (a disk hit refreshes an entry's time, so
    the order is about least recently used), and :meth:`flush` (at the end of every
    encode) trims the shards written since, so the bound holds after short runs too.

    Processes sharing the folder do not encode an image twice at the same time: before
    encoding, a process *claims* the entry (an exclusive ``.claim`` file naming its host,
    boot, PID namespace, PID and start time), and the others wait for the entry instead
    (see ``skclip.encoding.engine.encode``). A claim is void (taken over at once) when it is
    empty or damaged, when its process is gone or its PID now names another process,
    when it is older than ``claim_timeout`` seconds, or, for a process of another
    machine, which cannot be checked, older than ``claim_lease`` seconds (a slower
    owner then only means an image encoded twice, with the same result).

    A folder that cannot be written, or that others may write to, is degraded (see the
    module's docstring): nothing is claimed or written, verified entries are read.
    """

    claim_timeout = 300.0
    claim_lease = 15.0

    def __init__(
        self,
        root: str | os.PathLike,
        dim: int,
        max_entries: int = DISK_MAX_ENTRIES,
        unit: bool = False,
    ) -> None:
        self.root = Path(root)
        self.dim = dim
        self.max_entries = max_entries
        self.unit = unit
        self.sub = f"v{FORMAT}-d{dim}"
        self._dirty: dict[str, str] = {}  # shard written since its last trim -> a key of it

    @property
    def writable(self) -> bool:
        """False once the folder is degraded in this process."""
        return os.path.abspath(self.root) not in _DEGRADED

    def _entry_size(self, key: str) -> int:
        return len(_MAGIC) + 1 + len(key) + _DIGEST_SIZE + 4 * self.dim

    def _shard(self, key: str, create: bool) -> _Folder | None:
        """The folder of ``key``'s shard (made if ``create``), or None: missing, or
        unusable (then the store is degraded, or it is a read that finds nothing)."""
        if not key.isalnum():
            raise ValueError(f"not a cache key: {key!r}")
        opened: list[_Folder] = []
        try:
            opened.append(_Folder.root(self.root, create))
            for name in (self.sub, key[-32:-30]):
                self._check(opened[-1])
                if create and not self.writable:
                    return None  # nothing is made in a folder others may write to
                opened.append(opened[-1].child(name, create))
            self._check(opened[-1])
            return opened.pop()
        except _Link as exc:
            _degrade(
                self.root,
                f"holds a symbolic link or a file where a folder belongs ({exc.filename})",
            )
        except OSError as exc:
            if create:
                _degrade(self.root, _reason(exc, self.root))
        finally:
            for folder in opened:
                folder.close()
        return None

    def _check(self, folder: _Folder) -> None:
        if self.writable:
            problem = folder.open_to_others()
            if problem is not None:
                _degrade(self.root, problem)

    def get(self, key: str) -> np.ndarray | None:
        """The verified embedding stored under ``key``, or None."""
        folder = self._shard(key, create=False)
        if folder is None:
            return None
        with folder:  # a hit refreshes the entry's time: trimmed last
            found = _read_small(folder, f"{key}.emb", self._entry_size(key), 0, self.writable)
        return None if found is None else self._verify(key, found[0])

    def _verify(self, key: str, raw: bytes) -> np.ndarray | None:
        kb = key.encode()
        head = len(_MAGIC) + 1 + len(kb)
        if raw[: len(_MAGIC)] != _MAGIC or raw[len(_MAGIC)] != len(kb):
            return None
        if raw[len(_MAGIC) + 1 : head] != kb:
            return None  # another key's entry, copied or linked here
        payload = raw[head + _DIGEST_SIZE :]
        if _checksum(kb, payload) != raw[head : head + _DIGEST_SIZE]:
            return None
        vec = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        return vec if _plausible(vec, self.unit) else None

    def put(self, key: str, vec: np.ndarray) -> None:
        """Store ``vec`` under ``key`` (nothing if the folder is degraded)."""
        if not self.writable:
            return
        kb = key.encode()
        payload = np.ascontiguousarray(vec, dtype="<f4").tobytes()
        data = _MAGIC + bytes([len(kb)]) + kb + _checksum(kb, payload) + payload
        folder = self._shard(key, create=True)
        if folder is None:
            return
        with folder:
            if self.writable and self._write(folder, f"{key}.emb", data):
                global _WRITES
                _WRITES += 1
                self._dirty[key[-32:-30]] = key
                if _WRITES % _TRIM_EVERY == 0:
                    self._trim(folder)
                    self._dirty.pop(key[-32:-30], None)

    def flush(self) -> None:
        """Trim every shard written since its last trim (at the end of each encode), so
        the bound holds after runs of any length, not only every ``_TRIM_EVERY`` writes;
        cheap: one listing per shard written."""
        dirty, self._dirty = self._dirty, {}
        for key in dirty.values():
            folder = self._shard(key, create=False)
            if folder is not None:
                with folder:
                    self._trim(folder)

    def _write(self, folder: _Folder, name: str, data: bytes) -> bool:
        """Write ``name`` atomically (a temporary file renamed over it)."""
        tmp = f".tmp-{os.getpid()}-{secrets.token_hex(4)}.emb"
        try:
            fd = folder.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            folder.replace(tmp, name)  # atomic: readers see the old file or the whole new one
            return True
        except OSError as exc:
            with suppress(OSError):
                folder.call(os.unlink, tmp)
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                _degrade(self.root, _reason(exc, self.root))
            return False  # else: something else sits in the entry's place; left alone

    def _trim(self, folder: _Folder) -> None:
        """Delete the oldest entries of the shard beyond its share of the bound."""
        share = max(1, self.max_entries // _SHARDS)
        try:
            entries = folder.regular_files(".emb")
        except OSError:
            return
        if len(entries) <= share:
            return
        entries.sort(key=lambda e: e[1])
        for name, _ in entries[: len(entries) - share]:
            with suppress(OSError):
                folder.call(os.unlink, name)

    def claim(self, key: str) -> bool:
        """Claim the entry for this process; False if another live process holds it.

        True without a claim file when the folder is degraded, or when a void claim
        cannot be removed: the image is then encoded here, at worst twice in all."""
        if not self.writable:
            return True
        folder = self._shard(key, create=True)
        if folder is None:
            return True
        name = f"{key}.claim"
        with folder:
            for _ in range(2):
                try:
                    fd = folder.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    if self._holder(folder, name) is not None:
                        return False
                    with suppress(OSError):  # void: take it over
                        folder.call(os.unlink, name)
                    continue
                except OSError as exc:
                    _degrade(self.root, _reason(exc, self.root))
                    return True
                try:
                    try:
                        _write_all(fd, _owner().encode())
                    finally:
                        os.close(fd)
                except OSError as exc:  # e.g. a full disk: never leave an empty claim
                    with suppress(OSError):
                        folder.call(os.unlink, name)
                    _degrade(self.root, _reason(exc, self.root))
                return True
        return True

    def _holder(self, folder: _Folder, name: str) -> str | None:
        found = _read_small(folder, name, None, 512)
        if found is None:
            return None
        text, mtime = found
        return claim_holder(
            text.decode("ascii", "replace"),
            time.time() - mtime,
            self.claim_timeout,
            self.claim_lease,
        )

    def holder(self, key: str) -> str | None:
        """Who else holds a live claim on the entry (e.g. ``"process 123"``), or None."""
        folder = self._shard(key, create=False)
        if folder is None:
            return None
        with folder:
            return self._holder(folder, f"{key}.claim")

    def claimed(self, key: str) -> bool:
        """Whether another live process claims the entry."""
        return self.holder(key) is not None

    def release(self, key: str) -> None:
        """Drop this process's claim on the entry (only if the claim is still its own)."""
        folder = self._shard(key, create=False)
        if folder is None:
            return
        with folder:
            found = _read_small(folder, f"{key}.claim", None, 512)
            if found is not None and found[0].decode("ascii", "replace") == _owner():
                with suppress(OSError):
                    folder.call(os.unlink, f"{key}.claim")

    def claim_path(self, key: str) -> Path:
        """Where the claim of ``key`` lives (for messages and tests)."""
        return self.root / self.sub / key[-32:-30] / f"{key}.claim"

    def entry_path(self, key: str) -> Path:
        """Where the entry of ``key`` lives (for messages and tests)."""
        return self.root / self.sub / key[-32:-30] / f"{key}.emb"


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
    (None before). A process that is not a worker deletes its workers' folder when it
    ends, whether it used it or not; folders of processes that are gone (killed) are
    deleted when a new one is made.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:  # not a worker: its workers' folder, if any
        own = _folder_of(os.getpid())
        return own if own.is_dir() and _private(own) else None
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


if multiprocessing.parent_process() is None:
    # Not a worker: remove the folder its workers may make, even if this process never
    # encodes anything itself (e.g. a search whose refit is off).
    atexit.register(clear_worker_folder)


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
    unit : bool, default=False
        The embeddings are L2-normalized: a disk entry of another norm is ignored.
    """

    def __init__(
        self, settings: str, dim: int, folder: str | os.PathLike | None = None, unit: bool = False
    ) -> None:
        self.prefix = settings[:16]
        self.dim = dim
        self.disk = DiskStore(folder, dim, unit=unit) if folder is not None else None

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
            vec = self.disk.get(key)
            if vec is not None:
                MEMORY.put(key, vec)
        return vec

    def claim(self, digest: str) -> bool:
        """Claim the entry before encoding it (True without a disk folder)."""
        return self.disk is None or self.disk.claim(self.prefix + digest)

    def holder(self, digest: str) -> str | None:
        """Which other live process is encoding this entry, or None."""
        return None if self.disk is None else self.disk.holder(self.prefix + digest)

    def claimed(self, digest: str) -> bool:
        """Whether another live process is encoding this entry."""
        return self.holder(digest) is not None

    def release(self, digest: str) -> None:
        if self.disk is not None:
            self.disk.release(self.prefix + digest)

    def put(self, digest: str, vec: np.ndarray) -> None:
        key = self.prefix + digest
        MEMORY.put(key, vec)
        if self.disk is not None:
            self.disk.put(key, vec)

    def flush(self) -> None:
        """Keep the disk folder within its bound (see :meth:`DiskStore.flush`)."""
        if self.disk is not None:
            self.disk.flush()


def clear() -> None:
    """Empty the memory store and the gathered rows, forget the digests and stamps of
    files (removing every inotify watch) and which cache folders were found unusable (so
    they are tried, and warned about, again)."""
    MEMORY.clear()
    ROWS.clear()
    FILE_DIGESTS.clear()
    with _DEGRADED_LOCK:
        _DEGRADED.clear()
