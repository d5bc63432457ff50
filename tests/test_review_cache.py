"""Review of issue 19: cache identity (config files, file stamps), the disk bound, and
small files the cache and exports read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from skclip import CLIPFeaturizer
from skclip.backbones.loading import clear_model_cache


@pytest.fixture
def own_clip(tiny_clip_path, tmp_path):
    """A copy of the tiny checkpoint that a test may edit; models forgotten after."""
    path = shutil.copytree(tiny_clip_path, tmp_path / "clip")
    yield str(path)
    clear_model_cache()


def _encode(model, **kw):
    x = [np.full((32, 32, 3), 90, np.uint8)]
    return CLIPFeaturizer(model=model, runtime="torch", progress=False, **kw).transform(x)


def test_3_edited_config_is_a_new_cache_identity(own_clip, tmp_path):
    from skclip.backbones.loading import load_backbone as load_clip

    before = load_clip(own_clip, "cpu", "float32").fingerprint
    _encode(own_clip, cache_dir=tmp_path / "cache")
    config_file = f"{own_clip}/config.json"
    with open(config_file) as f:
        config = json.load(f)
    config["vision_config"]["hidden_act"] = "gelu"  # was quick_gelu: same weights
    config["vision_config"]["layer_norm_eps"] = 0.5
    with open(config_file, "w") as f:
        json.dump(config, f)
    clear_model_cache()
    cached = _encode(own_clip, cache_dir=tmp_path / "cache")
    fresh = _encode(own_clip, cache=False)
    np.testing.assert_allclose(cached, fresh, atol=1e-6)  # before the fix: max diff 0.08
    assert load_clip(own_clip, "cpu", "float32").fingerprint != before


def test_3_same_config_elsewhere_shares_the_fingerprint(own_clip, tiny_clip_path):
    from skclip.backbones.loading import load_backbone as load_clip

    here = load_clip(own_clip, "cpu", "float32")
    there = load_clip(tiny_clip_path, "cpu", "float32")
    assert here.vision_fingerprint == there.vision_fingerprint  # the path is not hashed


def test_9_a_file_of_another_device_is_a_new_stamp(tmp_path, monkeypatch):
    """A file system mounted at the same path (a remount, a restored copy) whose file has
    the same inode number, size and times: simulated by changing st_dev alone."""
    import os

    from skclip.encoding import stamps as _watch
    from skclip.encoding.cache import _FileDigests

    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    monkeypatch.setattr("skclip.encoding.cache._RACY_NS", 0)  # remember the digest at once
    digests = _FileDigests()
    digests.stamps = _watch.FileStamps(use_inotify=False)
    digest, _ = digests.read(str(path))
    assert digests.known(str(path)) == digest
    real_stat = os.stat

    class OtherDevice:
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            value = getattr(self._st, name)
            return value + 1 if name == "st_dev" else value

    monkeypatch.setattr(_watch.os, "stat", lambda p, *a, **k: OtherDevice(real_stat(p, *a, **k)))
    assert digests.known(str(path)) is None  # before the fix: the old digest


def test_10_disk_bound_holds_after_a_short_run(tiny_clip_path, tmp_path, monkeypatch):
    from skclip.encoding import cache as _cache
    from skclip.encoding.cache import memory_digest

    by_shard = {}
    for v in range(256):  # two images whose entries share a shard
        img = np.full((32, 32, 3), v, np.uint8)
        by_shard.setdefault(memory_digest(img)[:2], []).append(img)
    pair = next(imgs[:2] for imgs in by_shard.values() if len(imgs) >= 2)
    monkeypatch.setattr(_cache, "_SHARDS", _cache.DISK_MAX_ENTRIES)  # a share of 1 entry
    CLIPFeaturizer(
        model=tiny_clip_path, runtime="torch", progress=False, cache_dir=tmp_path / "cache"
    ).transform(pair)  # 2 writes, far fewer than 64
    entries = list((tmp_path / "cache").rglob("*.emb"))
    assert len(entries) == 1  # before the fix: 2, never trimmed


def test_2_a_watched_folder_moved_away_is_watched_anew(tmp_path):
    """The folder is moved and another made at its path: edits there are seen at once
    (before the fix, the watch stayed on the moved folder, and a stamp of the new folder
    was trusted without events until ``max_age``)."""
    import os
    import sys

    from skclip.encoding.stamps import FileStamps

    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only")
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"old!")
    stamps = FileStamps(max_age=3600)
    stamps.stamps([str(folder / "a.jpg")])
    os.rename(folder, tmp_path / "moved")
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"new1")
    first = stamps.stamps([str(folder / "a.jpg")])[0]
    with open(folder / "a.jpg", "r+b") as f:  # in place, same size
        f.write(b"new2")
    st = os.stat(folder / "a.jpg")
    assert stamps.stamps([str(folder / "a.jpg")])[0][4] == st.st_ctime_ns
    assert first[3] == st.st_ino
