"""Bad input: each case gives a clear error naming the item, or correct output.

The cases follow the matrix of issue 7; the closing note's table is this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_DIM, make_image
from PIL import Image

from skclip import CLIPFeaturizer, ImageLoadError, ImageLoadWarning, TipAdapterClassifier


@pytest.fixture
def feat(tiny_clip_path):
    return CLIPFeaturizer(model=tiny_clip_path, cache=False)


@pytest.fixture
def rgb():
    return make_image(np.random.default_rng(0), (40, 30))


# -- images that must fail, each named in the error ---------------------------------------
def _truncated_jpeg(path, rgb):
    rgb.save(path, quality=90)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


BAD_FILES = {
    "truncated.jpg": _truncated_jpeg,
    "empty.jpg": lambda path, rgb: path.write_bytes(b""),
    "text.jpg": lambda path, rgb: path.write_text("hello, not a JPEG"),
    "a_folder.jpg": lambda path, rgb: path.mkdir(),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_named(feat, tmp_path, rgb, name):
    path = tmp_path / name
    BAD_FILES[name](path, rgb)
    with pytest.raises(ImageLoadError, match=name):
        feat.transform([path])


def test_missing_path_is_named(feat, tmp_path):
    with pytest.raises(ImageLoadError, match="not found.*gone.png"):
        feat.transform([tmp_path / "gone.png"])


def test_every_bad_file_is_listed_and_warn_gives_nan_rows(feat, tmp_path, rgb):
    good = tmp_path / "good.png"
    rgb.save(good)
    bad = []
    for name, make in BAD_FILES.items():
        bad.append(tmp_path / name)
        make(bad[-1], rgb)
    items = [good, *bad, good]
    with pytest.raises(ImageLoadError) as info:
        feat.transform(items)
    msg = str(info.value)
    assert msg.startswith(f"{len(bad)} of {len(items)} images could not be used")
    assert all(name in msg for name in BAD_FILES)
    with pytest.warns(ImageLoadWarning, match=f"{len(bad)} of {len(items)}") as record:
        X = feat.set_params(on_error="warn").transform(items)
    assert len(record) == 1  # one warning listing them all
    assert sorted(record[0].message.errors) == list(range(1, len(items) - 1))
    assert all(str(bad[i - 1]) in m for i, m in record[0].message.errors.items())
    assert "object at 0x" not in msg  # PIL's reprs of in-memory file copies are not shown
    assert np.isnan(X[1:-1]).all() and np.isfinite(X[[0, -1]]).all()
    np.testing.assert_allclose(X[0], feat.transform([rgb])[0], atol=1e-6)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, on open
def test_decompression_bomb_guard(feat, tmp_path, rgb, monkeypatch):
    path = tmp_path / "huge.png"
    rgb.save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)  # as a 12000x12000 file would
    with pytest.raises(ImageLoadError, match=r"huge.png.*40x30 pixels.*MAX_IMAGE_PIXELS"):
        feat.transform([path])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # trusted: the documented way out
    assert np.isfinite(feat.transform([path])).all()


# -- unusual images that must work ----------------------------------------------------------
def test_cmyk_jpeg_equals_its_rgb_conversion(feat, tmp_path, rgb):
    path = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(path, quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        expected = feat.transform([img.convert("RGB")])
    np.testing.assert_allclose(feat.transform([path]), expected, atol=1e-6)


def test_16_bit_png_is_scaled_not_clipped(feat, tmp_path, rgb):
    gray8 = np.asarray(rgb.convert("L"))
    path = tmp_path / "deep.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(path)  # 16-bit: 0..65535
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    np.testing.assert_allclose(feat.transform([path]), feat.transform([gray8]), atol=1e-5)


def test_palette_with_transparency_and_la_composite_on_white(feat, tmp_path, rgb):
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    expected = Image.alpha_composite(
        Image.new("RGBA", pal.size, (255, 255, 255, 255)), pal.convert("RGBA")
    ).convert("RGB")
    np.testing.assert_allclose(feat.transform([path]), feat.transform([expected]), atol=1e-5)
    la = rgb.convert("LA")
    la_expected = Image.alpha_composite(
        Image.new("RGBA", la.size, (255, 255, 255, 255)), la.convert("RGBA")
    ).convert("RGB")
    np.testing.assert_allclose(feat.transform([la]), feat.transform([la_expected]), atol=1e-5)


def test_animated_gif_uses_first_frame(feat, tmp_path):
    frames = [make_image(np.random.default_rng(i), (32, 32)).convert("P") for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as img:
        assert getattr(img, "n_frames", 1) == 3
        first = img.convert("RGB")
    np.testing.assert_allclose(feat.transform([path]), feat.transform([first]), atol=1e-5)


def test_one_pixel_image(feat):
    X = feat.transform([np.full((1, 1, 3), 200, np.uint8)])
    assert X.shape == (1, TINY_DIM) and np.isfinite(X).all()


# -- labels and features ---------------------------------------------------------------------
@pytest.fixture
def unit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 6))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_one_class_predicts_it(unit):
    clf = TipAdapterClassifier(clip_model=None).fit(unit, ["only"] * 12)
    assert (clf.predict(unit) == "only").all()
    np.testing.assert_allclose(clf.predict_proba(unit), 1.0)


def test_class_with_a_single_sample(unit):
    y = ["a"] * 11 + ["b"]
    # With a sharp kernel the one "b" key wins for itself; at beta=5.5, eleven distant "a"
    # keys may together outvote it (a soft vote, not nearest neighbour).
    assert TipAdapterClassifier(clip_model=None, beta=50).fit(unit, y).predict(unit[-1:])[0] == "b"
    tipf = TipAdapterClassifier(clip_model=None, fine_tune=True, epochs=2, random_state=0)
    assert np.isfinite(tipf.fit(unit, y).cache_keys_).all()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda X, y: (X, np.array(["a", 1] * 6, dtype=object)), "Mix of label input types"),
        (lambda X, y: (np.where(np.eye(12, 6) > 0, np.nan, X), y), "NaN"),
        (lambda X, y: (np.where(np.eye(12, 6) > 0, np.inf, X), y), "infinity"),
        (lambda X, y: (X[:0], y[:0]), "0 sample"),
    ],
    ids=["mixed-labels", "nan", "inf", "empty"],
)
def test_bad_features_and_labels(unit, mutate, match):
    X, y = mutate(unit, np.array(["a", "b"] * 6))
    with pytest.raises(ValueError, match=match):
        TipAdapterClassifier(clip_model=None).fit(X, y)


def test_other_width_at_predict(unit):
    clf = TipAdapterClassifier(clip_model=None).fit(unit, ["a", "b"] * 6)
    with pytest.raises(ValueError, match="X has 5 features, but TipAdapterClassifier is expecting 6"):
        clf.predict(unit[:, :5])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda_fails_at_fit(unit):
    with pytest.raises(ValueError, match="CUDA is not available"):
        TipAdapterClassifier(clip_model=None, device="cuda").fit(unit, ["a", "b"] * 6)


# -- in-memory images: the cache key is their content, a bad one is handled per item ------
def test_palette_is_part_of_the_cache_key(tiny_clip_path, rgb):
    """Same palette indices, other palette: another image, another embedding."""
    feat = CLIPFeaturizer(model=tiny_clip_path)  # cache on: the digest decides
    CLIPFeaturizer.cache_clear()
    indices = np.asarray(rgb.convert("P"))
    warm = Image.fromarray(indices, mode="P")
    warm.putpalette([v for k in range(256) for v in (k, 255 - k, 40)])
    cold = Image.fromarray(indices, mode="P")
    cold.putpalette([v for k in range(256) for v in (20, k, 255 - k)])
    X = np.vstack([feat.transform([warm]), feat.transform([cold])])  # one call each
    as_rgb = feat.transform([warm.convert("RGB"), cold.convert("RGB")])
    np.testing.assert_allclose(X, as_rgb, atol=1e-5)
    assert not np.allclose(X[0], X[1], atol=1e-3)
    # transparency changes the RGB conversion (composited on white), so the key too
    see_through = warm.copy()
    see_through.info["transparency"] = int(indices[0, 0])
    X2 = feat.transform([see_through])
    expected = Image.alpha_composite(
        Image.new("RGBA", warm.size, (255, 255, 255, 255)), see_through.convert("RGBA")
    ).convert("RGB")
    np.testing.assert_allclose(X2, feat.transform([expected]), atol=1e-5)
    assert not np.allclose(X2[0], X[0], atol=1e-3)
    CLIPFeaturizer.cache_clear()


@pytest.fixture
def truncated_lazy_image(tmp_path, rgb):
    """A PIL image opened lazily from a truncated file: it fails when its pixels are read."""
    path = tmp_path / "cut.png"
    rgb.save(path)
    path.write_bytes(path.read_bytes()[:-200])
    img = Image.open(path)  # lazy: only the header was read
    yield img
    img.close()


def test_truncated_lazy_pil_image_is_one_bad_item(tiny_clip_path, rgb, truncated_lazy_image):
    feat = CLIPFeaturizer(model=tiny_clip_path, on_error="warn")  # cache on: images are hashed
    items = [rgb, truncated_lazy_image, np.asarray(rgb)]
    with pytest.warns(ImageLoadWarning, match="1 of 3 images") as record:
        X = feat.transform(items)
    assert len(record) == 1 and "input 1" in str(record[0].message)
    assert np.isnan(X[1]).all() and np.isfinite(X[[0, 2]]).all()
    np.testing.assert_allclose(X[0], X[2], atol=1e-6)
    with pytest.raises(ImageLoadError, match=r"1 of 3 images(.|\n)*PngImageFile input 1"):
        feat.set_params(on_error="raise").transform(items)
