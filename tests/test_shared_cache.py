"""Processes sharing embeddings: claims (one process encodes an image, the others wait
for its entry), the worker folder of parallel runs, the disk bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import make_image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip.encoding import cache as _cache
from skclip.encoding import engine as _encode
from skclip.encoding.cache import DiskStore


@pytest.fixture
def other_process():
    """A live process of this host that is not this one (holds claims in the tests)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def claim_line(pid: int, start: str | None = None) -> str:
    """The claim a process of this machine writes (its real start time by default)."""
    start = _cache._start_time(pid) if start is None else start
    return " ".join((_cache._CLAIM_TAG, *_cache._machine(), str(pid), start))


def write_claim(store: DiskStore, key: str, pid: int, text: str | None = None) -> None:
    path = store.claim_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(claim_line(pid) if text is None else text)


def test_claims_are_exclusive_between_live_processes(tmp_path, other_process):
    store = DiskStore(tmp_path, 4)
    key = "ab" + "0" * 30
    assert store.claim(key) and not store.claimed(key)  # ours: not "another process"
    store.release(key)
    write_claim(store, key, other_process.pid)
    assert store.claimed(key) and not store.claim(key)
    other_process.kill()
    other_process.wait()
    assert not store.claimed(key) and store.claim(key)  # void once its process is gone


def test_an_image_claimed_elsewhere_is_waited_for_not_encoded(
    tiny_clip_path, tmp_path, other_process, count_encoded
):
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(3)]
    folder = tmp_path / "emb"
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, batch_size=2)
    expected = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(images)
    count_encoded["images"] = 0
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    key = _cache.memory_digest(images[1])
    disk = spec.cache.disk
    write_claim(disk, spec.cache.prefix + key, other_process.pid)

    result = {}
    worker = threading.Thread(target=lambda: result.update(X=feat.transform(images)))
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive() and count_encoded["images"] == 2  # the other two; waits
    marker = np.full(expected.shape[1], 0.25, dtype=np.float32)  # "the other process's"
    disk.put(spec.cache.prefix + key, marker)
    disk.claim_path(spec.cache.prefix + key).unlink()  # the other process releases it
    worker.join(30)
    assert not worker.is_alive() and count_encoded["images"] == 2
    np.testing.assert_array_equal(result["X"][1], marker)
    np.testing.assert_allclose(result["X"][[0, 2]], expected[[0, 2]], atol=1e-6)
    assert not list(folder.rglob("*.claim"))  # ours were released


def test_a_void_claim_is_encoded_here(tiny_clip_path, tmp_path, other_process, count_encoded):
    images = [np.asarray(make_image(np.random.default_rng(10 + i))) for i in range(2)]
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=tmp_path / "emb")
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    write_claim(
        spec.cache.disk, spec.cache.prefix + _cache.memory_digest(images[0]), other_process.pid
    )
    threading.Timer(0.5, other_process.kill).start()  # dies without storing anything
    X = feat.transform(images)
    assert count_encoded["images"] == 2
    expected = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(images)
    np.testing.assert_allclose(X, expected, atol=1e-6)


def test_a_process_uses_its_workers_folder_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    assert _cache.worker_folder() is None  # no workers yet: memory only
    own = tmp_path / f"{_cache._WORKERS_PREFIX}{_cache._HOST}-{os.getpid()}"
    own.mkdir(mode=0o700)
    assert _cache.worker_folder() == own
    own.chmod(0o755)  # readable by other users (or made by one): never used
    assert _cache.worker_folder() is None


def test_a_worker_makes_its_folder_private(tmp_path, monkeypatch):
    import multiprocessing
    import stat

    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: type("P", (), {"pid": 1})())
    folder = _cache.worker_folder()
    assert folder is not None and folder.parent == tmp_path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def _worker_folder_and_pid():
    return str(_cache.worker_folder()), os.getppid()


def test_parallel_search_workers_share_a_folder(tiny_clip_path, tmp_path, count_encoded):
    from joblib import Parallel, delayed

    folders = Parallel(n_jobs=2)(delayed(_worker_folder_and_pid)() for _ in range(4))
    assert len({f for f, _ in folders}) == 1
    folder, parent = folders[0]
    assert folder.endswith(f"-{parent}") and parent == os.getpid()

    paths, labels = [], np.repeat(["a", "b", "c"], 4)  # images no process has seen
    for i, label in enumerate(labels):
        paths.append(str(tmp_path / f"{label}{i}.png"))
        make_image(np.random.default_rng(1000 + i)).save(paths[-1])
    grid = {"tip__alpha": [0.5, 2.0], "tip__beta": [5.5]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path)),
            ("tip", TipAdapterClassifier(clip_model=tiny_clip_path)),
        ]
    )
    parallel = GridSearchCV(pipe, grid, cv=cv, n_jobs=2).fit(paths, labels)
    assert count_encoded["images"] == 0  # the refit here found the workers' embeddings
    serial = GridSearchCV(pipe, grid, cv=cv, n_jobs=1).fit(paths, labels)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], atol=1e-12
    )
    assert len(list(__import__("pathlib").Path(folder).rglob("*.emb"))) >= len(paths)
    assert not list(__import__("pathlib").Path(folder).rglob("*.claim"))


def test_disk_cache_is_bounded_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache, "_TRIM_EVERY", 1)
    store = DiskStore(tmp_path, 4, max_entries=2 * _cache._SHARDS)  # 2 per shard
    keys = [f"aa{i:030d}" for i in range(5)]  # one shard
    for k, key in enumerate(keys):
        store.put(key, np.full(4, k + 1, dtype=np.float32))
        os.utime(store.entry_path(key), ns=(k * 10**9, k * 10**9))  # distinct ages
    assert store.get(keys[3]) is not None  # used: becomes the newest
    store.put("aa" + "9" * 30, np.ones(4, dtype=np.float32))
    left = sorted(p.stem for p in store.entry_path(keys[0]).parent.glob("*.emb"))
    assert left == sorted([keys[3], "aa" + "9" * 30])


def test_split_keeps_each_images_views_together():
    pixels = np.arange(10 * 2).reshape(10 * 2, 1, 1, 1).astype(np.uint8)  # 10 images x 2 views
    mask = np.arange(10 * 2)[:, None]  # a second array of the batch (NaFlex has three)
    batch = {"pixel_values": pixels, "mask": mask}
    res = _encode.Prepared([(0, None)], list(range(10)), [str(k) for k in range(10)], batch, [])
    parts = _encode.split(res, 4)
    assert [p.kept for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [p.keys for p in parts][2] == ["8", "9"]
    for name, arr in batch.items():
        np.testing.assert_array_equal(np.concatenate([p.pixels[name] for p in parts]), arr)
    assert [len(p.pixels["mask"]) for p in parts] == [8, 8, 4] and parts[0].found == []
    assert _encode.split(res, 10) == [res]
