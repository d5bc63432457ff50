"""The cache never lies: identity that holds (a hash of exactly the bytes decoded, file
stamps an edit cannot restore), entries that prove themselves, claims that cannot block,
caches that degrade instead of crashing, bounded inotify watches.

Tests named ``test_<n>_...`` cover the numbered case ``n`` of the issue that asked for
this; ``test_and_...`` its further items. Cases that need a read-only mount, a full file
system or a lowered inotify limit run a child process in a user namespace
(``unshare``), and skip only where user namespaces are not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)

import skclip
from skclip import CLIPFeaturizer
from skclip.encoding import cache as _cache
from skclip.encoding import claims as _claims
from skclip.encoding import engine as _encode
from skclip.encoding.cache import FILE_DIGESTS, memory_digest
from skclip.encoding.stamps import FileStamps

HANG_GUARD_S = 120  # only against a hang; never reached when things work
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def bmp(path: Path, seed: int) -> Path:
    """A BMP of fixed dimensions: another seed gives other pixels and the same size."""
    make_image(np.random.default_rng(seed), (40, 32)).save(path, format="BMP")
    return path


def arrays(n: int, seed: int = 0) -> list[np.ndarray]:
    return [np.asarray(make_image(np.random.default_rng([seed, i]), (12, 10))) for i in range(n)]


def uncached(model: str, images: list, **params) -> np.ndarray:
    return CLIPFeaturizer(model=model, cache=False, **params).transform(images)


def edit_keeping_size_and_mtime(path: Path, seed: int) -> None:
    """Other pixels, same size, the modification time put back (what ``cp -p``,
    ``rsync -t``, ``tar x`` and ``touch -r`` do)."""
    st = os.stat(path)
    time.sleep(0.05)  # let the file system's clock tick: the edit gets a new change time
    bmp(path, seed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def new_entries(folder: Path, before: set[Path]) -> list[Path]:
    return sorted(set(p for p in folder.rglob("*.emb") if not p.name.startswith(".")) - before)


# -- 1, 2: identity ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_1_an_edit_that_keeps_size_and_mtime_is_noticed(
    tiny_clip_path, tmp_path, count_encoded, monkeypatch, how
):
    monkeypatch.setattr(_cache, "_RACY_NS", 0, raising=False)  # stamps trusted at once
    path = bmp(tmp_path / "a.bmp", 0)
    feat = CLIPFeaturizer(model=tiny_clip_path)
    first = feat.transform([path])
    assert FILE_DIGESTS.known(str(path)) is not None  # its digest is remembered
    if how == "in place":
        edit_keeping_size_and_mtime(path, 1)
    else:  # a new file renamed over it (an editor's save, rsync)
        st = os.stat(path)
        time.sleep(0.05)
        bmp(tmp_path / "new.bmp", 1)
        os.utime(tmp_path / "new.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp_path / "new.bmp", path)
    edited = feat.transform([path])
    assert count_encoded["images"] == 2
    np.testing.assert_allclose(edited, uncached(tiny_clip_path, [path]), atol=1e-6)
    assert not np.allclose(edited, first)


def test_1_a_file_changed_just_now_is_hashed_again(tmp_path):
    """File systems keep times at a coarse granularity: a file changed within the last
    moments may change again under the same stamp, so its digest is not remembered."""
    digests = _cache._FileDigests()
    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    digest, data = digests.read(str(path))
    assert data == b"one" and digests.known(str(path)) is None
    os.utime(path, ns=(0, 0))  # long ago, but its change time is now: still too recent
    digests.read(str(path))
    assert digests.known(str(path)) is None


def test_2_an_edited_file_never_lends_its_embedding_to_the_old_bytes(
    tiny_clip_path, tmp_path, count_encoded
):
    """Decoded again for other settings after an edit, the file must be stored under
    the digest of what was decoded: a copy of the old bytes, in another process on
    the shared folder, gets its own embedding."""
    folder = tmp_path / "shared"
    path = bmp(tmp_path / "a.bmp", 0)
    old = tmp_path / "old.bmp"
    shutil.copy(path, old)
    CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder).transform([path])
    edit_keeping_size_and_mtime(path, 1)
    CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, normalize=False).transform([path])
    CLIPFeaturizer.cache_clear()  # a fresh process on the shared folder
    got = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, normalize=False).transform([old])
    np.testing.assert_allclose(got, uncached(tiny_clip_path, [old], normalize=False), atol=1e-6)


def test_2_a_stale_digest_from_the_lookup_is_never_a_key(
    tiny_clip_path, tmp_path, count_encoded, monkeypatch
):
    """Even where the stamps cannot see an edit (a file system without change times),
    the bytes decoded are hashed again: the embedding goes under their own digest."""
    path = bmp(tmp_path / "a.bmp", 0)
    stale = FILE_DIGESTS.read(str(path))[0]
    bmp(path, 1)
    served = []

    def stale_lookup(paths, cwd=None):  # what the engine's lookup asks FILE_DIGESTS
        served.append(paths)
        return [stale] * len(paths), None

    monkeypatch.setattr(FILE_DIGESTS, "known_leased", stale_lookup)
    feat = CLIPFeaturizer(model=tiny_clip_path, normalize=False)
    X = feat.transform([path])  # a miss under the stale digest: decoded and stored
    assert served  # the stale digest was what the lookup saw
    np.testing.assert_allclose(X, uncached(tiny_clip_path, [path], normalize=False), atol=1e-6)
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    assert spec.cache.get(stale) is None  # nothing stored under the old bytes' digest


# -- 4: the disk bound ------------------------------------------------------------------------
def test_4_the_disk_bound_holds_for_one_featurizers_entries(
    tiny_clip_path, tmp_path, count_encoded, monkeypatch
):
    """More than one shard's share of real entries, all of one featurizer (one settings
    prefix): spread over the shards by content, none is trimmed below the bound."""
    share = 40
    real_init = _cache.DiskStore.__init__

    def small(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.max_entries = share * _cache._SHARDS  # a bound of 40 entries per shard

    monkeypatch.setattr(_cache.DiskStore, "__init__", small)
    monkeypatch.setattr(_cache, "_TRIM_EVERY", 1)
    images = arrays(5 * share)
    folder = tmp_path / "emb"
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, batch_size=64)
    X = feat.transform(images)
    entries = new_entries(folder, set())
    assert len(entries) == len(images) and len({p.parent for p in entries}) > 100
    CLIPFeaturizer.cache_clear()  # a fresh process: everything comes from disk
    count_encoded["images"] = 0
    np.testing.assert_array_equal(feat.transform(images), X)
    assert count_encoded["images"] == 0


# -- 5, 11, 12: caches that degrade ------------------------------------------------------------
# A child process: encodes cfg["paths"] with cache_dir=cfg["cache_dir"] (PyTorch) cfg["runs"]
# times and saves the embeddings, the number of images encoded and the warnings.
CHILD = r"""
import json, sys, warnings
cfg = json.loads(sys.argv[1])
from skclip import CLIPFeaturizer
from skclip.encoding import engine as _encode
calls = [0]
tower = _encode.tower
def counting(spec, pixels):
    calls[0] += len(next(iter(pixels.values())))
    return tower(spec, pixels)
_encode.tower = counting
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    feat = CLIPFeaturizer(model=cfg["model"], cache_dir=cfg["cache_dir"], runtime="torch",
                          progress=False)
    runs = [feat.transform(cfg["paths"]).tolist() for _ in range(cfg.get("runs", 1))]
with open(cfg["out"], "w") as f:
    json.dump({"X": runs, "encoded": calls[0],
               "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}, f)
"""


def in_namespace(flags: list[str], setup: str, cfgs: list[dict]) -> list[dict]:
    """Run CHILD once per config, one after the other, in a new user namespace
    (``unshare`` with ``flags``) after the shell commands ``setup``; their results."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not permitted here: {probe.stderr.decode().strip()}")
    root = str(Path(skclip.__file__).resolve().parents[1])  # this worktree's skclip
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    )
    runs = " && ".join(f'"$0" -c "$1" "${k + 2}"' for k in range(len(cfgs)))
    done = subprocess.run(
        [
            "unshare",
            *flags,
            "sh",
            "-c",
            f"{setup} {runs}",
            sys.executable,
            CHILD,
            *(json.dumps(cfg) for cfg in cfgs),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(Path(cfg["out"]).read_text()) for cfg in cfgs]


def image_files(folder: Path, n: int, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [str(bmp(folder / f"{seed}-{i}.bmp", 100 * seed + i)) for i in range(n)]


def cache_warnings(result: dict) -> list[str]:
    return [w for w in result["warnings"] if w.startswith("CacheDirWarning")]


@linux
def test_5_a_read_only_cache_dir_serves_its_hits_and_writes_nothing(tiny_clip_path, tmp_path):
    folder = tmp_path / "team-cache"
    old, new = image_files(tmp_path / "im", 3, 0), image_files(tmp_path / "im", 2, 1)
    CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, runtime="torch").transform(old)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    setup = f"mount --bind '{folder}' '{folder}' && mount -o remount,ro,bind '{folder}' &&"
    cfg = {
        "model": tiny_clip_path,
        "cache_dir": str(folder),
        "paths": old + new,
        "runs": 2,
        "out": str(tmp_path / "out.json"),
    }
    (result,) = in_namespace(["-Urm"], setup, [cfg])
    expected = uncached(tiny_clip_path, old + new, runtime="torch")
    for X in result["X"]:
        np.testing.assert_allclose(X, expected, atol=1e-6)
    assert result["encoded"] == len(new)  # the hits were read; the rest once, in memory
    (warning,) = cache_warnings(result)
    assert "read-only" in warning and str(folder) in warning
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kind", ["dangling link", "a file"])
def test_5_a_cache_dir_that_cannot_be_made_is_not_an_error(
    tiny_clip_path, tmp_path, count_encoded, kind
):
    folder = tmp_path / "cache"
    if kind == "dangling link":
        os.symlink(tmp_path / "nowhere", folder)
    else:
        folder.write_bytes(b"not a folder")
    images = arrays(3)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder)
    with pytest.warns(UserWarning, match="embedding cache folder") as record:
        X = feat.transform(images)
        feat.transform(arrays(2, seed=1))
    assert len([w for w in record if "embedding cache folder" in str(w.message)]) == 1
    np.testing.assert_allclose(X, uncached(tiny_clip_path, images), atol=1e-6)
    assert not (tmp_path / "nowhere").exists()


def test_5_a_missing_cache_dir_is_made(tiny_clip_path, tmp_path, count_encoded, recwarn):
    folder = tmp_path / "new" / "cache"
    CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder).transform(arrays(2))
    assert len(list(folder.rglob("*.emb"))) == 2
    assert not [w for w in recwarn if "embedding cache folder" in str(w.message)]


@linux
def test_11_a_full_cache_dir_degrades_and_leaves_no_claim(tiny_clip_path, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    paths = image_files(tmp_path / "im", 4, 2)
    setup = (
        f"mount -t tmpfs -o size=16k,mode=755 tmpfs '{folder}' && "
        f"(head -c 1000000 /dev/zero > '{folder}/filler' 2>/dev/null; true) &&"
    )
    cfgs = [
        {
            "model": tiny_clip_path,
            "cache_dir": str(folder),
            "paths": paths,
            "runs": 2,
            "out": str(tmp_path / f"out{k}.json"),
        }
        for k in range(2)
    ]  # two processes
    results = in_namespace(["-Urm"], setup, cfgs)
    expected = uncached(tiny_clip_path, paths, runtime="torch")
    for result in results:
        for X in result["X"]:
            np.testing.assert_allclose(X, expected, atol=1e-6)
        assert result["encoded"] == len(paths)
        (warning,) = cache_warnings(result)
        assert "is full" in warning and str(folder) in warning
    assert not list(folder.rglob("*"))  # the mount is gone: nothing was left here either


@pytest.fixture
def other_process():
    """A live process of this machine that is not this one (holds claims in the tests)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def claim_line(pid: int, start: str | None = None, host: str | None = None) -> str:
    machine = list(_cache._machine())
    if host is not None:
        machine[0] = host
    start = _cache._start_time(pid) if start is None else start
    return " ".join((_cache._CLAIM_TAG, *machine, str(pid), start))


def claim_path(store: _cache.DiskStore, key: str) -> Path:
    """Where the claim of ``key`` lives (``_claim_path``: the layout before this format,
    so that these tests also show the old code waiting)."""
    return (getattr(store, "claim_path", None) or store._claim_path)(key)


def transform_in_thread(feat: CLIPFeaturizer, images: list) -> tuple[threading.Thread, dict]:
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(X=feat.transform(images)), daemon=True)
    worker.start()
    return worker, result


@pytest.mark.parametrize(
    "claim", ["empty", "another machine's, lease over", "a reused PID", "a process gone", "damaged"]
)
def test_11_a_void_claim_is_taken_over_at_once(
    tiny_clip_path, tmp_path, other_process, count_encoded, claim
):
    images = arrays(2, seed=3)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=tmp_path / "emb")
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    key = spec.cache.prefix + memory_digest(images[0])
    path = claim_path(spec.cache.disk, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    text = {
        "empty": lambda: "",
        "damaged": lambda: "\x00\xff" * 40,
        "another machine's, lease over": lambda: claim_line(os.getpid(), host="elsewhere"),
        "a reused PID": lambda: claim_line(other_process.pid, start="1"),
        "a process gone": lambda: claim_line(int(gone), start="1"),
    }[claim]()
    path.write_text(text)
    if claim.startswith("another machine"):
        os.utime(path, (time.time() - 60, time.time() - 60))
    worker, result = transform_in_thread(feat, images)
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), "waited on a void claim"
    assert count_encoded["images"] == 2 and not list((tmp_path / "emb").rglob("*.claim"))
    np.testing.assert_allclose(result["X"], uncached(tiny_clip_path, images), atol=1e-6)


def test_11_a_fresh_claim_of_another_machine_is_waited_for_then_taken_over(
    tiny_clip_path, tmp_path, count_encoded, monkeypatch
):
    images = arrays(1, seed=4)
    monkeypatch.setattr(_cache.DiskStore, "claim_lease", 0.5)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=tmp_path / "emb")
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    path = claim_path(spec.cache.disk, spec.cache.prefix + memory_digest(images[0]))
    path.parent.mkdir(parents=True)
    path.write_text(claim_line(os.getpid(), host="elsewhere"))
    assert spec.cache.holder(memory_digest(images[0])) == "a process on elsewhere"
    worker, result = transform_in_thread(feat, images)
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive() and count_encoded["images"] == 1


def test_11_waiting_on_another_process_says_so(
    tiny_clip_path, tmp_path, other_process, count_encoded, monkeypatch, capfd
):
    monkeypatch.setattr(_claims, "WAIT_NOTE_AFTER", 0.0, raising=False)
    images = arrays(1, seed=5)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=tmp_path / "emb")
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    path = claim_path(spec.cache.disk, spec.cache.prefix + memory_digest(images[0]))
    path.parent.mkdir(parents=True)
    path.write_text(claim_line(other_process.pid))
    capfd.readouterr()
    worker, result = transform_in_thread(feat, images)
    err, deadline = "", time.monotonic() + HANG_GUARD_S
    while "waiting" not in err and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert worker.is_alive() and count_encoded["images"] == 0  # waits for the claim
    assert f"for 1 image(s) that process {other_process.pid} is encoding" in err
    assert str(tmp_path / "emb") in err
    other_process.kill()  # gone without storing anything: encoded here
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive() and count_encoded["images"] == 1


def test_12_a_cache_dir_others_may_write_to_is_never_written(
    tiny_clip_path, tmp_path, count_encoded
):
    """Another user planted links in a world-writable cache folder, to a folder only
    this user may write: nothing is written there, nor anywhere in the cache folder."""
    folder, target = tmp_path / "shared", tmp_path / "private"
    target.mkdir(mode=0o700)
    for layout in ("d16", f"v{getattr(_cache, 'FORMAT', 2)}-d16"):  # older and current layout
        (folder / layout).mkdir(parents=True)
        for shard in range(256):
            os.symlink(target, folder / layout / f"{shard:02x}")
    for path in [folder, *folder.iterdir()]:
        os.chmod(path, 0o777)
    images = arrays(6, seed=6)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder)
    with pytest.warns(UserWarning, match="may be written by other users") as record:
        X = feat.transform(images)
        feat.transform(arrays(2, seed=7))
    assert len([w for w in record if "embedding cache folder" in str(w.message)]) == 1
    np.testing.assert_allclose(X, uncached(tiny_clip_path, images), atol=1e-6)
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in folder.iterdir()) == ["d16", "v2-d16"]


@pytest.fixture
def umask_022():
    """A usual umask (new folders 0755), whatever the test run's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_12_a_team_cache_group_writable_stays_in_use(
    tiny_clip_path, tmp_path, count_encoded, umask_022
):
    folder = tmp_path / "team"
    folder.mkdir()
    os.chmod(folder, 0o2775)  # group-writable, new files in the folder's group
    images = arrays(3, seed=8)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*embedding cache folder")
        X = feat.transform(images)
        CLIPFeaturizer.cache_clear()
        np.testing.assert_array_equal(feat.transform(images), X)
    assert count_encoded["images"] == 3 and len(list(folder.rglob("*.emb"))) == 3
    for sub in folder.rglob("*"):  # group-writable too, so that teammates can add shards
        if sub.is_dir():
            assert sub.stat().st_mode & 0o2070 == 0o2070, sub


# -- 10: entries that prove themselves ----------------------------------------------------------
@pytest.fixture
def two_entries(tiny_clip_path, tmp_path, count_encoded):
    """A cache folder with the entries of two images: (featurizer, images, entry paths)."""
    folder = tmp_path / "emb"
    images = arrays(2, seed=9)
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder)
    feat.transform(images[:1])
    first = new_entries(folder, set())
    feat.transform(images[1:])
    second = new_entries(folder, set(first))
    CLIPFeaturizer.cache_clear()  # a fresh process: lookups go to the folder
    count_encoded["images"] = 0
    return feat, images, first + second


@pytest.mark.parametrize("how", ["copied", "hard link", "symbolic link"])
def test_10_another_images_entry_in_its_place_is_not_served(
    tiny_clip_path, two_entries, count_encoded, how
):
    feat, images, (a, b) = two_entries
    a.unlink()
    {"copied": shutil.copy, "hard link": os.link, "symbolic link": os.symlink}[how](b, a)
    X = feat.transform(images[:1])
    assert count_encoded["images"] == 1
    np.testing.assert_allclose(X, uncached(tiny_clip_path, images[:1]), atol=1e-6)


def test_10_a_forged_vector_with_a_valid_checksum_is_not_served(
    tiny_clip_path, two_entries, count_encoded
):
    feat, images, _ = two_entries
    spec = _encode.spec_for(feat, n_views=0, seed=None)
    spec.cache.put(memory_digest(images[0]), np.zeros(spec.cache.dim, dtype=np.float32))
    CLIPFeaturizer.cache_clear()
    X = feat.transform(images[:1])
    np.testing.assert_allclose(X, uncached(tiny_clip_path, images[:1]), atol=1e-6)


@linux
@pytest.mark.parametrize("thing", ["/dev/zero", "fifo", "folder"])
def test_10_no_special_file_is_read_or_written_through(
    tiny_clip_path, two_entries, count_encoded, thing
):
    feat, images, (a, _) = two_entries
    a.unlink()
    if thing == "/dev/zero":
        os.symlink("/dev/zero", a)
    elif thing == "fifo":
        os.mkfifo(a)
    else:
        a.mkdir()
    worker, result = transform_in_thread(feat, images)
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), f"hung on a {thing} entry"
    assert count_encoded["images"] == 1
    np.testing.assert_allclose(result["X"], uncached(tiny_clip_path, images), atol=1e-6)


# -- 6 and the bounds: inotify watches, stamps, settings -----------------------------------------
WATCH_CHILD = r"""
import ctypes, ctypes.util, json, os, sys
folders = json.loads(sys.argv[1])
from skclip.encoding.stamps import FileStamps
stamps = FileStamps()
got = stamps.stamps([os.path.join(f, "a.jpg") for f in folders[:-50]])
libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
fd = libc.inotify_init1(0)
others = sum(libc.inotify_add_watch(fd, f.encode(), 0x2) >= 0 for f in folders[-50:])
print(json.dumps({"ours": len(stamps._inotify.folders), "others": others,
                  "stamped": sum(s is not None for s in got)}))
"""


@linux
def test_6_skclip_leaves_other_programs_their_inotify_watches(tmp_path):
    """With the user's limit at 300 and 400 image folders, another program can still
    watch folders."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    folders = []
    for i in range(450):
        folder = tmp_path / f"class{i:03d}"
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"x")
        folders.append(str(folder))
    limit = "echo 300 > /proc/sys/user/max_inotify_watches"
    probe = subprocess.run(["unshare", "-Ur", "sh", "-c", limit], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot lower the inotify limit in a user namespace: {probe.stderr!r}")
    root = str(Path(skclip.__file__).resolve().parents[1])
    done = subprocess.run(
        [
            "unshare",
            "-Ur",
            "sh",
            "-c",
            f'{limit} && "$0" -c "$1" "$2"',
            sys.executable,
            WATCH_CHILD,
            json.dumps(folders),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["stamped"] == 400  # every file stamped (beyond the cap: stat'ed)
    assert result["ours"] <= 300 // 8 and result["others"] == 50


@linux
def test_6_cache_clear_removes_every_watch(tmp_path):
    paths = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        paths.append(str(tmp_path / str(i) / "a.jpg"))
        Path(paths[-1]).write_bytes(b"x")
    FILE_DIGESTS.known_many(paths)
    watcher = FILE_DIGESTS.stamps._inotify
    assert watcher is not None and len(watcher.folders) >= 3
    fd = watcher.fd
    CLIPFeaturizer.cache_clear()
    assert FILE_DIGESTS.stamps._inotify is None or not FILE_DIGESTS.stamps._inotify.folders
    assert not os.path.exists(f"/proc/self/fd/{fd}") or "inotify" not in os.readlink(
        f"/proc/self/fd/{fd}"
    )


def test_and_stamps_and_watches_are_bounded(tmp_path):
    paths = []
    for i in range(20):
        (tmp_path / str(i)).mkdir()
        for name in ("a", "b"):
            paths.append(str(tmp_path / str(i) / name))
            Path(paths[-1]).write_bytes(b"x" * i)
    stamps = FileStamps(max_files=10, max_watches=3)
    for _ in range(2):
        got = stamps.stamps(paths)
        assert [s[1] for s in got] == [int(Path(p).parent.name) for p in paths]
    assert len(stamps._trusted) <= 10 and stamps.n_watches <= 3


def test_and_cache_settings_do_not_grow_per_seed(tiny_clip_path):
    from skclip.backbones.loading import load_backbone as load_clip

    clip = load_clip(tiny_clip_path, "cpu", "float32")
    for seed in range(300):
        _encode.cache_settings(clip, True, 2, seed)
    assert len(_encode._SETTINGS[clip]) <= 64


WORKER_FOLDER_CHILD = r"""
import multiprocessing, sys
from skclip.encoding import cache as _cache

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        print(pool.apply(_cache.worker_folder), flush=True)  # made by the worker
"""


def test_and_the_worker_folder_goes_even_if_the_parent_never_encodes(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(WORKER_FOLDER_CHILD)
    root = str(Path(skclip.__file__).resolve().parents[1])
    env = dict(
        os.environ,
        TMPDIR=str(tmp_path),
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path and folder.name.startswith("skclip-workers-")
    assert not folder.exists()
