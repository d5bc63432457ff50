"""Tip-Adapter-F on augmented views: CLIPFeaturizer(train_views=E) and the classifiers'
``train_views`` (a fresh random view of each training image per epoch, as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_DIM, make_image
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import normalize

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip.encoding import engine as _encode
from skclip.encoding.cache import memory_digest
from skclip._compat import pooled_embeddings
from skclip.heads._finetune import fine_tune_keys
from skclip._images import CLIPPreprocessor, open_image
from skclip.backbones.loading import load_backbone as load_clip


@pytest.fixture(scope="module")
def images():
    return [make_image(np.random.default_rng(i), (60, 45)) for i in range(4)]


def _featurizer(path, **kw):
    return CLIPFeaturizer(model=path, device="cpu", dtype="float32", progress=False, **kw)


# -- featurizer ---------------------------------------------------------------------------
def test_views_are_the_models_embeddings_of_single_random_views(tiny_clip_path, images):
    """Block 0 is the usual output; block e is the normalized embedding of one random
    view drawn with the e-th view seed, computed here directly from the model."""
    E = 2
    out = _featurizer(tiny_clip_path, train_views=E, random_state=0, cache=False).fit_transform(
        images
    )
    assert out.shape == (len(images), (1 + E) * TINY_DIM)
    clean = _featurizer(tiny_clip_path, cache=False).transform(images)
    np.testing.assert_allclose(out[:, :TINY_DIM], clean, atol=1e-6)

    clip = load_clip(tiny_clip_path, "cpu", "float32")
    prep = CLIPPreprocessor(clip.image_config)
    for e, seed in enumerate(_encode.view_seeds(0, E)):
        crops = [
            prep.random_view(open_image(img), _encode.view_rng(seed, memory_digest(img)))
            for img in images
        ]
        with torch.inference_mode():
            pixels = prep.normalize(torch.from_numpy(np.stack(crops)))
            feats = pooled_embeddings(clip.model.get_image_features(pixel_values=pixels)).numpy()
        expected = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        block = out[:, (1 + e) * TINY_DIM : (2 + e) * TINY_DIM]
        np.testing.assert_allclose(block, expected, atol=1e-5)
    # views are random: they differ from the clean view and from each other
    assert np.abs(out[:, TINY_DIM : 2 * TINY_DIM] - clean).max() > 1e-3
    assert np.abs(out[:, TINY_DIM : 2 * TINY_DIM] - out[:, 2 * TINY_DIM :]).max() > 1e-3


def test_views_with_augmented_keys_and_view_e_does_not_depend_on_their_number(
    tiny_clip_path, images
):
    keys = _featurizer(tiny_clip_path, augment=3, random_state=1, cache=False).fit_transform(images)
    two = _featurizer(
        tiny_clip_path, augment=3, train_views=2, random_state=1, cache=False
    ).fit_transform(images)
    one = _featurizer(tiny_clip_path, train_views=1, random_state=1, cache=False).fit_transform(
        images
    )
    np.testing.assert_allclose(two[:, :TINY_DIM], keys, atol=1e-6)  # augmented key block
    np.testing.assert_allclose(two[:, TINY_DIM : 2 * TINY_DIM], one[:, TINY_DIM:], atol=1e-6)


def test_second_fit_encodes_nothing(tiny_clip_path, images):
    E = 3
    CLIPFeaturizer.cache_clear()
    featurizer = _featurizer(tiny_clip_path, train_views=E, random_state=0)
    first = featurizer.fit_transform(images)
    assert CLIPFeaturizer.cache_info().misses == (1 + E) * len(images)
    second = clone(featurizer).fit_transform(images)
    info = CLIPFeaturizer.cache_info()
    assert info.misses == (1 + E) * len(images)  # nothing encoded again
    assert info.hits == (1 + E) * len(images)
    np.testing.assert_array_equal(first, second)
    # transform and the feature names keep the width of one block
    assert featurizer.transform(images).shape == (len(images), TINY_DIM)
    assert len(featurizer.get_feature_names_out()) == TINY_DIM


def test_views_refuse_pandas_output(tiny_clip_path, images):
    featurizer = _featurizer(tiny_clip_path, train_views=1, random_state=0)
    featurizer.set_output(transform="pandas")
    with pytest.raises(ValueError, match="train_views=1.*no feature names"):
        featurizer.fit_transform(images)
    assert featurizer.transform(images).shape == (len(images), TINY_DIM)  # transform still works


# -- fine-tuning on views ---------------------------------------------------------------------
def _task(seed=0, n_classes=3, shots=8, d=16, n_views=2, noise=0.3):
    rng = np.random.RandomState(seed)
    centers = rng.normal(size=(n_classes, d))
    y = np.repeat(np.arange(n_classes), shots)
    X = normalize(centers[y] + rng.normal(size=(len(y), d)))
    views = normalize(
        (X[None] + noise * rng.normal(size=(n_views, *X.shape))).reshape(-1, d)
    ).reshape(n_views, *X.shape)
    return X, y, views


def test_views_identical_to_the_features_change_nothing():
    """The views only replace the queries: views equal to X give exactly X's training."""
    X, y, _ = _task()
    kw = dict(alpha=1.0, beta=5.5, epochs=4, lr=1e-2, batch_size=8, device="cpu", random_state=0)
    plain = fine_tune_keys(X, y, 3, None, **kw)
    same = fine_tune_keys(X, y, 3, None, views=np.stack([X, X]), **kw)
    np.testing.assert_array_equal(plain.keys, same.keys)
    other = fine_tune_keys(X, y, 3, None, views=_task()[2], **kw)
    assert np.abs(other.keys - plain.keys).max() > 1e-4


def test_epoch_e_uses_view_e_mod_n_views():
    """One epoch on views[0] equals one epoch with views=[views[0], anything]."""
    X, y, views = _task()
    kw = dict(alpha=1.0, beta=5.5, epochs=1, lr=1e-2, batch_size=8, device="cpu", random_state=0)
    a = fine_tune_keys(X, y, 3, None, views=views[:1], **kw)
    b = fine_tune_keys(X, y, 3, None, views=views, **kw)
    np.testing.assert_array_equal(a.keys, b.keys)
    kw["epochs"] = 2  # epoch 2 uses view 1: differs from training on view 0 twice
    c = fine_tune_keys(X, y, 3, None, views=views, **kw)
    d = fine_tune_keys(X, y, 3, None, views=views[[0, 0]], **kw)
    assert np.abs(c.keys - d.keys).max() > 1e-5


def test_fine_tune_keys_rejects_views_of_another_shape():
    X, y, views = _task()
    with pytest.raises(ValueError, match=r"\(n_views, 24, 16\).*\(2, 24, 8\)"):
        fine_tune_keys(
            X,
            y,
            3,
            None,
            alpha=1.0,
            beta=5.5,
            epochs=1,
            lr=1e-2,
            batch_size=8,
            views=views[:, :, :8],
        )


def test_classifier_trains_on_views_and_predicts_on_one_block():
    X, y, views = _task(n_views=3)
    wide = np.hstack([X, *views])
    kw = dict(clip_model=None, fine_tune=True, lr=1e-2, random_state=0)
    on_views = TipAdapterClassifier(train_views=3, **kw).fit(wide, y)
    clean = TipAdapterClassifier(**kw).fit(X, y)
    assert on_views.n_features_in_ == X.shape[1]
    assert on_views.cache_keys_.shape == X.shape
    assert np.abs(on_views.cache_keys_ - clean.cache_keys_).max() > 1e-4
    assert on_views.loss_curve_[-1] < on_views.loss_curve_[0]  # it trains
    assert on_views.predict(X).shape == (len(y),)
    with pytest.raises(ValueError, match="expecting 16 features"):
        on_views.predict(wide)
    # without fine-tuning the views are ignored: the cache is the first block
    free = TipAdapterClassifier(clip_model=None, train_views=3).fit(wide, y)
    np.testing.assert_allclose(free.cache_keys_, X)
    assert free.n_features_in_ == X.shape[1]


def test_width_mismatches_name_both_widths():
    X, y, views = _task(n_views=2)
    wide = np.hstack([X, *views])  # 3 blocks of 16 = 48 columns
    text = normalize(np.random.RandomState(1).normal(size=(3, 16)))
    with pytest.raises(ValueError, match=r"train_views=4.*48 columns, not a multiple of 5"):
        TipAdapterClassifier(clip_model=None, train_views=4).fit(wide, y)
    with pytest.raises(ValueError, match=r"48 columns = 2 x 24.*dimension 16"):
        # 48 = 2 x 24 splits evenly: only the text embeddings' width tells it is wrong
        TipAdapterClassifier(clip_model=None, text_features=text, train_views=1).fit(wide, y)
    with pytest.raises(ValueError, match=r"48 features.*train_views=2"):
        TipAdapterClassifier(clip_model=None, text_features=text).fit(wide, y)


def test_classifier_cv_accepts_views():
    X, y, views = _task(n_views=2)
    wide = np.hstack([X, *views])
    kw = dict(
        clip_model=None, fine_tune=True, lr=1e-2, cv=2, random_state=0, alphas=[1.0], betas=[5.5]
    )
    on_views = TipAdapterClassifierCV(train_views=2, **kw).fit(wide, y)
    clean = TipAdapterClassifierCV(**kw).fit(X, y)
    assert on_views.n_features_in_ == X.shape[1]
    assert np.abs(on_views.cache_keys_ - clean.cache_keys_).max() > 1e-4
    assert on_views.predict(X).shape == (len(y),)


# -- in a Pipeline ----------------------------------------------------------------------------
def test_pipeline_grid_search_on_views_encodes_nothing_new(tiny_clip_path, image_folder):
    paths, labels = image_folder
    E = 2
    pipe = make_pipeline(
        _featurizer(tiny_clip_path, train_views=E, random_state=0),
        TipAdapterClassifier(
            clip_model=tiny_clip_path,
            device="cpu",
            fine_tune=True,
            train_views=E,
            epochs=3,
            random_state=0,
        ),
    )
    CLIPFeaturizer.cache_clear()
    pipe.fit(paths, labels)
    encoded = CLIPFeaturizer.cache_info().misses
    assert encoded == (1 + E) * len(paths)
    assert pipe.predict(paths[:3]).shape == (3,)
    search = GridSearchCV(pipe, {"tipadapterclassifier__alpha": [0.5, 2.0]}, cv=2).fit(
        paths, labels
    )
    assert CLIPFeaturizer.cache_info().misses == encoded  # every fold's views were cached
    assert search.best_estimator_[-1].n_features_in_ == TINY_DIM
