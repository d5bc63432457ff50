"""Review of issue 20: inputs whose pixels did not follow the documented rules (16-bit
PNG transparency, PIL "I" images, bool and uint16 arrays), and the other input checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skclip._images import ImageLoadError, open_image


def _pixel(item):
    return tuple(int(v) for v in np.asarray(open_image(item))[0, 0])


def test_4_sixteen_bit_png_with_trns_keeps_its_gray(tmp_path):
    arr = np.full((8, 8), 30000, dtype=np.uint16)
    arr[0, 1] = 12345  # the transparent colour
    path = tmp_path / "t.png"
    Image.fromarray(arr).save(path, transparency=12345)
    rgb = np.asarray(open_image(str(path)))
    assert tuple(rgb[0, 0]) == (117,) * 3  # 30000 / 65535 * 255; was white (255)
    assert tuple(rgb[0, 1]) == (255,) * 3  # transparent: composited on white


def test_5_mode_i_follows_the_16_bit_rule_not_its_own_range():
    small = Image.fromarray(np.full((8, 8), 100, dtype=np.int32))
    large = Image.fromarray(np.full((8, 8), 30000, dtype=np.int32))
    assert small.mode == large.mode == "I"
    assert _pixel(small) == (0,) * 3  # 100 / 65535 * 255; was 100 (divided by 255)
    assert _pixel(large) == (117,) * 3
    assert _pixel(Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16))) == (117,) * 3


def test_5_mode_i_outside_16_bits_is_refused():
    with pytest.raises(ImageLoadError, match=r"\[0, 65535\]"):
        open_image(Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)))


def test_6_bool_arrays_are_masks():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    rgb = np.asarray(open_image(mask))
    assert tuple(rgb[0, 0]) == (255,) * 3  # was 1: black
    assert tuple(rgb[1, 1]) == (0,) * 3
    assert _pixel(mask) == _pixel(Image.fromarray(mask))  # PIL mode "1"


def test_6_uint16_arrays_follow_the_16_bit_rule():
    arr = np.full((8, 8), 30000, dtype=np.uint16)
    assert _pixel(arr) == _pixel(Image.fromarray(arr)) == (117,) * 3  # was an error
    low = np.full((8, 8, 3), 200, dtype=np.uint16)
    assert _pixel(low) == (1,) * 3  # was 200: read as 8-bit


def _classes(root, names="abc"):
    for c in names:
        (root / c).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / c / "1.png")


def test_7_file_link_to_another_class_is_refused(tmp_path):
    import os

    from skclip.datasets import load_image_folder

    _classes(tmp_path)
    os.symlink(tmp_path / "b" / "1.png", tmp_path / "a" / "from_b.png")
    with pytest.raises(ValueError, match=r"from_b\.png.*two labels"):
        load_image_folder(tmp_path)  # was: the same image labelled a and b


def test_7_two_classes_linking_one_outside_file_are_refused(tmp_path):
    import os

    from skclip.datasets import load_image_folder

    root = tmp_path / "data"
    root.mkdir()
    _classes(root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "shared.png")
    os.symlink(tmp_path / "shared.png", root / "a" / "s.png")
    os.symlink(tmp_path / "shared.png", root / "c" / "s.png")
    with pytest.raises(ValueError, match="two labels"):
        load_image_folder(root)


def test_7_link_within_its_own_class_is_kept(tmp_path):
    import os

    from skclip.datasets import load_image_folder

    _classes(tmp_path)
    os.symlink(tmp_path / "a" / "1.png", tmp_path / "a" / "again.png")
    assert load_image_folder(tmp_path).labels.tolist() == ["a", "a", "b", "c"]


def test_7_dangling_class_folder_link_is_named(tmp_path):
    import os

    from skclip.datasets import load_image_folder

    _classes(tmp_path)
    os.symlink(tmp_path / "gone", tmp_path / "d")
    with pytest.warns(UserWarning, match=r"'.*/d' is a symbolic link .* does not exist"):
        data = load_image_folder(tmp_path)  # was: class d dropped without a word
    assert data.target_names.tolist() == ["a", "b", "c"]


@pytest.mark.parametrize("head", ["GDAClassifier", "TipAdapterClassifier", "APEClassifier"])
def test_14_all_zero_feature_rows_are_named_and_get_even_scores(head):
    import skclip
    from skclip import ZeroFeaturesWarning

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)) + np.repeat(np.eye(8)[:2] * 3, 20, axis=0)
    y = np.repeat([0, 1], 20)
    extra = {"n_features_to_select": 2} if head == "APEClassifier" else {}
    clf = getattr(skclip, head)(clip_model=None, **extra).fit(X + 1.0, y)  # GDA: a far origin
    queries = np.vstack([X[:2], np.zeros((1, 8))])
    with pytest.warns(ZeroFeaturesWarning, match=r"all zeros \(row 2\)"):
        proba = clf.predict_proba(queries)  # GDA before the fix: 1.0 for one class, silently
    np.testing.assert_allclose(proba[2], [0.5, 0.5], atol=1e-6)
    with pytest.warns(ZeroFeaturesWarning, match=r"all zeros \(row 40\)"):
        getattr(skclip, head)(clip_model=None, **extra).fit(
            np.vstack([X, np.zeros((1, 8))]), np.r_[y, 0]
        )


def test_11_skops_file_that_unpacks_to_too_much_is_refused_unread(tmp_path, monkeypatch):
    import zipfile

    skops_io = pytest.importorskip("skops.io")
    from skclip.cli import model_file as _model_file

    path = tmp_path / "bomb.skops"
    skops_io.dump({"a": np.zeros(8 * 2**20, np.uint8)}, path, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000  # 8 MiB of zeros in a few kB
    monkeypatch.setattr(_model_file, "MAX_UNPACKED_BYTES", 2**20, raising=False)

    def never(*args, **kwargs):
        raise AssertionError("the file was unpacked")

    monkeypatch.setattr(skops_io, "load", never)
    with pytest.raises(ValueError, match="unpacks to .*MAX_UNPACKED_BYTES"):
        _model_file.load_model_file(str(path))  # before: unpacked in full, then refused


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_13_16_bit_and_float_images_convert_with_small_temporaries(dtype, monkeypatch):
    import tracemalloc

    # blocks small against this test image, as they are against an image at the limit
    monkeypatch.setattr("skclip._images._BLOCK_PIXELS", 2**16, raising=False)

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65535, (1500, 1500)).astype(dtype)
    if dtype == np.float32:
        arr /= 65535
    img = Image.fromarray(arr)
    img.load()
    tracemalloc.start()
    try:
        open_image(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / arr.size < 12  # numpy's bytes per pixel; before the fix: 24
