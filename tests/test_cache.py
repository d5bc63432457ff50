"""Embedding cache: encode each distinct image once, key by content, survive bad disk entries."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from helpers import make_image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip.encoding import engine as _encode
from skclip.backbones.loading import load_backbone as load_clip


@pytest.fixture
def count_encoded(tiny_clip_path, monkeypatch):
    """Counts images that go through the vision tower (any runtime, device or dtype)."""
    CLIPFeaturizer.cache_clear()
    counter = {"images": 0}
    original = _encode.tower

    def counting(spec, pixels):  # pixels: a collated batch, arrays of B images (views)
        counter["images"] += len(next(iter(pixels.values())))
        return original(spec, pixels)

    monkeypatch.setattr(_encode, "tower", counting)
    yield counter
    CLIPFeaturizer.cache_clear()


def _pipe(tiny_clip_path, **featurizer_params):
    return Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, **featurizer_params)),
            ("tip", TipAdapterClassifier(clip_model=tiny_clip_path)),
        ]
    )


def test_gridsearch_encodes_each_image_once_and_matches_uncached(
    tiny_clip_path, image_folder, count_encoded
):
    paths, labels = image_folder
    grid = {"tip__alpha": [0.0, 0.5, 1.0, 3.0, 10.0], "tip__beta": [1.0, 3.0, 5.5, 8.0]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    cached = GridSearchCV(_pipe(tiny_clip_path), grid, cv=cv).fit(paths, labels)
    assert count_encoded["images"] == len(set(paths))
    info = CLIPFeaturizer.cache_info()
    assert info.misses == len(paths) and info.hits > 20 * len(paths)

    count_encoded["images"] = 0
    uncached = GridSearchCV(_pipe(tiny_clip_path, cache=False), grid, cv=cv).fit(paths, labels)
    assert count_encoded["images"] > 20 * len(paths)  # what the cache saves
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], uncached.cv_results_["mean_test_score"], atol=1e-12
    )
    assert cached.best_params_ == uncached.best_params_


def test_key_is_content_not_path(tiny_clip_path, tmp_path, count_encoded):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    make_image(np.random.default_rng(0)).save(a)
    a_copy = tmp_path / "a_copy.png"
    a_copy.write_bytes(a.read_bytes())
    make_image(np.random.default_rng(1)).save(b)
    feat = CLIPFeaturizer(model=tiny_clip_path)
    first = feat.transform([a, b])
    assert count_encoded["images"] == 2
    np.testing.assert_array_equal(feat.transform([a_copy]), first[:1])  # same bytes: a hit
    assert count_encoded["images"] == 2
    # Edit a.png in place: new content under the same path is encoded again.
    time.sleep(0.01)
    make_image(np.random.default_rng(2)).save(a)
    os.utime(a, ns=(time.time_ns(), time.time_ns()))
    edited = feat.transform([a])
    assert count_encoded["images"] == 3
    assert not np.allclose(edited, first[:1])
    expected = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform([a])
    np.testing.assert_allclose(edited, expected, atol=1e-6)


def test_settings_are_part_of_the_key(tiny_clip_path, count_encoded):
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(3)]
    CLIPFeaturizer(model=tiny_clip_path).transform(images)
    CLIPFeaturizer(model=tiny_clip_path, normalize=False).transform(images)
    CLIPFeaturizer(model=tiny_clip_path, augment=2, random_state=0).fit_transform(images)
    assert count_encoded["images"] == 3 + 3 + 3 * 2
    CLIPFeaturizer(model=tiny_clip_path, augment=2, random_state=0).fit_transform(images)
    CLIPFeaturizer(model=tiny_clip_path, batch_size=1).transform(images)
    assert count_encoded["images"] == 12  # same settings: all hits


def test_memory_bound_evicts_least_recently_used(tiny_clip_path, count_encoded):
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(5)]
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_size=3)
    feat.transform(images)
    assert CLIPFeaturizer.cache_info().currsize == 3
    feat.transform(images[-3:])  # the three most recent are still there
    assert count_encoded["images"] == 5
    feat.transform(images[:1])  # evicted: encoded again
    assert count_encoded["images"] == 6


def test_disk_cache_shared_and_corrupt_entries_recomputed(tiny_clip_path, tmp_path, count_encoded):
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(4)]
    folder = tmp_path / "emb"
    feat = CLIPFeaturizer(model=tiny_clip_path, cache_dir=folder)
    ref = feat.transform(images)
    files = sorted(folder.rglob("*.emb"))
    assert len(files) == 4 and not list(folder.rglob(".tmp-*"))
    CLIPFeaturizer.cache_clear()  # as in a new process: memory empty, disk full
    count_encoded["images"] = 0
    np.testing.assert_array_equal(feat.transform(images), ref)
    assert count_encoded["images"] == 0
    # Truncate one entry, flip a byte in another: both are recomputed, never returned.
    files[0].write_bytes(files[0].read_bytes()[:-7])
    raw = bytearray(files[1].read_bytes())
    raw[-1] ^= 0xFF
    files[1].write_bytes(bytes(raw))
    CLIPFeaturizer.cache_clear()
    np.testing.assert_allclose(feat.transform(images), ref, atol=1e-6)
    assert count_encoded["images"] == 2


def test_good_images_are_kept_when_a_file_is_bad(tiny_clip_path, tmp_path, count_encoded):
    good = []
    for i in range(3):
        good.append(tmp_path / f"g{i}.png")
        make_image(np.random.default_rng(i)).save(good[-1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    feat = CLIPFeaturizer(model=tiny_clip_path, batch_size=2)
    with pytest.raises(ValueError, match="bad.jpg"):
        feat.transform([good[0], bad, good[1], good[2]])
    assert count_encoded["images"] == 3
    bad.unlink()
    feat.transform(good)  # the retry after removing the bad file encodes nothing
    assert count_encoded["images"] == 3


def test_cache_false_encodes_every_time(tiny_clip_path, count_encoded):
    images = [np.asarray(make_image(np.random.default_rng(0)))]
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False)
    feat.transform(images)
    feat.transform(images)
    assert count_encoded["images"] == 2
    assert CLIPFeaturizer.cache_info().currsize == 0


def test_augment_without_a_seed_draws_new_views_each_call(tiny_clip_path, count_encoded):
    """random_state=None keeps scikit-learn's meaning (documented): fresh views every call,
    so augmented embeddings are never reused; an int seed reuses them."""
    images = [np.asarray(make_image(np.random.default_rng(i))) for i in range(2)]
    unseeded = CLIPFeaturizer(model=tiny_clip_path, augment=2)
    A, B = unseeded.fit_transform(images), unseeded.fit_transform(images)
    assert count_encoded["images"] == 2 * 2 * 2 and not np.allclose(A, B)
    seeded = CLIPFeaturizer(model=tiny_clip_path, augment=2, random_state=0)
    np.testing.assert_array_equal(seeded.fit_transform(images), seeded.fit_transform(images))
    assert count_encoded["images"] == 8 + 2 * 2


def test_augmented_entries_of_the_old_view_averaging_are_not_reused(tiny_clip_path, tmp_path):
    """Augmented keys changed recipe (mean of raw views): their cache settings changed
    too, so a folder filled by an older skclip gives no stale augmented key. Clean
    embeddings did not change and keep their settings."""
    from skclip.encoding.cache import EmbeddingCache, memory_digest, settings_digest
    from skclip.encoding.engine import cache_settings, draw_seed
    from skclip._images import DECODE_RULES

    clip = load_clip(tiny_clip_path, "auto", "auto")
    dim, image = clip.embedding_dim, np.asarray(make_image(np.random.default_rng(0)))

    def old_settings(n_views, seed):  # the settings before the change (today's decode rules)
        return settings_digest(
            clip.vision_fingerprint,
            sorted(clip.image_config.items()),
            str(clip.dtype),
            clip.device.type,
            True,
            n_views,
            seed,
            DECODE_RULES,
        )

    seed = draw_seed(0, 2)
    stale = np.full(dim, dim**-0.5, dtype=np.float32)
    EmbeddingCache(old_settings(2, seed), dim, tmp_path).put(memory_digest(image), stale)
    CLIPFeaturizer.cache_clear()
    feat = CLIPFeaturizer(model=tiny_clip_path, augment=2, random_state=0, cache_dir=tmp_path)
    assert not np.allclose(feat.fit_transform([image])[0], stale)
    assert cache_settings(clip, True, 0, None) == old_settings(0, None)
    CLIPFeaturizer.cache_clear()
