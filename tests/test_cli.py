"""The skclip command end to end on a generated image folder, with the tiny model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from skclip.cli import main


@pytest.fixture(scope="module")
def data_dir(image_folder):
    paths, _ = image_folder
    return str(Path(paths[0]).parents[1])


def test_evaluate_cv_writes_json_and_markdown(data_dir, tiny_clip_path, tmp_path, capsys):
    report = tmp_path / "report.json"
    args = ["evaluate", data_dir, "--model", tiny_clip_path, "--cv", "3", "-q"]
    assert main(args + ["--fine-tune", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "| Tip-Adapter |" in out and "Confusion matrix" in out
    data = json.loads(report.read_text())
    assert data["classes"] == ["blue sky", "green-leaf", "red_apple"]
    assert set(data["methods"]) == {"zero-shot CLIP", "Tip-Adapter", "Tip-Adapter-F"}
    tip = data["methods"]["Tip-Adapter"]
    assert 0 <= tip["accuracy"] <= 1 and tip["accuracy_std"] >= 0 and tip["alpha"] >= 0
    assert np.sum(tip["confusion_matrix"]) == 18
    assert tip["accuracy"] > 0.8  # colour classes: the cache model separates them
    md = tmp_path / "report.md"
    assert main(args + ["--report", str(md)]) == 0
    assert md.read_text().startswith("# skclip evaluation")
    pytest.importorskip("matplotlib")  # in the dev extra, so CI checks the PNG too
    png = tmp_path / "report_confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_shots_and_test_dir(data_dir, tiny_clip_path, tmp_path, capsys):
    base = ["--model", tiny_clip_path, "-q", "--report"]
    assert main(["evaluate", data_dir, "--shots", "3", *base, str(tmp_path / "s.json")]) == 0
    shots = json.loads((tmp_path / "s.json").read_text())
    assert "3-shot" in shots["protocol"]
    assert np.sum(shots["methods"]["Tip-Adapter"]["confusion_matrix"]) == 18 - 3 * 3
    args = ["evaluate", data_dir, "--test-dir", data_dir, *base, str(tmp_path / "t.json")]
    assert main(args) == 0
    assert "test on" in json.loads((tmp_path / "t.json").read_text())["protocol"]


def test_fit_predict_round_trip_equals_in_process(data_dir, tiny_clip_path, tmp_path, image_folder):
    paths, _ = image_folder
    model_file = tmp_path / "model.joblib"
    assert main(["fit", data_dir, "-o", str(model_file), "--model", tiny_clip_path, "-q"]) == 0
    assert model_file.stat().st_size < 100_000  # no weights inside
    pipe = joblib.load(model_file)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model_file), data_dir, "--proba", "--output", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == sorted(paths)
    expected = pipe.predict(sorted(paths))
    assert [r["prediction"] for r in rows] == list(expected)
    proba = np.array([[float(r[f"p_{c}"]) for c in pipe.classes_] for r in rows])
    np.testing.assert_allclose(proba, pipe.predict_proba(sorted(paths)), atol=1e-6)


def test_errors_exit_1_with_a_message(tmp_path, tiny_clip_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--model", tiny_clip_path]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.joblib"), "x.jpg"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_entry_point_help_and_usage_errors():
    done = subprocess.run([sys.executable, "-m", "skclip", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "evaluate" in done.stdout and "predict" in done.stdout
    done = subprocess.run([sys.executable, "-m", "skclip", "evaluate"], capture_output=True, text=True)
    assert done.returncode == 2 and "data_dir" in done.stderr
