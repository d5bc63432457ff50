"""Cached lookups at array speed, still exact: an edited file is noticed at once, an
unchanged one costs no system call, results are the same under n_jobs and cache_dir."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from helpers import make_image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from test_cache import count_encoded  # noqa: F401 (fixture: images through the tower)

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip.encoding import cache as _cache
from skclip.encoding.cache import FILE_DIGESTS


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        make_image(np.random.default_rng(i)).save(path)
        paths.append(str(path))
    return paths


def test_a_file_edited_in_place_is_encoded_again_at_once(tiny_clip_path, files, count_encoded):
    feat = CLIPFeaturizer(model=tiny_clip_path)
    first = feat.transform(files)
    for _ in range(3):  # as in a search: the same files again and again
        np.testing.assert_array_equal(feat.transform(files), first)
    assert count_encoded["images"] == 6
    make_image(np.random.default_rng(99), size=(40, 36)).save(files[2])  # no sleep, no utime
    edited = feat.transform(files)
    assert count_encoded["images"] == 7
    np.testing.assert_array_equal(np.delete(edited, 2, axis=0), np.delete(first, 2, axis=0))
    expected = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(files[2:3])
    np.testing.assert_allclose(edited[2:3], expected, atol=1e-6)
    os.unlink(files[4])  # and a deleted file is an error, not a stale hit
    with pytest.raises(ValueError, match="img4.png"):
        feat.transform(files)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")
def test_unchanged_cached_files_cost_no_stat(tiny_clip_path, files, count_encoded, monkeypatch):
    # The files were written just now: within the racy window (file-system clocks are
    # coarse) a file is hashed again on every call. Here they count as settled at once.
    monkeypatch.setattr(_cache, "_RACY_NS", 0)
    feat = CLIPFeaturizer(model=tiny_clip_path)
    first = feat.transform(files)
    seen = []
    real_stat, real_lstat = os.stat, os.lstat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: seen.append(p) or real_stat(p, *a, **k))
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: seen.append(p) or real_lstat(p, *a, **k))
    np.testing.assert_array_equal(feat.transform(files[::-1]), first[::-1])
    assert not set(map(os.fspath, seen)) & set(files)
    assert count_encoded["images"] == 6


def test_mixed_inputs_keep_their_order(tiny_clip_path, files, count_encoded):
    arrays = [np.asarray(make_image(np.random.default_rng(50 + i))) for i in range(3)]
    mixed = [files[0], arrays[0], files[1], arrays[1], arrays[2], files[2]]
    feat = CLIPFeaturizer(model=tiny_clip_path)
    cold = feat.transform(mixed)
    warm = feat.transform(mixed)  # all hits: one gather
    part = feat.transform(mixed[:2] + files[3:4])  # some hits, one miss
    np.testing.assert_array_equal(warm, cold)
    np.testing.assert_array_equal(part[:2], cold[:2])
    np.testing.assert_allclose(
        part[2:],
        CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(files[3:4]),
        atol=1e-6,
    )


def test_search_results_equal_under_n_jobs_and_cache_dir(tiny_clip_path, image_folder, tmp_path):
    paths, labels = image_folder
    grid = {"tip__alpha": [0.5, 2.0], "tip__beta": [1.0, 5.5]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)

    def search(n_jobs, **featurizer):
        pipe = Pipeline(
            [
                ("clip", CLIPFeaturizer(model=tiny_clip_path, **featurizer)),
                ("tip", TipAdapterClassifier(clip_model=tiny_clip_path)),
            ]
        )
        return GridSearchCV(pipe, grid, cv=cv, n_jobs=n_jobs).fit(paths, labels)

    reference = search(1, cache=False)
    for n_jobs, featurizer in [
        (1, {}),
        (2, {"cache_dir": tmp_path / "emb"}),
        (1, {"cache_dir": tmp_path / "emb"}),
    ]:
        FILE_DIGESTS.stamps.clear()
        result = search(n_jobs, **featurizer)
        np.testing.assert_allclose(
            result.cv_results_["mean_test_score"],
            reference.cv_results_["mean_test_score"],
            atol=1e-12,
        )
        assert result.best_params_ == reference.best_params_
