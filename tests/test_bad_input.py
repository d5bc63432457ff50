"""Bad input: each case gives a clear error naming the item, or correct output.

The cases follow the matrix of issue 7; the closing note's table is this file.
"""

from __future__ import annotations

import os

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


def _heads():
    from skclip import APEClassifier, GDAClassifier, TipAdapterClassifierCV

    return {
        "tip": TipAdapterClassifier(clip_model=None),
        "tip-f": TipAdapterClassifier(clip_model=None, fine_tune=True, epochs=1),
        "tip-cv": TipAdapterClassifierCV(clip_model=None, cv=2),
        "gda": GDAClassifier(clip_model=None),
        "ape": APEClassifier(clip_model=None),
    }


@pytest.mark.parametrize("head", list(_heads()))
def test_i20_minor_one_class_is_refused_by_every_head(unit, head):
    """Issue 20, minor: Tip, GDA and Tip-F fitted a single class (and predicted it for
    everything) while APE refused; now all refuse it the same way, naming the class."""
    with pytest.raises(ValueError, match=r"needs samples of at least 2 classes.*one class: 'only'"):
        _heads()[head].fit(unit, ["only"] * 12)


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
    with pytest.raises(
        ValueError, match="X has 5 features, but TipAdapterClassifier is expecting 6"
    ):
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


# -- issue 20: inputs that still got through -----------------------------------------------------
_BATCH = r"""
import json, os, sys, threading
import numpy as np
from skclip import CLIPFeaturizer, ImageLoadError
import skclip._images as images

model, jobs = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
featurizers = {cache: CLIPFeaturizer(model=model, cache=cache, progress=False)
               for cache in (False, True)}
for feat in featurizers.values():
    feat.transform([np.zeros((8, 8, 3), np.uint8)])  # the model loads before any timing
results = {}

def run(mode, path):
    images.MAX_ASPECT_RATIO = None if mode == "no-aspect-limit" else 100.0
    try:
        featurizers[mode == "cache"].transform([path])
        results[f"{mode}={path}"] = "ENCODED"
    except ImageLoadError as exc:
        results[f"{mode}={path}"] = f"ERROR {exc}"
    except BaseException as exc:  # noqa: BLE001 - MemoryError, OverflowError... as they are
        results[f"{mode}={path}"] = f"{type(exc).__name__}: {exc}"

for mode, path in jobs:
    worker = threading.Thread(target=run, args=(mode, path), daemon=True)
    worker.start()
    worker.join(5)
    results.setdefault(f"{mode}={path}", "HANG (still reading after 5 s)")
print(json.dumps(results), flush=True)
os._exit(0)  # a worker may still be blocked in a read
"""


def _encode_each(model: str, jobs: list[str], gib: float = 3.0) -> dict[str, str]:
    """Encode each ``"mode=path"`` job in a fresh Python under an address-space limit of
    ``gib`` GiB, one at a time, each for at most 5 s: ``{job: "ENCODED" | "ERROR
    <message>" | "HANG ..." | "<exception>: ..."}``. Modes: "plain" (cache off),
    "no-aspect-limit" (cache off, ``MAX_ASPECT_RATIO = None``), "cache" (cache on). A
    memory blow-up fails there (MemoryError), a hang is reported instead of hanging."""
    import json
    import resource
    import subprocess
    import sys

    limit = int(gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-c", _BATCH, model, *jobs],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    """PNGs of 1,000,000 x 1 and 80,000,000 x 1 pixels (a few hundred bytes to kilobytes,
    under Pillow's pixel limit, but 32 million pixels wide once the short side is 32), a
    FIFO named pipe.jpg and zero.jpg -> /dev/zero, where the platform has them."""
    folder = tmp_path_factory.mktemp("hostile")
    files = {}
    for width in (1_000_000, 80_000_000):
        files[width] = folder / f"thin{width}.png"
        Image.new("L", (width, 1)).save(files[width])
    if hasattr(os, "mkfifo"):
        files["fifo"] = folder / "pipe.jpg"
        os.mkfifo(files["fifo"])
    if os.path.exists("/dev/zero"):
        files["device"] = folder / "zero.jpg"
        files["device"].symlink_to("/dev/zero")
    return files


@pytest.fixture(scope="module")
def encoded_each(tiny_clip_path, hostile_files):
    """What each hostile file gives with the cache off ("plain"), the 1,000,000 x 1 PNG
    without the aspect-ratio limit, and the FIFO and the device with the cache on (last:
    a read may stay blocked there), all in one process."""
    jobs = [f"plain={path}" for path in hostile_files.values()]
    jobs.append(f"no-aspect-limit={hostile_files[1_000_000]}")
    jobs += [f"cache={hostile_files[k]}" for k in ("fifo", "device") if k in hostile_files]
    return _encode_each(tiny_clip_path, jobs)


def _outcome(encoded_each, hostile_files, mode, key):
    if key not in hostile_files:
        pytest.skip(f"no {key} on this platform")
    return encoded_each[f"{mode}={hostile_files[key]}"]


@pytest.mark.parametrize("width", [1_000_000, 80_000_000])
def test_i20_1_thin_image_is_refused_before_decoding(encoded_each, hostile_files, width):
    """Issue 20, case 1: 7.4 GB and a MemoryError (1,000,000 x 1), or OverflowError
    (80,000,000 x 1), before; now the aspect-ratio limit names the file and its size."""
    out = _outcome(encoded_each, hostile_files, "plain", width)
    assert out.startswith("ERROR"), out
    assert f"thin{width}.png" in out and f"{width}x1 pixels" in out
    assert "aspect ratio" in out and "MAX_ASPECT_RATIO" in out


def test_i20_1_resized_size_is_bounded_without_the_aspect_limit(encoded_each, hostile_files):
    """With ``MAX_ASPECT_RATIO = None`` the resized size is still checked before PIL
    allocates it (against ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    out = _outcome(encoded_each, hostile_files, "no-aspect-limit", 1_000_000)
    assert out.startswith("ERROR"), out
    assert "thin1000000.png" in out and "resizing its 1000000x1 pixels" in out
    assert "MemoryError" not in out


def test_i20_1_images_within_the_limits_still_work(feat):
    wide = np.full((2, 200, 3), 90, np.uint8)  # 100:1 exactly: allowed
    assert np.isfinite(feat.transform([wide, wide.transpose(1, 0, 2)])).all()
    with pytest.raises(ImageLoadError, match=r"array input 0 .*201x2 pixels.*aspect ratio"):
        feat.transform([np.full((2, 201, 3), 90, np.uint8)])


def test_i20_2_fifo_is_refused_not_waited_on(encoded_each, hostile_files):
    """Issue 20, case 2: reading a FIFO waited for a writer forever."""
    out = _outcome(encoded_each, hostile_files, "plain", "fifo")
    assert out.startswith("ERROR") and "pipe.jpg" in out and "FIFO" in out, out


def test_i20_2_fifo_is_refused_not_waited_on_with_the_cache(encoded_each, hostile_files):
    out = _outcome(encoded_each, hostile_files, "cache", "fifo")
    assert out.startswith("ERROR") and "FIFO" in out, out


def test_i20_2_device_is_refused_unread(encoded_each, hostile_files):
    """Issue 20, case 2: ``zero.jpg -> /dev/zero`` was read without bound."""
    out = _outcome(encoded_each, hostile_files, "plain", "device")
    assert out.startswith("ERROR") and "zero.jpg" in out and "character device" in out, out


def test_i20_2_device_is_refused_unread_with_the_cache(encoded_each, hostile_files):
    out = _outcome(encoded_each, hostile_files, "cache", "device")
    assert out.startswith("ERROR") and "character device" in out, out


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


def test_i20_2_proc_files_are_refused(feat, tmp_path):
    """/proc files say size 0 and have contents: not image files (nor bounded in size)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc")
    link = tmp_path / "status.png"
    link.symlink_to("/proc/self/status")
    with pytest.raises(ImageLoadError, match=r"status.png.*virtual file system"):
        feat.transform([link])


def test_i20_2_byte_cap_names_the_file_and_the_way_out(feat, tmp_path, rgb, monkeypatch):
    """At most ``image_byte_cap()`` bytes are read: 8 per pixel of Pillow's limit (plus
    room for metadata); raising ``PIL.Image.MAX_IMAGE_PIXELS`` raises it."""
    from PIL.PngImagePlugin import PngInfo

    import skclip._images as images

    info = PngInfo()
    info.add_text("comment", "x" * 50_000)  # 40x30 pixels, over 50 kB of metadata
    path = tmp_path / "fat.png"
    rgb.save(path, pnginfo=info)
    monkeypatch.setattr(images, "HEADER_BYTES", 0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # a cap of 16,000 bytes
    assert images.image_byte_cap() == 16_000
    with pytest.raises(ImageLoadError, match=r"fat.png.*16000-byte cap.*MAX_IMAGE_PIXELS"):
        feat.transform([path])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # raised: a cap of 160,000 bytes
    np.testing.assert_allclose(feat.transform([path]), feat.transform([rgb]), atol=1e-6)


def test_i20_2_read_image_bytes(tmp_path, fifo):
    from skclip._images import read_image_bytes

    (tmp_path / "a.png").write_bytes(b"bytes")
    assert read_image_bytes(tmp_path / "a.png") == b"bytes"
    with pytest.raises(ImageLoadError, match=r"pipe.jpg' \(input 7\) is a FIFO"):
        read_image_bytes(fifo, 7)
    with pytest.raises(ImageLoadError, match="not found.*gone.png"):
        read_image_bytes(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match="got a directory"):
        read_image_bytes(tmp_path)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ImageLoadError, match=r"Cannot read image .*loop.png.*symbolic links"):
        read_image_bytes(tmp_path / "loop.png")


# Issue 20, case 3: one rule for every float form: [0, 1] is scaled to [0, 255].
@pytest.fixture
def gray_unit():
    """Gray values in [0, 1] (float32) and the same image as uint8."""
    unit = np.random.default_rng(0).uniform(0, 1, (30, 40)).astype(np.float32)
    return unit, np.round(unit.astype(np.float64) * 255).astype(np.uint8)


def test_i20_3_float_pil_image_in_unit_range_is_scaled(feat, gray_unit):
    unit, as_uint8 = gray_unit
    X = feat.transform([Image.fromarray(unit, mode="F"), as_uint8, np.zeros_like(as_uint8)])
    np.testing.assert_allclose(X[0], X[1], atol=1e-6)  # was the black image's embedding
    assert not np.allclose(X[0], X[2], atol=1e-3)


def test_i20_3_float_tiff_in_unit_range_is_scaled(feat, gray_unit, tmp_path):
    unit, as_uint8 = gray_unit
    path = tmp_path / "unit.tif"
    Image.fromarray(unit, mode="F").save(path)
    with Image.open(path) as img:
        assert img.mode == "F"
    np.testing.assert_allclose(feat.transform([path]), feat.transform([as_uint8]), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_i20_3_float_arrays_in_unit_range_are_scaled(feat, gray_unit, dtype):
    unit, as_uint8 = gray_unit
    expected = np.round(unit.astype(dtype).astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_allclose(
        feat.transform([unit.astype(dtype)]), feat.transform([expected]), atol=1e-6
    )


def test_i20_3_floats_outside_unit_range_are_refused_in_every_form(feat, gray_unit, tmp_path):
    unit, _ = gray_unit
    wide = unit * 255  # a [0, 255] image stored as floats: would be clipped to white
    path = tmp_path / "wide.tif"
    Image.fromarray(wide, mode="F").save(path)
    with pytest.raises(ImageLoadError, match=r"wide.tif.*\[0, 1\].*values from 0"):
        feat.transform([path])
    with pytest.raises(ImageLoadError, match=r"Image input 0.*float images.*\[0, 1\]"):
        feat.transform([Image.fromarray(wide, mode="F")])
    with pytest.raises(ImageLoadError, match=r"array input 0.*float arrays.*\[0, 1\]"):
        feat.transform([wide])
    nan = unit.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ImageLoadError, match="NaN or infinite"):
        feat.transform([Image.fromarray(nan, mode="F")])


@pytest.mark.parametrize(
    "item",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0, 5), np.uint8),
        np.zeros((5, 0), np.float32),
        Image.new("RGB", (0, 0)),
    ],
    ids=["0x0-array", "0xN-array", "Nx0-float-array", "0x0-PIL"],
)
def test_i20_minor_images_without_pixels(feat, item):
    """Issue 20, minor: ZeroDivisionError before."""
    with pytest.raises(ImageLoadError, match=r"input 0.*: it has \d+x\d+ pixels, none to encode"):
        feat.transform([item])
