"""``--coverage`` of the skclip command: conformal prediction sets, calibration and ECE."""

from __future__ import annotations

import csv
import json
import shutil
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
    # every method of `skclip evaluate` with a CLIP checkpoint (no --fine-tune)
    methods = {
        "zero-shot CLIP",
        "Tip-Adapter",
        "GDA",
        "APE",
        "linear probe",
        "ProKeR",
        "CLAP",
        "LP++",
    }
    assert set(data["methods"]) == methods
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
    assert 'id="coverage"' in page and page.count('aria-label="reliability diagram') == len(methods)


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
    assert main(["evaluate", data_dir_3x6, "--coverage", level, "-q"]) == 2
    assert "argument --coverage: must be strictly between 0 and 1" in capsys.readouterr().err


def test_evaluate_coverage_too_few_training_images_is_an_error(
    data_dir_3x6, tiny_clip_path, capsys
):
    args = ["evaluate", data_dir_3x6, "--model", tiny_clip_path, "--shots", "3", "-q"]
    assert main(args + ["--coverage", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 4" in err and "'blue sky' (3)" in err


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def calibrated_model(noisy_dir, tiny_clip_path, tmp_path_factory):
    pytest.importorskip("skops.io")
    model = tmp_path_factory.mktemp("model") / "m.skops"
    args = ["fit", noisy_dir, "-o", str(model), "--model", tiny_clip_path, "-q"]
    assert main(args + ["--coverage", "0.75", "--cv", "2"]) == 0
    return model


def test_fit_predict_coverage_round_trip_through_skops(
    calibrated_model, noisy_dir, tmp_path, capsys
):
    import skops.io

    from skclip.calibration import TemperatureScaledClassifier
    from skclip.cli.model_file import TRUSTED_TYPES
    from skclip.conformal import MondrianConformalClassifier

    untrusted = skops.io.get_untrusted_types(file=str(calibrated_model))
    assert "skclip.conformal.MondrianConformalClassifier" in untrusted
    assert set(untrusted) <= set(TRUSTED_TYPES)
    pipe = skops.io.load(str(calibrated_model), trusted=untrusted)
    conformal = pipe.named_steps["conformal"]
    assert isinstance(conformal, MondrianConformalClassifier)
    assert isinstance(conformal.estimator_, TemperatureScaledClassifier)
    assert conformal.confidence_level == 0.75
    # 30 images per class: 15 fit the classifier, 7 the temperature, 8 the thresholds
    assert conformal.n_calibration_.tolist() == [8, 8, 8]
    out = tmp_path / "p.csv"
    args = ["predict", str(calibrated_model), noisy_dir, "-q", "--proba", "--output", str(out)]
    assert main(args + ["--coverage"]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["path", "prediction", "set", "p_blue", "p_green", "p_red"]
    X = pipe.named_steps["clip"].transform(np.array([r["path"] for r in rows]))
    pred, sets = conformal.predict_set(X)
    expected = ["|".join(conformal.classes_[s]) for s in sets[:, :, 0]]
    assert [r["set"] for r in rows] == expected
    assert [r["prediction"] for r in rows] == pred.tolist()
    proba = conformal.estimator_.predict_proba(X)  # temperature-scaled
    assert np.allclose(
        [[float(r[f"p_{c}"]) for c in conformal.classes_] for r in rows], proba, atol=1e-6
    )
    assert main(args[:-2] + ["--output", str(tmp_path / "q.csv"), "--coverage", "0.75"]) == 0
    assert _rows(tmp_path / "q.csv") == rows
    assert main(["predict", str(calibrated_model), noisy_dir, "-q", "--coverage", "0.9"]) == 1
    assert "was calibrated at 0.75" in capsys.readouterr().err
    assert main(["predict", str(calibrated_model), noisy_dir, "-q", "--output", str(out)]) == 0
    assert list(_rows(out)[0]) == ["path", "prediction"]  # no --coverage: no set column


def test_predict_coverage_needs_a_calibrated_model(data_dir_3x6, tiny_clip_path, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    assert main(["fit", data_dir_3x6, "-o", str(model), "--model", tiny_clip_path, "-q"]) == 0
    assert main(["predict", str(model), data_dir_3x6, "-q", "--coverage"]) == 1
    assert "holds no conformal calibration" in capsys.readouterr().err


def test_fit_coverage_names_the_classes_with_too_few_images(
    noisy_dir, tiny_clip_path, tmp_path, capsys
):
    small = tmp_path / "small"
    for name, n in (("red", 6), ("green", 3), ("blue", 5)):
        (small / name).mkdir(parents=True)
        for path in sorted((Path(noisy_dir) / name).glob("*.png"))[:n]:
            shutil.copy(path, small / name / path.name)
    out = tmp_path / "m.skops"
    args = ["fit", str(small), "-o", str(out), "--model", tiny_clip_path, "-q"]
    assert main(args + ["--coverage", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "every class needs at least 4; these have fewer: 'green' (3)." in err
    assert not out.exists()
    assert main(args) == 0  # without --coverage the same folder fits


def _calibrated_pipeline(calibrated_model):
    import skops.io

    return skops.io.load(
        str(calibrated_model), trusted=skops.io.get_untrusted_types(file=str(calibrated_model))
    )


def test_model_file_refuses_unexpected_types_in_the_calibration(
    calibrated_model, noisy_dir, tmp_path, capsys
):
    import skops.io
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression

    from skclip import GDAClassifier

    pipe = _calibrated_pipeline(calibrated_model)
    scaled = pipe.named_steps["conformal"].estimator_
    # a skclip type that a fit file never holds: refused before loading, named
    scaled.estimator = scaled.estimator_ = FrozenEstimator(GDAClassifier(clip_model=None))
    skops.io.dump(pipe, tmp_path / "gda.skops")
    assert main(["predict", str(tmp_path / "gda.skops"), noisy_dir, "-q", "--coverage"]) == 1
    err = capsys.readouterr().err
    assert "contains types that skclip does not load: skclip.gda.GDAClassifier" in err
    # a type skops trusts, where the skclip classifier belongs: refused by the structure
    lr = LogisticRegression().fit(np.eye(3), ["blue", "green", "red"])
    scaled.estimator = scaled.estimator_ = FrozenEstimator(lr)
    skops.io.dump(pipe, tmp_path / "lr.skops")
    assert main(["predict", str(tmp_path / "lr.skops"), noisy_dir, "-q", "--coverage"]) == 1
    assert "not [CLIPFeaturizer, a skclip classifier]" in capsys.readouterr().err


def test_model_file_resets_and_checks_the_calibrated_classifier(calibrated_model, tmp_path):
    import joblib

    from skclip.cli.model_file import calibrated_classifier, load_model_file

    pipe = _calibrated_pipeline(calibrated_model)
    inner = calibrated_classifier(pipe.named_steps["conformal"])
    inner.set_params(device="cuda:7")  # machine-local: the file never decides it
    joblib.dump(pipe, tmp_path / "m.joblib")
    loaded = load_model_file(tmp_path / "m.joblib", machine={"device": "cpu"})
    assert calibrated_classifier(loaded.named_steps["conformal"]).device == "cpu"
    conformal = pipe.named_steps["conformal"]
    conformal.quantiles_ = conformal.quantiles_.copy()
    conformal.quantiles_[0, 0] = np.inf  # too few calibration images: allowed
    joblib.dump(pipe, tmp_path / "inf.joblib")
    load_model_file(tmp_path / "inf.joblib")
    conformal.quantiles_[0, 0] = np.nan
    joblib.dump(pipe, tmp_path / "nan.joblib")
    with pytest.raises(ValueError, match=r"conformal.quantiles_ holds NaN"):
        load_model_file(tmp_path / "nan.joblib")
    conformal.quantiles_[0, 0] = 0.5
    conformal.estimator_ = conformal.estimator_.estimator_  # not the chain it claims
    joblib.dump(pipe, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="not a model written by 'skclip fit'"):
        load_model_file(tmp_path / "other.joblib")
