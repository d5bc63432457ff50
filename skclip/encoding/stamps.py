"""File stamps without a system call per file per call.

A stamp is ``(path, size, mtime_ns, inode, ctime_ns, device)``. The embedding cache notices an
edited file by its stamp: an edit that restores the size and the modification time
(``cp -p``, ``rsync -t``, ``tar x``, ``touch -r``) still changes the inode or the change
time (``ctime``), which no program can set back; the device number tells apart a file
of another file system mounted at the same path that happens to share its inode number
and times (a remount, a restored copy). Taking a stamp is one
``os.stat``, which costs 1 to 15 µs depending on the machine (a virtual machine makes
every system call expensive): more than everything else a cached lookup does. A search
looks up the same files hundreds of times (``GridSearchCV`` over a Pipeline calls the
featurizer twice per fit), so those stats would dominate it.

:class:`FileStamps` keeps each file's last stamp and takes a new one only when the file
may have changed:

- On Linux, an inotify watch on each file's folder reports every write, attribute
  change (``touch``, ``os.utime``), creation, deletion and rename of the files in it;
  one ``read`` per call collects them, and only the files they name are stat'ed again.
  A watch is placed *before* the first stat of a file, so no change is missed between
  the two.
- A watched folder that is moved, deleted or unmounted loses its watch, and its path
  is watched anew (whatever folder is there now) at the next lookup.
- A stamp is trusted for at most ``max_age`` seconds anyway (default 1 s): changes
  inotify cannot see (made on another machine of a network file system, or after an
  ancestor folder was replaced or a symbolic link in the path retargeted) are noticed
  within that time, as they would be by a stat when the file system caches attributes.
- Files that are symbolic links or have several hard links (changed under another
  name, in another folder) are stat'ed on every call, as is everything on systems
  without inotify or when a watch cannot be placed: the old behaviour.

A *lease* (:meth:`FileStamps.leased`) lets a caller skip even the per-file work: it
holds while no stamp it covered can have changed. It is void after any inotify event or
queue overflow, any stamp taken again that differs (or a file gone), any stamp dropped
to keep ``max_files``, a fork, :meth:`FileStamps.clear`, and once the oldest of its stamps
is ``max_age`` old; files that are stat'ed on every call get no lease.

Watches are a resource of the user, shared with every other program (IDEs, file
synchronization, systemd): at most :func:`watch_cap` folders are watched (an eighth of
the user's limit, at most 4096), files in other folders are stat'ed on every call, and
:meth:`FileStamps.clear` (called by ``CLIPFeaturizer.cache_clear()``) removes every
watch. At most ``max_files`` stamps are kept (least recently taken dropped first).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import math
import os
import stat
import struct
import sys
import threading
import time

# <sys/inotify.h>
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_FOLDER_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

Stamp = tuple  # (path, size, mtime_ns, inode, ctime_ns, device)
Lease = tuple  # (generation, monotonic time it ends): see FileStamps.leased
# generations are unique across instances: a lease never holds in another FileStamps
_GENERATIONS = itertools.count()

#: Most folders watched by one process, whatever the user's limit.
MAX_WATCHES = 4096

# Where Linux keeps the user's inotify watch limit: the system-wide setting, and the
# one of the user namespace (the lower applies).
_LIMIT_FILES = ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches")


def watch_cap() -> int:
    """Most folders a :class:`FileStamps` watches: an eighth of the user's inotify watch
    limit (the lower of ``/proc/sys/fs/inotify/max_user_watches`` and, in a user
    namespace, ``/proc/sys/user/max_inotify_watches``), at most :data:`MAX_WATCHES`.

    The limit counts the watches of every program of the user, so skclip keeps well
    below it; folders beyond the cap are stat'ed instead (exact, a little slower).

    Examples
    --------
    >>> from skclip.encoding.stamps import watch_cap, MAX_WATCHES
    >>> 0 <= watch_cap() <= MAX_WATCHES
    True
    """
    limit = None
    for name in _LIMIT_FILES:
        try:
            with open(name) as f:
                value = int(f.read().strip())
        except (OSError, ValueError):
            continue
        limit = value if limit is None else min(limit, value)
    return MAX_WATCHES if limit is None else max(0, min(MAX_WATCHES, limit // 8))


class _Inotify:
    """A non-blocking inotify instance watching folders; None-safe to build."""

    def __init__(self, cap: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        self.cap = cap  # most watch descriptors held
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        # watch descriptor -> the spellings of its folder ("/a/b", "/link/b", "/a/x/../b"
        # name one folder, one watch); folder spelling -> watch descriptor
        self.folders: dict[int, list[str]] = {}
        self.watched: dict[str, int] = {}

    def watch(self, folder: str) -> bool:
        """Watch ``folder`` (idempotent); False if it cannot be watched (the cap is
        reached, or the system refuses)."""
        if folder in self.watched:
            return True
        if len(self.folders) >= self.cap:
            return False
        wd = self._add(self.fd, os.fsencode(folder), _MASK)
        if wd < 0:  # ENOSPC (watch limit), EACCES, ENOENT, ENOTDIR...
            return False
        self.folders.setdefault(wd, []).append(folder)
        self.watched[folder] = wd
        return True

    def events(self) -> tuple[set[str], set[str], bool]:
        """Drain the queue: (changed paths, folders gone or unreliable, overflowed)."""
        changed: set[str] = set()
        gone: set[str] = set()
        overflow = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & _IN_Q_OVERFLOW:
                    overflow = True
                    continue
                spellings = self.folders.get(wd)
                if spellings is None:
                    continue
                if mask & _FOLDER_GONE:
                    # moved, deleted or unmounted: its paths may now name another folder,
                    # which the next watch() watches anew; this watch is dropped
                    gone.update(spellings)
                    for folder in self.folders.pop(wd):
                        self.watched.pop(folder, None)
                    if not mask & _IN_IGNORED:  # else the kernel dropped it already
                        self._rm(self.fd, wd)
                elif name:
                    changed.update(os.path.join(f, os.fsdecode(name)) for f in spellings)
            if len(data) < (1 << 15):  # the queue is (very likely) empty now
                break
        return changed, gone, overflow

    def close(self) -> None:
        """Close the instance: the kernel removes all its watches."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.folders.clear()
        self.watched.clear()


class FileStamps:
    """Stamps ``(path, size, mtime_ns, inode, ctime_ns, device)`` of files, stat'ed only when
    they may have changed.

    Parameters
    ----------
    max_age : float, default=1.0
        Seconds a stamp is trusted without a stat even if no change was reported.
    use_inotify : bool, default=True
        Use inotify where available (Linux); False stats every file on every call.
    max_files : int, default=1_000_000
        Most stamps kept (the least recently taken are dropped first).
    max_watches : int or None, default=None
        Most folders watched; None is :func:`watch_cap`.

    Examples
    --------
    >>> import os, tempfile
    >>> from skclip.encoding.stamps import FileStamps
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("one")
    >>> stamps = FileStamps()
    >>> stamps.stamps([path])[0][1]  # (path, size, mtime_ns, inode, ctime_ns, device)
    3
    >>> with open(path, "a") as f:
    ...     _ = f.write(" two")
    >>> stamps.stamps([path])[0][1]  # the change is noticed at once
    7
    """

    def __init__(
        self,
        max_age: float = 1.0,
        use_inotify: bool = True,
        max_files: int = 1_000_000,
        max_watches: int | None = None,
    ) -> None:
        self.max_age = max_age
        self.use_inotify = use_inotify
        self.max_files = max_files
        self.max_watches = max_watches
        self._lock = threading.Lock()
        self._inotify: _Inotify | None = None
        self._inotify_failed = False
        self._pid = os.getpid()
        # absolute path -> (stamp, time taken); only files whose folder is watched
        self._trusted: dict[str, tuple[Stamp, float]] = {}
        # changes whenever a trusted stamp may have changed or been dropped: leases void
        self._generation = next(_GENERATIONS)

    def _watcher(self) -> _Inotify | None:
        if os.getpid() != self._pid:  # forked: the inherited queue belongs to the parent
            self._pid = os.getpid()
            if self._inotify is not None:
                self._inotify.close()  # this process's copy of the descriptor only
            self._inotify, self._inotify_failed = None, False
            self._trusted.clear()
            self._generation = next(_GENERATIONS)
        if self._inotify is None and not self._inotify_failed and self.use_inotify:
            if sys.platform.startswith("linux"):
                cap = watch_cap() if self.max_watches is None else self.max_watches
                try:
                    self._inotify = _Inotify(cap)
                except (OSError, AttributeError):
                    self._inotify_failed = True
            else:
                self._inotify_failed = True
        return self._inotify

    def _forget(self, changed: set[str], gone: set[str], overflow: bool) -> None:
        if changed or gone or overflow:  # any event voids every lease: simple and safe
            self._generation = next(_GENERATIONS)
        if overflow:
            self._trusted.clear()
            return
        for path in changed:
            self._trusted.pop(path, None)
        if gone:
            prefixes = tuple(folder.rstrip(os.sep) + os.sep for folder in gone)
            for path in [p for p in self._trusted if p.startswith(prefixes)]:
                del self._trusted[path]

    def stamps(self, paths: list[str]) -> list[Stamp | None]:
        """The stamp of each path (as given), or None if it cannot be stat'ed.

        Parameters
        ----------
        paths : list of str

        Returns
        -------
        stamps : list of (path, size, mtime_ns, inode, ctime_ns, device) tuples or None
        """
        return self.leased(paths)[0]

    def leased(
        self, paths: list[str], cwd: str | None = None
    ) -> tuple[list[Stamp | None], Lease | None]:
        """:meth:`stamps`, and a lease on them: while :meth:`holds` says so, the files
        have these stamps still (as far as :meth:`stamps` could tell), so a result derived
        from them can be reused without a call per file.

        Parameters
        ----------
        paths : list of str
        cwd : str or None, default=None
            The folder relative paths are in; None is the working directory (read once).

        Returns
        -------
        stamps : list of stamp tuples or None
        lease : tuple or None
            None unless every file has a trusted stamp (watched folder, one link, no
            symbolic link, a regular file).
        """
        with self._lock:
            watcher = self._watcher()
            if watcher is None:
                return [_stat_stamp(p) for p in paths], None
            self._forget(*watcher.events())
            now = time.monotonic()
            oldest = now - self.max_age
            first = now  # when the oldest stamp used was taken
            get = self._trusted.get
            out: list[Stamp | None] = []
            # relative paths are trusted under their absolute path
            for path, full in zip(paths, _absolute(paths, cwd)):
                entry = get(full)
                if entry is not None and entry[1] > oldest:
                    stamp = entry[0]
                    out.append(stamp if stamp[0] == path else (path, *stamp[1:]))
                    if entry[1] < first:
                        first = entry[1]
                else:
                    out.append(self._check(watcher, path, full, now))
                    if full not in self._trusted:
                        first = -math.inf  # stat'ed on every call: no lease
            if first == -math.inf:
                return out, None
            return out, (self._generation, first + self.max_age)

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` (from :meth:`leased`) still holds: no stamp it covered can
        have changed since (inotify events are collected first)."""
        with self._lock:
            watcher = self._watcher()
            if watcher is None:
                return False
            self._forget(*watcher.events())
            return lease[0] == self._generation and time.monotonic() < lease[1]

    def _check(self, watcher: _Inotify, path: str, full: str, now: float) -> Stamp | None:
        """Watch the folder, then stat (in that order: no change slips in between)."""
        watched = watcher.watch(os.path.dirname(full) or os.sep)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                st = os.stat(full)
                watched = False  # the target may change in another folder
        except OSError:
            if self._trusted.pop(full, None) is not None:
                self._generation = next(_GENERATIONS)
            return None
        stamp = _stamp(path, st)
        # inotify names the file as folder + "/" + name: a path spelled otherwise ("a//b",
        # "a/./b") would never match its events, so it is stat'ed every call instead
        canonical = os.path.join(os.path.dirname(full), os.path.basename(full)) == full
        before = self._trusted.pop(full, None)  # re-inserted last: the most recently taken
        trusted = watched and canonical and st.st_nlink == 1 and stat.S_ISREG(st.st_mode)
        if before is not None and (not trusted or before[0][1:] != stamp[1:]):
            # changed unseen (on another machine), or no longer watched: leases void
            self._generation = next(_GENERATIONS)
        if trusted:
            self._trusted[full] = (stamp, now)
            if len(self._trusted) > self.max_files:
                del self._trusted[next(iter(self._trusted))]  # the least recently taken
                self._generation = next(_GENERATIONS)
        return stamp

    @property
    def n_watches(self) -> int:
        """Folders watched now."""
        return 0 if self._inotify is None else len(self._inotify.folders)

    def clear(self) -> None:
        """Forget every stamp and remove every watch (the next call stats every file)."""
        with self._lock:
            self._trusted.clear()
            self._generation = next(_GENERATIONS)
            if self._inotify is not None:
                self._inotify.close()
            self._inotify = None


def _absolute(paths: list[str], cwd: str | None = None) -> list[str]:
    """The absolute form of each path, relative ones in ``cwd`` (None: the working
    directory, read once)."""
    if os.name == "posix" and all(path[:1] == "/" for path in paths):
        return paths  # the common case, checked fast
    cwd = os.getcwd() if cwd is None else cwd
    return [path if os.path.isabs(path) else os.path.join(cwd, path) for path in paths]


def _stamp(path: str, st: os.stat_result) -> Stamp:
    return (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)


def _stat_stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _stamp(path, st)
