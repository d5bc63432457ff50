"""Faults survived: a run killed mid-encoding, two processes on one cache folder.

(A Dask worker killed mid-transform is tested in ``test_distributed.py``, on that
module's cluster, whose workers have already imported torch and loaded the model.)

Each fault is made to happen at a chosen point (a child process pauses inside the
encoding after a given number of cache writes or forward passes, and is killed there),
so the tests are deterministic and need no timing. Child processes import this
worktree's skclip and the tiny checkpoint; each test takes a few seconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)

import skclip
from skclip import CLIPFeaturizer
from skclip.encoding.cache import DiskStore

N_IMAGES = 40
HANG_GUARD_S = 300  # only against a hung child; never reached when things work

# A child process: encodes the images listed in cfg["paths"] with a disk cache and saves
# the embeddings and the cache statistics. cfg["pause"] = [what, after, go_file, paused_file]
# makes it stop at the (after + 1)-th call of `what` ("replace": the rename of a cache write,
# so the entry exists only as a temporary file; "forward": a forward pass between batches),
# print "paused" (and create paused_file) and wait for go_file to exist (forever when
# go_file is None: it is killed there). cfg["wait_file"]: start encoding once it exists;
# cfg["started_file"]: created when encoding starts.
CHILD = r"""
import json, os, sys, time
import numpy as np
cfg = json.loads(sys.argv[1])
from skclip import CLIPFeaturizer
from skclip.backbones.loading import load_backbone as load_clip

def gate(what, after, go_file, paused_file=None):
    calls = [0]
    def check():
        calls[0] += 1
        if calls[0] == after + 1:
            print("paused", flush=True)
            if paused_file:
                open(paused_file, "w").close()
            while go_file is None or not os.path.exists(go_file):
                time.sleep(0.01)
    if what == "replace":
        replace = os.replace
        def patched(src, dst, **kwargs):
            check()
            return replace(src, dst, **kwargs)
        os.replace = patched
    else:
        from skclip.encoding import engine as _encode
        forward = _encode.tower  # the image tower of any runtime
        def patched(spec, pixels):
            check()
            return forward(spec, pixels)
        _encode.tower = patched

feat = CLIPFeaturizer(model=cfg["model"], cache_dir=cfg["cache_dir"], batch_size=1,
                      progress=False)
feat.get_feature_names_out()  # load the model first
if cfg.get("pause"):
    gate(*cfg["pause"])
while cfg.get("wait_file") and not os.path.exists(cfg["wait_file"]):
    time.sleep(0.01)
if cfg.get("started_file"):
    open(cfg["started_file"], "w").close()
X = feat.transform(cfg["paths"])
np.save(cfg["out"], X)
print(json.dumps(CLIPFeaturizer.cache_info()._asdict()), flush=True)
"""


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-images")
    out = []
    for i in range(N_IMAGES):
        out.append(str(folder / f"im{i:02d}.png"))
        make_image(np.random.default_rng(100 + i), (24, 20)).save(out[-1])
    return out


@pytest.fixture(scope="module")
def clean(tiny_clip_path, paths):
    """Embeddings of an uncached run in this process (batch_size=1, as in the children)."""
    return CLIPFeaturizer(model=tiny_clip_path, cache=False, batch_size=1).transform(paths)


def _start(cfg: dict) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = str(Path(skclip.__file__).resolve().parents[1])  # this worktree's skclip
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen) -> str:
    """The child's next stdout line; fails with its stderr if it ended or hung."""
    ready, _, _ = select.select([proc.stdout], [], [], HANG_GUARD_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        pytest.fail(f"child process gave no line:\n{proc.communicate()[1][-3000:]}")
    return line.strip()


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.emb"))


def _all_entries_valid(folder: Path, dim: int) -> bool:
    store = DiskStore(folder, dim, unit=True)
    return all(
        store.get(p.stem) is not None for p in _entries(folder) if not p.name.startswith(".tmp-")
    )


@pytest.mark.parametrize(
    "where", ["replace", "forward"], ids=["in-a-cache-write", "between-batches"]
)
def test_sigkill_mid_run_then_rerun_encodes_only_the_rest(
    tiny_clip_path, paths, clean, tmp_path, count_encoded, where
):
    folder = tmp_path / "cache"
    stored = 10
    child = _start(
        {
            "model": tiny_clip_path,
            "paths": paths,
            "cache_dir": str(folder),
            "out": str(tmp_path / "x.npy"),
            "pause": [where, stored, None],
        }
    )
    assert _read_line(child) == "paused"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    done = [p for p in _entries(folder) if not p.name.startswith(".tmp-")]
    assert len(done) == stored
    if where == "replace":  # killed between writing an entry and renaming it into place
        assert len(list(folder.rglob(".tmp-*"))) == 1

    X = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder, batch_size=1).transform(paths)
    assert count_encoded["images"] == N_IMAGES - stored
    info = CLIPFeaturizer.cache_info()
    assert (info.hits, info.misses) == (stored, N_IMAGES - stored)
    np.testing.assert_array_equal(X, clean)
    assert len([p for p in _entries(folder) if not p.name.startswith(".tmp-")]) == N_IMAGES


def test_two_processes_fill_one_cache_folder(tiny_clip_path, paths, clean, tmp_path):
    """A writes the first half and pauses until B has started; then both write the second
    half at once (B in reverse order) while B reads what A wrote."""
    folder, go, a_paused = tmp_path / "cache", tmp_path / "b-started", tmp_path / "a-paused"
    half = N_IMAGES // 2
    a = _start(
        {
            "model": tiny_clip_path,
            "paths": paths,
            "cache_dir": str(folder),
            "out": str(tmp_path / "a.npy"),
            "pause": ["replace", half, str(go), str(a_paused)],
        }
    )
    b = _start(
        {
            "model": tiny_clip_path,
            "paths": paths[::-1],
            "cache_dir": str(folder),
            "out": str(tmp_path / "b.npy"),
            "wait_file": str(a_paused),
            "started_file": str(go),
        }
    )
    assert _read_line(a) == "paused"
    info_a, info_b = json.loads(_read_line(a)), json.loads(_read_line(b))
    assert a.wait() == 0 and b.wait() == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), clean)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), clean[::-1])
    assert info_a["misses"] == N_IMAGES - info_a["hits"]
    assert info_b["hits"] >= half  # B read A's entries
    assert len(_entries(folder)) == N_IMAGES and not list(folder.rglob(".tmp-*"))
    assert _all_entries_valid(folder, clean.shape[1])
