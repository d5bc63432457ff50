"""A list of files looked up again is answered whole (``skclip.encoding.cache.ROWS``),
under a lease on the files' stamps: never after a change the per-file lookup would see.

The lease is the only thing that makes the shortcut exact, so it is tested at both
levels: ``FileStamps.leased``/``holds`` (every event that voids it, the files that get
none), then the featurizer (edits between lookups of the same list give the new
image's embedding, other settings and other folders get their own rows).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)
from test_cache_trust import bmp, edit_keeping_size_and_mtime, uncached

from skclip import CLIPFeaturizer
from skclip.encoding import cache as _cache
from skclip.encoding.cache import FILE_DIGESTS, ROWS, RowsMemo
from skclip.encoding.stamps import FileStamps

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux only")


@pytest.fixture
def lookups(monkeypatch):
    """Counts per-file lookups (calls of ``FILE_DIGESTS.known_leased``)."""
    counter = {"calls": 0}
    original = FILE_DIGESTS.known_leased

    def counting(paths, cwd=None):
        counter["calls"] += 1
        return original(paths, cwd)

    monkeypatch.setattr(FILE_DIGESTS, "known_leased", counting)
    monkeypatch.setattr(_cache, "_RACY_NS", 0)  # stamps trusted at once
    return counter


def files(folder: Path, n: int, seed: int = 0) -> list[str]:
    return [str(bmp(folder / f"{i}.bmp", seed + i)) for i in range(n)]


# -- the lease ----------------------------------------------------------------------------------
@linux
def test_a_lease_holds_until_a_file_changes(tmp_path):
    paths = files(tmp_path, 3)
    stamps = FileStamps()
    first, lease = stamps.leased(paths)
    assert lease is not None and stamps.holds(lease)
    assert stamps.leased(paths)[0] == first and stamps.holds(lease)  # lookups keep it
    with open(paths[1], "ab") as f:  # any write in a watched folder voids it
        f.write(b"x")
    assert not stamps.holds(lease)
    assert stamps.leased(paths)[0][1] != first[1]


@linux
@pytest.mark.parametrize(
    "change",
    ["same size and mtime", "replaced", "removed", "touched", "another file in the folder"],
)
def test_every_change_voids_a_lease(tmp_path, change):
    paths = files(tmp_path, 2)
    stamps = FileStamps()
    lease = stamps.leased(paths)[1]
    assert lease is not None
    if change == "same size and mtime":
        edit_keeping_size_and_mtime(Path(paths[0]), 9)
    elif change == "replaced":
        bmp(tmp_path / "new.bmp", 9)
        os.replace(tmp_path / "new.bmp", paths[0])
    elif change == "removed":
        os.remove(paths[0])
    elif change == "touched":
        os.utime(paths[0])
    else:
        bmp(tmp_path / "other.bmp", 9)
    assert not stamps.holds(lease)


@linux
def test_a_lease_ends_with_its_oldest_stamp(tmp_path, monkeypatch):
    paths = files(tmp_path, 2)
    stamps = FileStamps(max_age=60.0)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    stamps.leased(paths[:1])
    now[0] += 50.0
    lease = stamps.leased(paths)[1]  # paths[0]'s stamp is 50 s old: 10 s left
    assert lease is not None and stamps.holds(lease)
    now[0] += 10.5
    assert not stamps.holds(lease)
    lease = stamps.leased(paths)[1]  # paths[0] stat'ed again
    assert lease is not None and stamps.holds(lease)


@linux
def test_files_stat_ed_on_every_call_get_no_lease(tmp_path):
    paths = files(tmp_path, 2)
    os.symlink(paths[0], tmp_path / "link.bmp")
    os.link(paths[1], tmp_path / "hard.bmp")
    stamps = FileStamps()
    assert stamps.leased([paths[0]])[1] is not None
    assert stamps.leased([paths[0], str(tmp_path / "link.bmp")])[1] is None
    assert stamps.leased([paths[1]])[1] is None  # two hard links
    assert stamps.leased([str(tmp_path / "missing.bmp")])[1] is None
    assert stamps.leased([str(tmp_path) + "//0.bmp"])[1] is None  # not canonical
    assert FileStamps(use_inotify=False).leased([paths[0]])[1] is None
    assert FileStamps(max_watches=0).leased([paths[0]])[1] is None


@linux
def test_dropping_or_clearing_stamps_voids_leases(tmp_path):
    paths = files(tmp_path, 3)
    stamps = FileStamps(max_files=2)
    lease = stamps.leased(paths[:2])[1]
    assert lease is not None and stamps.holds(lease)
    stamps.leased(paths[2:])  # paths[0]'s stamp dropped to keep max_files
    assert not stamps.holds(lease)
    stamps = FileStamps()
    lease = stamps.leased(paths)[1]
    stamps.clear()
    assert not stamps.holds(lease)


@linux
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_does_not_inherit_leases(tmp_path):
    paths = files(tmp_path, 2)
    stamps = FileStamps()
    lease = stamps.leased(paths)[1]
    pid = os.fork()
    if pid == 0:  # the child's inherited queue belongs to the parent
        os._exit(0 if not stamps.holds(lease) else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert stamps.holds(lease)


# -- the featurizer -----------------------------------------------------------------------------
@linux
def test_the_same_list_again_is_one_gather(tiny_clip_path, tmp_path, lookups, count_encoded):
    paths = files(tmp_path, 4)
    feat = CLIPFeaturizer(model=tiny_clip_path)
    first = feat.transform(paths)  # encoded
    second = feat.transform(paths)  # hits, gathered and kept
    calls = lookups["calls"]
    third = feat.transform(paths)
    assert lookups["calls"] == calls  # no per-file lookup
    assert count_encoded["images"] == 4
    np.testing.assert_array_equal(third, first)
    np.testing.assert_array_equal(second, first)
    assert third.flags.writeable and not np.shares_memory(third, feat.transform(paths))
    third[:] = 0  # the caller's copy
    np.testing.assert_array_equal(feat.transform(paths), first)
    assert CLIPFeaturizer.cache_info()[:2] == (4 * 4, 4)  # hits counted as before
    assert feat.transform([Path(p) for p in paths]).shape == (4, first.shape[1])


@linux
@pytest.mark.parametrize("change", ["same size and mtime", "replaced", "removed"])
def test_an_edit_between_lookups_gives_the_new_image(tiny_clip_path, tmp_path, lookups, change):
    paths = files(tmp_path, 3)
    feat = CLIPFeaturizer(model=tiny_clip_path, on_error="warn")
    feat.transform(paths)
    feat.transform(paths)  # kept in ROWS
    if change == "same size and mtime":
        edit_keeping_size_and_mtime(Path(paths[1]), 7)
    elif change == "replaced":
        bmp(tmp_path / "new.bmp", 7)
        os.replace(tmp_path / "new.bmp", paths[1])
    else:
        os.remove(paths[1])
    calls = lookups["calls"]
    if change == "removed":
        with pytest.warns(UserWarning, match="1.bmp"):
            got = feat.transform(paths)
        assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()
    else:
        got = feat.transform(paths)
        np.testing.assert_allclose(got, uncached(tiny_clip_path, paths), atol=1e-6)
    assert lookups["calls"] == calls + 1


@linux
def test_rows_are_kept_per_setting_and_folder(tiny_clip_path, tmp_path, monkeypatch, lookups):
    for name, seed in (("a", 0), ("b", 50)):
        (tmp_path / name).mkdir()
        files(tmp_path / name, 3, seed)
    names = ["0.bmp", "1.bmp", "2.bmp"]
    unit = CLIPFeaturizer(model=tiny_clip_path)
    raw = CLIPFeaturizer(model=tiny_clip_path, normalize=False)
    monkeypatch.chdir(tmp_path / "a")
    for _ in range(2):
        a_unit, a_raw = unit.transform(names), raw.transform(names)
    assert not np.allclose(a_unit, a_raw)  # each setting its own rows
    np.testing.assert_allclose(a_raw, uncached(tiny_clip_path, names, normalize=False), atol=1e-6)
    monkeypatch.chdir(tmp_path / "b")  # the same relative paths name other files
    np.testing.assert_allclose(unit.transform(names), uncached(tiny_clip_path, names), atol=1e-6)


@linux
def test_cache_clear_empties_it(tiny_clip_path, tmp_path, count_encoded, monkeypatch):
    monkeypatch.setattr(_cache, "_RACY_NS", 0)
    paths = files(tmp_path, 2)
    feat = CLIPFeaturizer(model=tiny_clip_path)
    feat.transform(paths), feat.transform(paths)
    CLIPFeaturizer.cache_clear()
    feat.transform(paths)
    assert count_encoded["images"] == 4  # encoded again, not served from ROWS
    assert CLIPFeaturizer.cache_info().misses == 2


def test_the_memo_is_bounded():
    memo = RowsMemo(max_bytes=4000, max_entries=2)
    rows = np.ones((2, 100), np.float32)  # 800 bytes
    lease = (0, float("inf"))
    memo.put(("big",), lease, np.ones((3, 100), np.float32))  # over a quarter: not kept
    for k in range(3):
        memo.put((k,), lease, rows)
    assert list(memo._data) == [(1,), (2,)]
    assert memo._bytes == 1600
    memo.clear()
    assert memo._bytes == 0 and not memo._data
    assert isinstance(ROWS, RowsMemo)


@linux
def test_a_lease_holds_only_where_it_was_taken(tmp_path):
    paths = files(tmp_path, 1)
    lease = FileStamps().leased(paths)[1]
    other = FileStamps()
    other.leased(paths)
    assert not other.holds(lease)  # e.g. FILE_DIGESTS.stamps replaced by a new instance
