"""The skclip command end to end on a generated image folder, with the tiny model."""

from __future__ import annotations

import csv
import json
import os
import re
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


# -- issue 11 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(data_dir, tiny_clip_path, tmp_path_factory):
    """A model written by ``skclip fit`` (once per module)."""
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    assert main(["fit", data_dir, "-o", str(path), "--model", tiny_clip_path, "-q"]) == 0
    return path


@pytest.fixture
def no_encoding(monkeypatch):
    """Fail the test if any image is encoded (or the featurizer fitted)."""
    from skclip.featurizer import CLIPFeaturizer

    calls = []

    def spy(name):
        def method(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"CLIPFeaturizer.{name} ran before the arguments were checked")

        return method

    for name in ("fit", "transform", "fit_transform"):
        monkeypatch.setattr(CLIPFeaturizer, name, spy(name))
    return calls


@pytest.mark.parametrize("extra, message", [
    (["--report", "{tmp}/report.txt"], r"--report must end in .json or .md"),
    (["--report", "{tmp}/missing/report.md"], r"missing' does not exist; create it first"),
    (["--shots", "6"], r"shots=6 needs more than 6 samples in every class"),
    (["--shots", "0"], r"--shots must be at least 1"),
    (["--cv", "7"], r"--cv 7 needs at least 7 images in every class"),
    (["--cv", "1"], r"--cv must be at least 2"),
    (["--test-dir", "{tmp}/nope"], r"nope' does not exist"),
])
def test_evaluate_checks_arguments_before_encoding(
    data_dir, tiny_clip_path, tmp_path, capsys, no_encoding, extra, message
):
    extra = [e.format(tmp=tmp_path) for e in extra]
    assert main(["evaluate", data_dir, "--model", tiny_clip_path, "-q", *extra]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert no_encoding == []


def test_fit_and_predict_check_outputs_before_encoding(
    data_dir, tiny_clip_path, model_file, tmp_path, capsys, no_encoding
):
    out = tmp_path / "results" / "model.joblib"
    assert main(["fit", data_dir, "-o", str(out), "--model", tiny_clip_path, "-q"]) == 1
    assert f"-o/--output {str(out)!r}: the folder" in capsys.readouterr().err
    csv_out = tmp_path / "outdir" / "p.csv"
    assert main(["predict", str(model_file), data_dir, "--output", str(csv_out)]) == 1
    assert "outdir' does not exist" in capsys.readouterr().err
    assert main(["predict", str(model_file), data_dir, str(tmp_path / "gone.jpg")]) == 1
    assert "gone.jpg' does not exist" in capsys.readouterr().err
    assert no_encoding == []


def test_report_leaves_the_matplotlib_backend_alone(data_dir, tiny_clip_path, tmp_path):
    """Issue 11, defect 10: the CLI switched the whole process to Agg."""
    pytest.importorskip("matplotlib")
    report = tmp_path / "r.md"
    code = (
        "import matplotlib, sys\n"
        "from skclip.cli import main\n"
        f"assert main(['evaluate', {data_dir!r}, '--model', {tiny_clip_path!r}, '--cv', '2', "
        f"'-q', '--report', {str(report)!r}]) == 0\n"
        "print('backend', matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "backend svg" in done.stdout
    png = tmp_path / "r_confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_damaged_model_file_exits_1_naming_it(model_file, data_dir, tmp_path, capsys):
    """Fault of issue 11: a model file truncated or replaced by other bytes."""
    data = model_file.read_bytes()
    damaged = {"truncated": data[: len(data) // 2],
               "other bytes": np.random.default_rng(0).bytes(len(data)), "empty": b""}
    for name, content in damaged.items():
        bad = tmp_path / f"{name}.joblib"
        bad.write_bytes(content)
        assert main(["predict", str(bad), data_dir, "-q"]) == 1, name
        err = capsys.readouterr().err
        assert f"Cannot read the model file {str(bad)!r}" in err
        assert len(err.strip().splitlines()) == 1
    # The installed command, end to end: one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "skclip", "predict", str(bad), data_dir, "-q"],
        capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"skclip: error: Cannot read the model file {str(bad)!r}")


def test_augmentation_is_seeded(data_dir, tiny_clip_path, tmp_path, capsys):
    """Issue 11, defect 7: the CLI passes a seed, so augmented keys are reproducible
    (and reused from the cache)."""
    files = []
    for i in range(2):
        files.append(tmp_path / f"m{i}.joblib")
        args = ["fit", data_dir, "-o", str(files[-1]), "--model", tiny_clip_path, "-q"]
        assert main(args + ["--augment", "2", "--random-state", "3"]) == 0
    a, b = (joblib.load(f) for f in files)
    assert a.named_steps["clip"].augment == 2 and a.named_steps["clip"].random_state == 3
    keys_a, keys_b = a.named_steps["tip"].cache_keys_, b.named_steps["tip"].cache_keys_
    np.testing.assert_array_equal(keys_a, keys_b)
    args = ["evaluate", data_dir, "--model", tiny_clip_path, "--cv", "2", "-q", "--augment", "2"]
    assert main(args) == 0
    assert "| Tip-Adapter |" in capsys.readouterr().out
