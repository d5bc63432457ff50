"""CLIPFeaturizer: exactness against transformers, input types, order, augmentation, sklearn API."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_DIM, TINY_IMAGE_SIZE, make_image
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer
from skclip._compat import pooled_embeddings
from skclip._images import CLIPPreprocessor, ImageLoadError, open_image
from skclip.backbones.loading import load_backbone as load_clip


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return load_clip(tiny_clip_path, "cpu", "float32")


@pytest.fixture(scope="module")
def hf_processor(tiny_clip_path):
    from skclip.backbones.loading import _pil_image_processor_class

    return _pil_image_processor_class().from_pretrained(tiny_clip_path)


def _reference_embeddings(clip, processor, images):
    """What transformers itself gives: processor pixels -> get_image_features -> L2 norm."""
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        emb = pooled_embeddings(clip.model.get_image_features(pixel_values=pixels))
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


@pytest.mark.parametrize("size", [(48, 40), (40, 48), (32, 32), (100, 33), (20, 25), (500, 375)])
def test_preprocessing_equals_clip_image_processor(clip, hf_processor, size):
    img = make_image(np.random.default_rng(sum(size)), size)
    prep = CLIPPreprocessor(clip.image_config)
    cropped = prep(img)
    assert cropped.dtype == np.uint8
    ours = prep.normalize(torch.from_numpy(cropped[None]))[0].numpy()
    theirs = hf_processor(images=[img], return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_embeddings_equal_get_image_features(tiny_clip_path, clip, hf_processor):
    rng = np.random.default_rng(1)
    images = [
        make_image(rng, (int(rng.integers(30, 90)), int(rng.integers(30, 90)))) for _ in range(7)
    ]
    X = CLIPFeaturizer(model=tiny_clip_path, device="cpu", cache=False).transform(images)
    assert X.dtype == np.float32 and X.shape == (7, TINY_DIM)
    np.testing.assert_allclose(X, _reference_embeddings(clip, hf_processor, images), atol=1e-5)


def test_normalize_false_gives_raw_projection(tiny_clip_path, clip, hf_processor):
    images = [make_image(np.random.default_rng(i)) for i in range(3)]
    X = CLIPFeaturizer(model=tiny_clip_path, normalize=False, cache=False).transform(images)
    pixels = hf_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        raw = pooled_embeddings(clip.model.get_image_features(pixel_values=pixels)).numpy()
    np.testing.assert_allclose(X, raw, atol=1e-5)
    assert not np.allclose(np.linalg.norm(X, axis=1), 1.0)


def test_batch_size_and_threads_invariance_and_order(tiny_clip_path):
    images = [make_image(np.random.default_rng(i)) for i in range(11)]
    ref = CLIPFeaturizer(model=tiny_clip_path, batch_size=32, n_jobs=1, cache=False).transform(
        images
    )
    for batch_size, n_jobs in [(1, 1), (3, 2), (4, 4), (11, None)]:
        X = CLIPFeaturizer(
            model=tiny_clip_path, batch_size=batch_size, n_jobs=n_jobs, cache=False
        ).transform(images)
        np.testing.assert_allclose(X, ref, atol=1e-5)
    # order preserved: reversing the input reverses the output rows
    X_rev = CLIPFeaturizer(model=tiny_clip_path, batch_size=4, cache=False).transform(images[::-1])
    np.testing.assert_allclose(X_rev, ref[::-1], atol=1e-5)
    assert not np.allclose(ref[0], ref[1])


def test_input_types_agree(tiny_clip_path, tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    pil = [make_image(rng, (50, 40)) for _ in range(3)]
    arrays = [np.asarray(im) for im in pil]
    paths = []
    for i, im in enumerate(pil):
        paths.append(tmp_path / f"im{i}.png")  # lossless, so pixels match exactly
        im.save(paths[-1])
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False)
    ref = feat.transform(pil)
    variants = {
        "arrays": arrays,
        "stack": np.stack(arrays),
        "paths": paths,
        "str paths": [str(p) for p in paths],
        "object array": np.array([str(p) for p in paths], dtype=object),
        "str array": np.array([str(p) for p in paths]),
        "series": pd.Series([str(p) for p in paths]),
        "dataframe": pd.DataFrame({"image": [str(p) for p in paths]}),
        "tuple": tuple(pil),
    }
    for name, X in variants.items():
        np.testing.assert_allclose(feat.transform(X), ref, atol=1e-5, err_msg=name)


def test_grayscale_rgba_palette_and_float_arrays(tiny_clip_path):
    rng = np.random.default_rng(3)
    rgb = make_image(rng, (40, 40))
    gray = rgb.convert("L")
    feat = CLIPFeaturizer(model=tiny_clip_path)
    # grayscale: PIL "L", a 2-D array and an HxWx1 array all equal the RGB replication
    gray_rgb = Image.merge("RGB", [gray] * 3)
    X = feat.transform([gray, np.asarray(gray), np.asarray(gray)[..., None], gray_rgb])
    np.testing.assert_allclose(X[:3], np.repeat(X[3:], 3, axis=0), atol=1e-5)
    # RGBA: transparent pixels become white, opaque pixels keep their colour
    rgba = np.dstack([np.asarray(rgb), np.full((40, 40), 255, np.uint8)])
    rgba[:20, :, 3] = 0
    expected = np.asarray(rgb).copy()
    expected[:20] = 255
    X = feat.transform([rgba, Image.fromarray(rgba), expected])
    np.testing.assert_allclose(X[0], X[2], atol=1e-5)
    np.testing.assert_allclose(X[1], X[2], atol=1e-5)
    # palette image
    pal = rgb.convert("P")
    np.testing.assert_allclose(
        feat.transform([pal]), feat.transform([pal.convert("RGB")]), atol=1e-5
    )
    # float arrays in [0, 1] equal their uint8 version
    arr = np.asarray(rgb)
    np.testing.assert_allclose(feat.transform([arr / 255.0]), feat.transform([arr]), atol=1e-5)


def test_exif_orientation_is_applied(tiny_clip_path, tmp_path):
    rng = np.random.default_rng(4)
    upright = make_image(rng, (60, 36))
    # Store the image rotated, with EXIF orientation 6 ("rotate 90 CW to display").
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif.tobytes())
    loaded = open_image(path)
    assert loaded.size == upright.size
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(upright))
    feat = CLIPFeaturizer(model=tiny_clip_path)
    np.testing.assert_allclose(feat.transform([path]), feat.transform([upright]), atol=1e-5)


def test_augment_fit_transform_is_mean_of_views_and_seeded(tiny_clip_path):
    images = [make_image(np.random.default_rng(i), (60, 45)) for i in range(5)]
    feat = CLIPFeaturizer(
        model=tiny_clip_path, augment=4, random_state=0, batch_size=2, cache=False
    )
    A = feat.fit_transform(images)
    clean = feat.transform(images)
    assert A.shape == clean.shape
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(A, clean, atol=1e-4)  # views differ from the clean crop
    # same seed -> same keys, whatever the batch size or thread count
    B = CLIPFeaturizer(
        model=tiny_clip_path, augment=4, random_state=0, batch_size=5, n_jobs=1, cache=False
    ).fit_transform(images)
    np.testing.assert_allclose(A, B, atol=1e-6)
    # an image's views depend on its content, not its position (folds get the same keys)
    D = CLIPFeaturizer(model=tiny_clip_path, augment=4, random_state=0, cache=False).fit_transform(
        images[::-1]
    )
    np.testing.assert_allclose(D, A[::-1], atol=1e-6)
    C = CLIPFeaturizer(model=tiny_clip_path, augment=4, random_state=1, cache=False).fit_transform(
        images
    )
    assert not np.allclose(A, C, atol=1e-4)
    # augment=0: fit_transform == transform
    np.testing.assert_allclose(
        CLIPFeaturizer(model=tiny_clip_path).fit_transform(images), clean, atol=1e-6
    )


def test_pipeline_with_logistic_regression(tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [("clip", CLIPFeaturizer(model=tiny_clip_path)), ("lr", LogisticRegression(C=100))]
    )
    pipe.fit(paths, labels)
    pred = pipe.predict(paths)
    assert pred.shape == labels.shape
    assert set(pred) <= set(labels)
    assert pipe.score(paths, labels) > 0.8


def test_sklearn_api(tiny_clip_path):
    feat = CLIPFeaturizer(model=tiny_clip_path, batch_size=4)
    assert clone(feat).get_params() == feat.get_params()
    images = [make_image(np.random.default_rng(i)) for i in range(3)]
    X = feat.fit(images).transform(images)
    restored = pickle.loads(pickle.dumps(feat))
    assert len(pickle.dumps(feat)) < 2000  # parameters only, never weights
    np.testing.assert_allclose(restored.transform(images), X, atol=1e-6)
    names = feat.get_feature_names_out()
    assert list(names[:2]) == ["clipfeaturizer0", "clipfeaturizer1"] and len(names) == TINY_DIM


def test_set_output_pandas(tiny_clip_path):
    pd = pytest.importorskip("pandas")
    images = pd.DataFrame(
        {"img": [np.asarray(make_image(np.random.default_rng(i))) for i in range(3)]},
        index=["a", "b", "c"],
    )
    out = CLIPFeaturizer(model=tiny_clip_path).set_output(transform="pandas").fit_transform(images)
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == ["a", "b", "c"] and out.shape == (3, TINY_DIM)


@pytest.mark.parametrize(
    "X, match",
    [
        ("just/one/path.jpg", "wrap it in a list"),
        ([], "0 images"),
        (np.zeros((4, 5)), "numeric array of shape"),
        ([object()], "Unsupported input type"),
        ([np.zeros((5, 5, 2), np.uint8)], "HxW"),
        ([np.full((5, 5), 300)], r"\[0, 255\]"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny_clip_path, X, match):
    with pytest.raises(ValueError, match=match):
        CLIPFeaturizer(model=tiny_clip_path).transform(X)


def test_bad_files_are_all_named(tiny_clip_path, tmp_path):
    good = tmp_path / "good.png"
    make_image(np.random.default_rng(0)).save(good)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError) as info:
        CLIPFeaturizer(model=tiny_clip_path, batch_size=1).transform([good, text, good, missing])
    msg = str(info.value)
    assert "2 of 4 images" in msg and "notes.jpg" in msg and "missing.jpg" in msg
    assert "good.png" not in msg


def test_invalid_parameters(tiny_clip_path):
    images = [make_image(np.random.default_rng(0))]
    with pytest.raises(ValueError, match="batch_size"):
        CLIPFeaturizer(model=tiny_clip_path, batch_size=0).fit(images)
    with pytest.raises(ValueError, match="n_jobs"):
        CLIPFeaturizer(model=tiny_clip_path, n_jobs=0).fit(images)
    with pytest.raises(ValueError, match="augment"):
        CLIPFeaturizer(model=tiny_clip_path, augment=-1).fit(images)
    with pytest.raises(ValueError, match="Unknown device"):
        CLIPFeaturizer(model=tiny_clip_path, device="tpu").fit(images)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            CLIPFeaturizer(model=tiny_clip_path, device="cuda").fit(images)


def test_progress_bar_can_be_forced(tiny_clip_path, capsys):
    images = [make_image(np.random.default_rng(i)) for i in range(3)]
    CLIPFeaturizer(model=tiny_clip_path, progress=True, batch_size=1).transform(images)
    assert "3/3" in capsys.readouterr().err
    CLIPFeaturizer(model=tiny_clip_path, progress=False, batch_size=1).transform(images)
    assert capsys.readouterr().err == ""


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.cuda
def test_cuda_fp16_matches_cpu(tiny_clip_path):
    images = [make_image(np.random.default_rng(i)) for i in range(9)]
    cpu = CLIPFeaturizer(model=tiny_clip_path, device="cpu").transform(images)
    feat = CLIPFeaturizer(model=tiny_clip_path, device="cuda", batch_size=4)
    gpu = feat.transform(images)
    assert load_clip(tiny_clip_path, "cuda", "auto").dtype == torch.float16
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)


@cuda
@pytest.mark.cuda
def test_cuda_float32_matches_cpu_closely(tiny_clip_path):
    images = [make_image(np.random.default_rng(i)) for i in range(5)]
    cpu = CLIPFeaturizer(model=tiny_clip_path, device="cpu").transform(images)
    gpu = CLIPFeaturizer(model=tiny_clip_path, device="cuda", dtype="float32").transform(images)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_path_objects_are_accepted(tiny_clip_path, tmp_path):
    p = Path(tmp_path) / "x.png"
    make_image(np.random.default_rng(0)).save(p)
    assert CLIPFeaturizer(model=tiny_clip_path).transform([p]).shape == (1, TINY_DIM)


def test_fit_transform_accepts_a_one_shot_iterable(tiny_clip_path):
    images = [make_image(np.random.default_rng(i)) for i in range(3)]
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False)
    ref = feat.transform(images)
    np.testing.assert_allclose(feat.fit_transform(im for im in images), ref, atol=1e-6)
    np.testing.assert_allclose(feat.transform(iter(images)), ref, atol=1e-6)
    augmented = CLIPFeaturizer(model=tiny_clip_path, augment=2, random_state=0, cache=False)
    np.testing.assert_allclose(
        augmented.fit_transform(im for im in images), augmented.fit_transform(images), atol=1e-6
    )


def test_parameters_are_keyword_only(tiny_clip_path):
    with pytest.raises(TypeError):
        CLIPFeaturizer(tiny_clip_path)


def test_forward_accepts_a_plain_tensor_as_transformers_4_returns(
    tiny_clip_path, clip, monkeypatch
):
    """transformers 4.x returns a Tensor from get_image_features, 5.x an output object."""
    images = [make_image(np.random.default_rng(i)) for i in range(3)]
    ref = CLIPFeaturizer(model=tiny_clip_path, cache=False).transform(images)
    original = clip.model.get_image_features

    def as_in_transformers_4(pixel_values, **kwargs):
        return pooled_embeddings(original(pixel_values=pixel_values, **kwargs))

    monkeypatch.setattr(clip.model, "get_image_features", as_in_transformers_4)
    X = CLIPFeaturizer(
        model=tiny_clip_path, device="cpu", dtype="float32", runtime="torch", cache=False
    )
    np.testing.assert_allclose(X.transform(images), ref, atol=1e-6)


def test_augmented_key_is_normalized_mean_of_raw_views(tiny_clip_path, clip):
    """As the reference's build_cache_model: average the raw features of the views, then
    L2-normalize (not the mean of normalized views)."""
    from skclip.encoding import engine as _encode
    from skclip.encoding.cache import memory_digest

    images = [make_image(np.random.default_rng(i), (60, 45)) for i in range(3)]
    k = 4
    params = dict(model=tiny_clip_path, device="cpu", dtype="float32", augment=k, cache=False)
    keys = CLIPFeaturizer(random_state=0, **params).fit_transform(images)
    raw = CLIPFeaturizer(random_state=0, normalize=False, **params).fit_transform(images)

    seed = _encode.draw_seed(0, k)
    prep = CLIPPreprocessor(clip.image_config)
    views = []
    for img in images:
        rng = _encode.view_rng(seed, memory_digest(img))
        views += [prep.random_view(open_image(img), rng) for _ in range(k)]
    with torch.inference_mode():
        pixels = prep.normalize(torch.from_numpy(np.stack(views)))
        feats = pooled_embeddings(clip.model.get_image_features(pixel_values=pixels)).numpy()
    feats = feats.reshape(len(images), k, -1)
    mean_raw = feats.mean(axis=1)
    expected = mean_raw / np.linalg.norm(mean_raw, axis=1, keepdims=True)
    np.testing.assert_allclose(keys, expected, atol=1e-5)
    np.testing.assert_allclose(raw, mean_raw, atol=1e-5)  # normalize=False: the raw mean
    unit = feats / np.linalg.norm(feats, axis=2, keepdims=True)
    other_recipe = unit.mean(axis=1)
    other_recipe /= np.linalg.norm(other_recipe, axis=1, keepdims=True)
    # the check above tells the two recipes apart: they differ by 10x its tolerance here
    assert np.abs(other_recipe - expected).max() > 1e-4
