"""A first parallel search no slower than serial (issue: P6).

- The checkpoint's identity is recorded once and read back only while its files are
  exactly those recorded (``skclip.backbones.identity``): an edit in place with the size
  and modification time put back, a replaced or an added file all make the model load
  again; a moved folder keeps its identity.
- A featurizer whose images are all cached answers without building the model, under
  the exact key it would have used (PyTorch and ONNX Runtime); an edited checkpoint is
  loaded and encodes afresh.
- Processes that need the same ONNX export make it once (a lock between processes).
- Workers of a parallel search run ``cpus // n_jobs`` threads each (torch, ONNX Runtime,
  BLAS).

No timing here: ``benchmarks/bench_search.py --parts p6`` measures.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time

import numpy as np
import pytest

from skclip import CLIPFeaturizer
from skclip._testing import save_random_clip
from skclip.backbones import identity
from skclip.backbones import loading
from skclip.backbones import onnx as _onnx
from skclip.backbones.loading import clear_model_cache, load_backbone

CPU, F32 = loading.resolve_device("cpu"), loading.resolve_dtype("float32", "cpu")


@pytest.fixture
def records(tmp_path, monkeypatch):
    """A cache folder of this test (records, exports), records written at once, and no
    model or session left over from other tests."""
    monkeypatch.setenv("SKCLIP_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.setattr(identity, "RACY_NS", 0)
    clear_model_cache()
    _onnx.clear_sessions()
    CLIPFeaturizer.cache_clear()
    yield tmp_path
    clear_model_cache()
    _onnx.clear_sessions()
    CLIPFeaturizer.cache_clear()


@pytest.fixture
def checkpoint(records):
    """A tiny CLIP of its own (it gets edited), loaded once so that it is recorded."""
    folder = save_random_clip(records / "clip", "tiny", seed=3)
    time.sleep(0.01)  # its files' times lie before the load
    load_backbone(folder, CPU, F32)
    clear_model_cache()  # as in a new process
    return folder


def _weights(folder) -> str:
    return os.path.join(folder, "model.safetensors")


def _edit_in_place(path: str) -> None:
    """Change the last bytes (a weight of the last tensor) in place, then put the size
    and modification time back: only the change time (ctime) tells."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        old = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0x55 for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _spy_builds(monkeypatch) -> list[str]:
    """Names of the checkpoints built from now on (the loader spied on)."""
    built: list[str] = []
    build = loading.build_backbone

    def spy(name, device, dtype):
        built.append(name)
        return build(name, device, dtype)

    monkeypatch.setattr(loading, "build_backbone", spy)
    return built


# -- the record ----------------------------------------------------------------------------------
def test_record_holds_the_loaded_models_identity(checkpoint):
    info = identity.read(checkpoint, CPU, F32)
    assert info is not None
    clip = load_backbone(checkpoint, CPU, F32)
    fresh = identity.info_of(clip)
    for field in ("vision_fingerprint", "fingerprint", "text_fingerprint", "embedding_dim"):
        assert getattr(info, field) == getattr(fresh, field)
    assert info.image_config == clip.image_config  # tuples stay tuples
    assert info.vision_config_json == clip.vision_config_json
    assert (info.logit_scale, info.logit_bias) == (clip.logit_scale, clip.logit_bias)
    # another dtype is another record
    assert identity.read(checkpoint, CPU, loading.resolve_dtype("bfloat16", CPU)) is None


def test_edit_in_place_with_size_and_mtime_put_back_is_noticed(checkpoint):
    before = identity.read(checkpoint, CPU, F32)
    _edit_in_place(_weights(checkpoint))
    assert identity.read(checkpoint, CPU, F32) is None
    clip = load_backbone(checkpoint, CPU, F32)  # loaded and hashed again, then recorded
    assert clip.vision_fingerprint != before.vision_fingerprint
    assert identity.read(checkpoint, CPU, F32).vision_fingerprint == clip.vision_fingerprint


def test_replaced_or_added_file_is_not_trusted(checkpoint):
    weights = _weights(checkpoint)
    copy = weights + ".new"
    shutil.copyfile(weights, copy)
    assert identity.read(checkpoint, CPU, F32) is None  # a file more
    os.replace(copy, weights)  # same bytes, another inode
    assert identity.read(checkpoint, CPU, F32) is None


def test_moved_folder_keeps_its_identity(checkpoint, records):
    before = identity.read(checkpoint, CPU, F32)
    moved = str(records / "moved-clip")
    os.rename(checkpoint, moved)
    after = identity.read(moved, CPU, F32)
    assert after is not None and after.fingerprint == before.fingerprint
    assert after.name == moved


def test_files_changed_just_now_are_not_recorded(records, monkeypatch):
    monkeypatch.setattr(identity, "RACY_NS", 3_600 * 10**9)  # "just now": the last hour
    folder = save_random_clip(records / "fresh", "tiny", seed=4)
    load_backbone(folder, CPU, F32)
    assert identity.read(folder, CPU, F32) is None


def test_records_others_may_write_or_damaged_ones_are_ignored(checkpoint):
    (path,) = identity.record_folder().glob("*.json")
    os.chmod(path, 0o666)
    assert identity.read(checkpoint, CPU, F32) is None
    os.chmod(path, 0o600)
    assert identity.read(checkpoint, CPU, F32) is not None
    text = path.read_text()
    path.write_text(text.replace('"embedding_dim": 16', '"embedding_dim": true'))
    assert identity.read(checkpoint, CPU, F32) is None
    path.write_text(text[: len(text) // 2])
    assert identity.read(checkpoint, CPU, F32) is None


def test_a_loaded_model_takes_its_fingerprints_from_the_record(checkpoint, monkeypatch):
    info = identity.read(checkpoint, CPU, F32)
    hashed = []
    monkeypatch.setattr(
        loading.Backbone, "_hash_weights", lambda self, h, prefixes: hashed.append(prefixes)
    )
    clip = load_backbone(checkpoint, CPU, F32)
    assert clip.fingerprint == info.fingerprint and not hashed


# -- an all-cached featurizer needs no model -----------------------------------------------------
def _images(seed: int, n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_all_cached_featurizer_never_builds_the_model(checkpoint, records, monkeypatch, runtime):
    if runtime == "onnxruntime" and not _onnx.is_available():
        pytest.skip("ONNX Runtime is not installed")
    params = dict(model=checkpoint, runtime=runtime, cache_dir=records / "emb", progress=False)
    images = _images(0)
    paths = _png_files(records, images)
    expected = CLIPFeaturizer(**params).fit_transform(paths)
    clear_model_cache()  # as in a new process: nothing in memory
    _onnx.clear_sessions()
    CLIPFeaturizer.cache_clear()
    built = _spy_builds(monkeypatch)
    featurizer = CLIPFeaturizer(**params)
    np.testing.assert_array_equal(featurizer.fit_transform(paths), expected)
    np.testing.assert_array_equal(featurizer.transform(paths[::-1]), expected[::-1])
    assert len(featurizer.get_feature_names_out()) == expected.shape[1]
    assert featurizer.model_fingerprint_ == identity.read(checkpoint, CPU, F32).fingerprint
    assert built == []
    info = CLIPFeaturizer.cache_info()
    assert (info.hits, info.misses) == (10, 0)
    featurizer.transform(images[:1] + _images(1, 1))  # one new image: the model is needed
    assert built == [checkpoint]


def test_all_cached_but_checkpoint_edited_encodes_again(checkpoint, records, monkeypatch):
    params = dict(model=checkpoint, runtime="torch", cache_dir=records / "emb", progress=False)
    images = _images(2)
    old = CLIPFeaturizer(**params).transform(images)
    clear_model_cache()
    CLIPFeaturizer.cache_clear()
    _edit_in_place(_weights(checkpoint))
    built = _spy_builds(monkeypatch)
    new = CLIPFeaturizer(**params).transform(images)
    assert built == [checkpoint]
    assert not np.allclose(new, old)  # never the other model's embeddings
    assert CLIPFeaturizer.cache_info().misses == len(images)


def test_no_export_yet_means_no_shortcut(checkpoint, records, monkeypatch):
    """ONNX Runtime without an export on disk: the key is unknown, the model loads."""
    if not _onnx.is_available():
        pytest.skip("ONNX Runtime is not installed")
    info = identity.read(checkpoint, CPU, F32)
    assert _onnx.recorded_identity(info) is None
    clip = load_backbone(checkpoint, CPU, F32)
    encoder = _onnx.image_encoder(clip)
    assert _onnx.recorded_identity(info) == encoder.identity


def _png_files(folder, images) -> list[str]:
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        paths.append(str(folder / f"img{i}.png"))
        Image.fromarray(img).save(paths[-1])
    return paths


def test_parallel_search_refits_without_a_model_in_the_parent(checkpoint, records, monkeypatch):
    """The workers encode every image and compute the text weights; the parent's refit
    and predict find both (embeddings and text weights in the folder shared with its
    workers, the checkpoint's identity recorded) and never build the model, with the
    results of a serial search."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from skclip import TipAdapterClassifier

    paths = _png_files(records, _images(5, 12))
    y = np.repeat(["cat", "dog"], 6)
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=checkpoint, runtime="torch", progress=False)),
            ("tip", TipAdapterClassifier(clip_model=checkpoint)),
        ]
    )
    grid = {"tip__alpha": [0.5, 2.0]}
    built = _spy_builds(monkeypatch)
    parallel = GridSearchCV(pipe, grid, cv=2, n_jobs=2).fit(paths, y)
    proba = parallel.predict_proba(paths)
    assert built == []
    serial = GridSearchCV(pipe, grid, cv=2, n_jobs=1).fit(paths, y)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    np.testing.assert_allclose(proba, serial.predict_proba(paths), rtol=1e-5, atol=1e-6)


# -- one export, however many processes ask -------------------------------------------------------
def test_export_waits_for_the_process_that_exports(checkpoint, records, monkeypatch):
    if not _onnx.is_available():
        pytest.skip("ONNX Runtime is not installed")
    fcntl = pytest.importorskip("fcntl")
    clip = load_backbone(checkpoint, CPU, F32)
    root = records / "exports"
    root.mkdir()
    key = _onnx.export_key(clip)
    exports, looked = [], threading.Event()
    real_export, real_usable = _onnx._export_float32, _onnx._usable

    def usable(folder):
        looked.set()
        return real_usable(folder)

    monkeypatch.setattr(_onnx, "_usable", usable)
    monkeypatch.setattr(_onnx, "_export_float32", lambda *a: exports.append(a))
    fd = os.open(root / f".lock-{key}", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" exports
    result = []
    waiter = threading.Thread(target=lambda: result.append(_onnx.export(clip, folder=root)))
    waiter.start()
    assert looked.wait(60)
    real_export(clip, root / key)  # the other process's export
    os.close(fd)  # its lock released
    waiter.join(60)
    assert result == [root / key] and exports == []


# -- threads per worker --------------------------------------------------------------------------
def _worker_threads(model: str) -> tuple[int, int, list[int]]:
    import torch
    from threadpoolctl import threadpool_info

    clip = load_backbone(model, "cpu", "float32")
    ort = _onnx.image_encoder(clip).threads if _onnx.is_available() else torch.get_num_threads()
    blas = [pool["num_threads"] for pool in threadpool_info()]
    return torch.get_num_threads(), ort, blas


def test_workers_of_a_parallel_search_split_the_cores(tiny_clip_path):
    from joblib import Parallel, cpu_count, delayed

    expected = max(1, cpu_count() // 2)
    results = Parallel(n_jobs=2)(delayed(_worker_threads)(tiny_clip_path) for _ in range(2))
    for torch_threads, ort_threads, blas in results:
        assert torch_threads == ort_threads == expected
        assert all(n <= expected for n in blas)


def test_record_folder_is_private(checkpoint):
    mode = os.stat(identity.record_folder()).st_mode
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_hub_snapshot_is_stamped_through_its_links(checkpoint, records, monkeypatch):
    """A hub id is recorded under its local snapshot, whose files link to blobs: a blob
    replaced under the same link is another stamp."""
    from huggingface_hub import constants

    hub = records / "hub"
    repo = hub / "models--someone--tiny-clip"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in os.listdir(checkpoint):
        shutil.copyfile(os.path.join(checkpoint, name), repo / "blobs" / name)
        os.symlink(os.path.join("..", "..", "blobs", name), snapshot / name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert identity.checkpoint_folder("someone/tiny-clip") == snapshot
    assert identity.checkpoint_folder("someone/not-downloaded") is None
    stamps = identity.folder_stamps(snapshot)
    assert [s[0] for s in stamps] == sorted(os.listdir(checkpoint))
    blob = repo / "blobs" / "model.safetensors"
    shutil.copyfile(blob, str(blob) + ".tmp")
    os.replace(str(blob) + ".tmp", blob)
    assert identity.folder_stamps(snapshot) != stamps
