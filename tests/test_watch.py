"""FileStamps: a changed file gets a new stamp at once; an unchanged one costs no stat."""

from __future__ import annotations

import os
import sys

import pytest

from skclip.encoding import stamps as _watch
from skclip.encoding.stamps import FileStamps

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")


@pytest.fixture
def counted(monkeypatch):
    """Counts the stat calls FileStamps makes."""
    calls = []
    real_stat, real_lstat = os.stat, os.lstat

    def stat(path, *a, **k):
        calls.append(path)
        return real_stat(path, *a, **k)

    def lstat(path, *a, **k):
        calls.append(path)
        return real_lstat(path, *a, **k)

    monkeypatch.setattr(_watch.os, "stat", stat)
    monkeypatch.setattr(_watch.os, "lstat", lstat)
    return calls


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def stamp_of(path):
    st = os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)


@pytest.mark.parametrize("use_inotify", [True, False])
def test_every_kind_of_change_is_noticed_at_once(tmp_path, use_inotify):
    a, b = write(tmp_path / "a.jpg", b"aaaa"), write(tmp_path / "b.jpg", b"bbbb")
    stamps = FileStamps(use_inotify=use_inotify)
    assert stamps.stamps([a, b]) == [stamp_of(a), stamp_of(b)]
    write(a, b"AAAAAA")  # rewritten in place, other size
    assert stamps.stamps([a, b]) == [stamp_of(a), stamp_of(b)]
    os.utime(b, ns=(1, 123456789))  # same size, new mtime
    assert stamps.stamps([b])[0][2] == 123456789
    write(tmp_path / "new.jpg", b"x")
    os.replace(tmp_path / "new.jpg", a)  # an editor's atomic save
    assert stamps.stamps([a]) == [stamp_of(a)] and stamp_of(a)[1] == 1
    os.unlink(b)
    assert stamps.stamps([a, b]) == [stamp_of(a), None]
    write(b, b"back")
    assert stamps.stamps([b]) == [stamp_of(b)]


@linux
def test_unchanged_files_are_not_stated_again(tmp_path, counted):
    paths = [write(tmp_path / f"{i}.jpg", b"x" * i) for i in range(5)]
    stamps = FileStamps()
    first = stamps.stamps(paths)
    assert len(counted) == 5
    counted.clear()
    assert stamps.stamps(paths) == first and counted == []
    write(paths[2], b"changed")
    expected = stamp_of(paths[2])
    counted.clear()
    assert stamps.stamps(paths)[2] == expected
    assert counted == [paths[2]]  # only the changed file


def test_without_inotify_every_call_stats(tmp_path, counted):
    path = write(tmp_path / "a.jpg", b"a")
    stamps = FileStamps(use_inotify=False)
    stamps.stamps([path]), stamps.stamps([path])
    assert counted == [path, path]


@linux
def test_stamps_expire_after_max_age(tmp_path, counted):
    path = write(tmp_path / "a.jpg", b"a")
    stamps = FileStamps(max_age=0.0)
    stamps.stamps([path]), stamps.stamps([path])
    assert counted == [path, path]


@linux
def test_links_are_stated_every_time(tmp_path, counted):
    target = write(tmp_path / "target.jpg", b"t")
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.symlink(target, other / "link.jpg")
    os.link(target, other / "hard.jpg")
    paths = [str(other / "link.jpg"), str(other / "hard.jpg")]
    stamps = FileStamps()
    stamps.stamps(paths)
    counted.clear()
    write(target, b"target changed")  # in another folder than the paths asked for
    assert [s[1] for s in stamps.stamps(paths)] == [14, 14]
    assert len(counted) >= 2


@linux
def test_one_folder_under_two_names(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    a = write(real / "a.jpg", b"a")
    alias = str(tmp_path / "alias" / "a.jpg")
    stamps = FileStamps()
    stamps.stamps([a]), stamps.stamps([alias])  # one inotify watch, two spellings
    write(a, b"changed")
    assert [s[1] for s in stamps.stamps([a, alias])] == [7, 7]


def test_relative_paths_follow_the_working_directory(tmp_path, monkeypatch):
    for name, data in (("one", b"1"), ("two", b"22")):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "img.jpg", data)
    stamps = FileStamps()
    monkeypatch.chdir(tmp_path / "one")
    assert stamps.stamps(["img.jpg"])[0][:2] == ("img.jpg", 1)
    monkeypatch.chdir(tmp_path / "two")
    assert stamps.stamps(["img.jpg"])[0][:2] == ("img.jpg", 2)


@linux
def test_a_removed_folder_forgets_its_files(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    path = write(folder / "a.jpg", b"a")
    stamps = FileStamps()
    stamps.stamps([path])
    os.unlink(path)
    folder.rmdir()
    folder.mkdir()
    write(folder / "a.jpg", b"recreated")
    assert stamps.stamps([path]) == [stamp_of(path)]


def test_a_forked_child_starts_afresh(tmp_path, monkeypatch):
    path = write(tmp_path / "a.jpg", b"a")
    stamps = FileStamps()
    stamps.stamps([path])
    parent_watcher = stamps._inotify
    monkeypatch.setattr(_watch.os, "getpid", lambda: -1)  # as in a forked child
    stamps.stamps([path])
    assert parent_watcher is None or stamps._inotify is not parent_watcher


def test_queue_overflow_forgets_everything(tmp_path):
    path = write(tmp_path / "a.jpg", b"a")
    stamps = FileStamps()
    stamps.stamps([path])
    stamps._forget(set(), set(), overflow=True)
    assert stamps._trusted == {}


@pytest.mark.parametrize("spelling", ["{d}//a.jpg", "{d}/./a.jpg"])
def test_a_path_spelled_otherwise_still_sees_changes(tmp_path, spelling):
    """inotify names a changed file as folder/name: a path spelled "d//a.jpg" or
    "d/./a.jpg" must not trust a stamp that no event can ever clear."""
    write(tmp_path / "a.jpg", b"aaaa")
    path = spelling.format(d=tmp_path)
    stamps = FileStamps(max_age=100)
    assert stamps.stamps([path])[0][1] == 4
    write(tmp_path / "a.jpg", b"AAAAAA")
    assert stamps.stamps([path])[0][1] == 6
