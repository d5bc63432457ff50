"""load_image_folder and few_shot_split: layout rules, determinism, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from skclip.datasets import load_image_folder
from skclip.model_selection import few_shot_split


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    _img(root / "scratch" / "b.jpg")
    _img(root / "scratch" / "a.JPG")  # extensions are case-insensitive
    _img(root / "ok" / "1.png")
    _img(root / "ok" / "batch2" / "2.png")  # nested: still class "ok"
    _img(root / "dent" / "x.webp")
    (root / "dent" / "notes.txt").write_text("not an image")
    (root / "dent" / ".DS_Store").write_bytes(b"\0")
    _img(root / "dent" / ".hidden" / "h.png")  # hidden folder: skipped
    _img(root / ".thumbnails" / "t.png")  # hidden class folder: skipped
    _img(root / "stray.png")  # directly in root: not in any class
    return root


def test_layout_and_order(tree):
    data = load_image_folder(tree)
    assert data.target_names.tolist() == ["dent", "ok", "scratch"]
    rel = [str(p)[len(str(tree)) + 1 :] for p in data.filenames]
    assert rel == ["dent/x.webp", "ok/1.png", "ok/batch2/2.png", "scratch/a.JPG", "scratch/b.jpg"]
    assert data.target.tolist() == [0, 1, 1, 2, 2]
    assert data.labels.tolist() == ["dent", "ok", "ok", "scratch", "scratch"]
    X, y = load_image_folder(tree, return_X_y=True)
    np.testing.assert_array_equal(X, data.filenames)
    np.testing.assert_array_equal(y, data.target)
    with pytest.raises(
        ValueError, match=r"scratch' has no images with extensions \['.png', '.webp'\]"
    ):
        load_image_folder(tree, extensions=["png", ".WEBP"])


def test_errors_name_the_folder(tmp_path, tree):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty' has 0 class folder"):
        load_image_folder(empty)
    one = tmp_path / "one"
    _img(one / "only" / "a.png")
    with pytest.raises(ValueError, match=r"1 class folder\(s\) \['only'\]"):
        load_image_folder(one)
    (tree / "blank").mkdir()
    with pytest.raises(ValueError, match=r"blank' has no images"):
        load_image_folder(tree)


def test_few_shot_split():
    y = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 3)
    train, test = few_shot_split(y, shots=2, random_state=0)
    assert sorted(np.unique(y[train], return_counts=True)[1]) == [2, 2, 2]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(y)
    again, _ = few_shot_split(y, shots=2, random_state=0)
    np.testing.assert_array_equal(train, again)
    other, _ = few_shot_split(y, shots=2, random_state=1)
    assert not np.array_equal(train, other)
    with pytest.raises(ValueError, match=r"'c' \(3\)"):
        few_shot_split(y, shots=3)
    with pytest.raises(ValueError, match="positive integer"):
        few_shot_split(y, shots=0)


def test_a_single_string_is_one_extension(tree):
    """Issue 11, defect 5: ".png" was split into ".", "p", "n", "g" (and ".g" matched
    ".jpg" too)."""
    _img(tree / "scratch" / "c.png")
    _img(tree / "dent" / "y.png")
    data = load_image_folder(tree, extensions=".png")
    rel = [str(p)[len(str(tree)) + 1 :] for p in data.filenames]
    assert rel == ["dent/y.png", "ok/1.png", "ok/batch2/2.png", "scratch/c.png"]
    again = load_image_folder(tree, extensions="PNG")
    np.testing.assert_array_equal(again.filenames, data.filenames)


def test_parameters_are_validated(tree):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="extensions"):
        load_image_folder(tree, extensions=3)
    with pytest.raises(InvalidParameterError, match="root"):
        load_image_folder(None)
    with pytest.raises(ValueError, match=r"extensions must be .* got ''"):
        load_image_folder(tree, extensions=[".png", ""])


# -- issue 20: links and special files -----------------------------------------------------------
def test_i20_4_class_folder_linking_to_the_root_is_refused(tree):
    """Issue 20, case 4: ``ln -s . data/c`` gave class ``c`` every image of the others."""
    (tree / "c").symlink_to(".")
    with pytest.raises(ValueError, match=r"'.*c' is a symbolic link .*the image folder itself"):
        load_image_folder(tree)
    with pytest.raises(ValueError, match="the image folder itself"):
        load_image_folder(tree, follow_symlinks=True)  # never followed


@pytest.mark.parametrize(
    "target, where",
    [
        ("ok", "inside the image folder"),
        ("ok/batch2", "inside the image folder"),
        ("..", "a folder holding the image folder"),
    ],
)
def test_i20_4_class_folder_linking_into_or_above_the_root_is_refused(tree, target, where):
    (tree / "alias").symlink_to(target)
    with pytest.raises(ValueError, match=f"alias' is a symbolic link .*{where}.*two classes"):
        load_image_folder(tree, follow_symlinks=True)


def test_i20_4_class_folder_linking_outside(tree, tmp_path):
    outside = tmp_path / "elsewhere" / "rust"
    _img(outside / "r.png")
    (tree / "rust").symlink_to(outside)
    with pytest.warns(UserWarning, match=r"'.*rust' is a symbolic link .*follow_symlinks=True"):
        data = load_image_folder(tree)
    assert data.target_names.tolist() == ["dent", "ok", "scratch"]
    data = load_image_folder(tree, follow_symlinks=True)
    assert data.target_names.tolist() == ["dent", "ok", "rust", "scratch"]
    assert data.filenames[data.labels == "rust"].tolist() == [str(tree / "rust" / "r.png")]
    (tree / "rust2").symlink_to(outside.parent)  # holds rust's images too
    with pytest.raises(ValueError, match=r"'rust' and 'rust2' .* overlapping folders"):
        load_image_folder(tree, follow_symlinks=True)


def test_i20_2_listing_skips_fifos_and_devices(tree):
    """Issue 20, case 2: a FIFO named like an image was listed, then blocked its reader."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tree / "ok" / "pipe.jpg")
    if os.path.exists("/dev/zero"):
        (tree / "ok" / "zero.png").symlink_to("/dev/zero")
    (tree / "ok" / "gone.png").symlink_to(tree / "nowhere.png")  # kept: encoding names it
    with pytest.warns(UserWarning, match=r"Skipped \d entries .*not regular files.*pipe.jpg"):
        data = load_image_folder(tree)
    names = [os.path.basename(p) for p in data.filenames[data.labels == "ok"]]
    assert names == ["1.png", "2.png", "gone.png"]


def test_i20_minor_gif_is_an_image_extension(tree):
    _img(tree / "ok" / "anim.gif")
    assert str(tree / "ok" / "anim.gif") in load_image_folder(tree).filenames.tolist()
