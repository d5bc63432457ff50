"""``--coverage`` of the skclip command: conformal prediction sets, calibration and ECE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skclip.cli import main
from skclip.cli.coverage import MIN_IMAGES_PER_CLASS, calibration_split

COVERAGE_KEYS = {
    "confidence_level",
    "coverage",
    "coverage_per_class",
    "mean_set_size",
    "ece",
    "ece_calibrated",
}


@pytest.fixture(scope="module")
def noisy_dir(tmp_path_factory):
    """3 classes x 30 small noisy PNGs: enough images per class for a calibration part."""
    root = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 210)}
    for name, colour in colours.items():
        (root / name).mkdir()
        for i in range(30):
            noise = rng.normal(0, 60, (24, 24, 3))
            arr = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"img{i}.png")
    return str(root)


def test_calibration_split_is_stratified_and_disjoint():
    y = np.array(["a"] * 10 + ["b"] * 4 + ["c"] * 7)
    rest, temp, conf = calibration_split(y, 0)
    assert len(np.intersect1d(rest, temp)) == len(np.intersect1d(rest, conf)) == 0
    assert len(np.intersect1d(temp, conf)) == 0
    assert len(rest) + len(temp) + len(conf) == len(y)
    # per class n: n // 2 calibration images, max(1, n // 4) of them for the temperature
    for c, n in (("a", 10), ("b", 4), ("c", 7)):
        assert np.sum(y[rest] == c) == n - n // 2
        assert np.sum(y[temp] == c) == max(1, (n // 2) // 2)
        assert np.sum(y[conf] == c) == n // 2 - max(1, (n // 2) // 2) >= 1
    assert not np.array_equal(calibration_split(y, 1)[0], rest)  # random_state is used


def test_calibration_split_names_the_small_classes():
    y = np.array(["a"] * 10 + ["tiny"] * (MIN_IMAGES_PER_CLASS - 1) + ["c"] * 2)
    with pytest.raises(ValueError, match=r"'c' \(2\), 'tiny' \(3\)\."):
        calibration_split(y, 0)


def test_evaluate_coverage_writes_every_method_into_the_json(
    noisy_dir, tiny_clip_path, tmp_path, capsys
):
    report = tmp_path / "r.json"
    args = ["evaluate", noisy_dir, "--model", tiny_clip_path, "--cv", "2", "-q"]
    assert main(args + ["--coverage", "0.75", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "## Prediction sets at confidence level 0.75" in out
    data = json.loads(report.read_text())
    assert data["coverage"] == 0.75 and "Mondrian" in data["coverage_protocol"]
    assert len(data["methods"]) == 5
    for name, m in data["methods"].items():
        assert COVERAGE_KEYS <= set(m), name
        assert m["confidence_level"] == 0.75
        assert set(m["coverage_per_class"]) == {"red", "green", "blue"}
        # 15 test images per class in each fold: overall = mean of the classes
        assert m["coverage"] == pytest.approx(np.mean(list(m["coverage_per_class"].values())))
        assert 0 <= m["mean_set_size"] <= 3 and 0 <= m["ece_calibrated"] <= 1
        # 15 training images per class per fold: 8 refit, 3 temperature, 4 thresholds
        assert m["n_fit_temperature_conformal_per_split"] == [[24, 9, 12], [24, 9, 12]]
        assert len(m["temperature_per_split"]) == 2
    zero_shot = data["methods"]["zero-shot CLIP"]  # a random text tower: overconfident
    assert zero_shot["ece_calibrated"] < zero_shot["ece"]
    assert any(m["mean_set_size"] > 1 for m in data["methods"].values())
    assert main(args + ["--coverage", "0.75", "--report", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert 'id="coverage"' in page and page.count('aria-label="reliability diagram') == 5


def test_evaluate_without_coverage_reports_none_of_it(data_dir_3x6, tiny_clip_path, tmp_path):
    report = tmp_path / "r.json"
    args = ["evaluate", data_dir_3x6, "--model", tiny_clip_path, "--cv", "2", "-q"]
    assert main(args + ["--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["coverage"] is None and data["coverage_protocol"] is None
    for m in data["methods"].values():
        assert not COVERAGE_KEYS & set(m)


@pytest.fixture(scope="module")
def data_dir_3x6(image_folder):
    paths, _ = image_folder
    return str(Path(paths[0]).parents[1])


@pytest.mark.parametrize("level", ["0", "1", "1.5"])
def test_evaluate_coverage_level_must_be_a_probability(data_dir_3x6, level, capsys):
    assert main(["evaluate", data_dir_3x6, "--coverage", level, "-q"]) == 1
    assert "--coverage must be strictly between 0 and 1" in capsys.readouterr().err


def test_evaluate_coverage_too_few_training_images_is_an_error(
    data_dir_3x6, tiny_clip_path, capsys
):
    args = ["evaluate", data_dir_3x6, "--model", tiny_clip_path, "--shots", "3", "-q"]
    assert main(args + ["--coverage", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 4" in err and "'blue sky' (3)" in err
