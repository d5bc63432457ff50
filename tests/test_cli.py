"""The skclip command end to end on a generated image folder, with the tiny model."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from skclip.cli.report.html_page import render_html
from skclip.cli.report.summary import render_markdown
from skclip.cli import main


#: The methods of ``skclip evaluate --fine-tune`` with a CLIP checkpoint.
METHODS = {
    "zero-shot CLIP",
    "Tip-Adapter",
    "Tip-Adapter-F",
    "GDA",
    "APE",
    "linear probe",
    "ProKeR",
    "CLAP",
    "LP++",
}


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
    assert set(data["methods"]) == METHODS
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
    # With --test-dir no training image is kept to test on: a class may have exactly --shots.
    args = [
        "evaluate",
        data_dir,
        "--test-dir",
        data_dir,
        "--shots",
        "6",
        *base,
        str(tmp_path / "t6.json"),
    ]
    assert main(args) == 0
    assert json.loads((tmp_path / "t6.json").read_text())["splits"][0]["n_train"] == 18
    args[args.index("6")] = "7"
    assert main(args) == 1
    assert "needs 7 training images in every class" in capsys.readouterr().err


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
    done = subprocess.run(
        [sys.executable, "-m", "skclip", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "evaluate" in done.stdout and "predict" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "skclip", "evaluate"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "DATA_DIR" in done.stderr and "usage: skclip" in done.stderr


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


@pytest.mark.parametrize(
    "extra, status, message",
    [
        (["--report", "{tmp}/report.txt"], 2, r"argument --report: must end in .json or .md"),
        (["--report", "{tmp}/missing/report.md"], 1, r"missing' does not exist; create it first"),
        (["--shots", "6"], 1, r"shots=6 needs more than 6 samples in every class"),
        (["--shots", "0"], 2, r"argument --shots: must be at least 1"),
        (["--cv", "7"], 1, r"--cv 7 needs at least 7 images in every class"),
        (["--cv", "1"], 2, r"argument --cv: must be at least 2"),
        (["--test-dir", "{tmp}/nope"], 1, r"nope' does not exist"),
    ],
)
def test_evaluate_checks_arguments_before_encoding(
    data_dir, tiny_clip_path, tmp_path, capsys, no_encoding, extra, status, message
):
    """Exit 2 for a wrong command line (tests/test_cli_start.py has them all), 1 for what
    the folders decide."""
    extra = [e.format(tmp=tmp_path) for e in extra]
    assert main(["evaluate", data_dir, "--model", tiny_clip_path, "-q", *extra]) == status
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
    damaged = {
        "truncated": data[: len(data) // 2],
        "other bytes": np.random.default_rng(0).bytes(len(data)),
        "empty": b"",
    }
    for name, content in damaged.items():
        bad = tmp_path / f"{name}.joblib"
        bad.write_bytes(content)
        assert main(["predict", str(bad), data_dir, "-q"]) == 1, name
        err = capsys.readouterr().err
        assert f"Cannot read the model file {str(bad)!r}" in err
        # the note (even with -q: loading a .joblib runs code), then one line of error
        note, *error = err.strip().splitlines()
        assert note.startswith("skclip: note: loading a .joblib file runs code") and len(error) == 1
    # The installed command, end to end: one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "skclip", "predict", str(bad), data_dir, "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"skclip: error: Cannot read the model file {str(bad)!r}"
    )


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


# -- issue 15 -----------------------------------------------------------------------------
def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_1_local_checkpoint_stored_absolute_and_guarded(
    data_dir, tiny_clip_path, tmp_path, monkeypatch, capsys
):
    """Item 1: a relative --model is recorded as an absolute path (and the CLI says so);
    a different checkpoint found there later is an error naming both fingerprints;
    predict --model points at the checkpoint's new location, still checked."""
    from skclip.backbones.loading import clear_model_cache
    from skclip._testing import save_random_clip

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_clip_path, work / "tinyclip")
    monkeypatch.chdir(work)
    assert main(["fit", data_dir, "-o", "m.joblib", "--model", "tinyclip", "--cv", "2"]) == 0
    captured = capsys.readouterr()
    absolute = str((work / "tinyclip").resolve())
    assert f"recorded as {absolute!r}" in captured.err
    pipe = joblib.load(work / "m.joblib")
    assert pipe.named_steps["clip"].model == absolute == pipe.named_steps["tip"].clip_model
    model_file = str(work / "m.joblib")
    monkeypatch.chdir(tmp_path)  # another directory: still that checkpoint, not the hub
    assert main(["predict", model_file, data_dir, "-q", "--output", "before.csv"]) == 0

    shutil.rmtree(work / "tinyclip")  # a different checkpoint under the same name
    save_random_clip(work / "tinyclip", seed=1)
    clear_model_cache()  # as in a new process
    assert main(["predict", model_file, data_dir, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"The checkpoint {absolute!r} is not the one {model_file!r} was fitted with" in err
    assert pipe.named_steps["clip"].model_fingerprint_ in err and "--model PATH" in err

    moved = tmp_path / "moved-clip"
    shutil.copytree(tiny_clip_path, moved)
    args = ["predict", model_file, data_dir, "-q", "--model", str(moved), "--output", "after.csv"]
    assert main(args) == 0
    assert _rows("after.csv") == _rows("before.csv")
    assert main(["predict", model_file, data_dir, "-q", "--model", str(work / "tinyclip")]) == 1
    assert "is not the one" in capsys.readouterr().err


def test_2_fit_output_suffix_checked_before_encoding(
    data_dir, tiny_clip_path, tmp_path, capsys, no_encoding
):
    """Item 2 (with test_fit_and_predict_check_outputs_before_encoding and
    test_evaluate_checks_arguments_before_encoding)."""
    out = tmp_path / "model.txt"
    assert main(["fit", data_dir, "-o", str(out), "--model", tiny_clip_path, "-q"]) == 2
    assert "argument -o/--output: must end in .joblib or .skops" in capsys.readouterr().err
    assert no_encoding == []


def test_3_files_that_are_not_models(model_file, data_dir, tmp_path, capsys):
    """Item 3: one sentence naming the file, exit 1; swapped arguments say what it is
    (a wrong command line: exit 2)."""
    for name, content in {"dict.joblib": {"a": 1}, "list.joblib": [1, 2]}.items():
        joblib.dump(content, tmp_path / name)
        assert main(["predict", str(tmp_path / name), data_dir]) == 1
        err = capsys.readouterr().err
        kind = type(content).__name__
        said = f"{str(tmp_path / name)!r} is not a model written by 'skclip fit': it holds a {kind}"
        assert said in err
    assert main(["predict", data_dir, str(model_file)]) == 2
    err = capsys.readouterr().err
    assert f"{data_dir!r} is a folder, not a model file" in err
    assert "the model file comes first" in err


def test_4_one_shot_is_evaluated_and_cv_is_the_inner_cv(data_dir, tiny_clip_path, tmp_path, capsys):
    """Item 4: --shots 1 reports every method, each with how it was configured; --cv next
    to --shots is the inner cross-validation."""
    base = ["evaluate", data_dir, "--model", tiny_clip_path, "-q", "--fine-tune", "--report"]
    assert main([*base, str(tmp_path / "one.json"), "--shots", "1"]) == 0
    report = json.loads((tmp_path / "one.json").read_text())
    assert set(report["methods"]) == METHODS
    # The command says what it did, plainly (no Python warning), and the report records it.
    out, err = capsys.readouterr()
    said = "1 shot per class: Tip-Adapter-F trains nothing, the keys are Tip-Adapter's"
    assert err.splitlines().count(f"skclip: note: {said}") == 1 and "Warning" not in err
    assert all(line.startswith("skclip: note: ") for line in err.splitlines()), err
    assert said in report["notes"] and f"## Notes\n\n- {said}" in out
    page = render_html(report, [], tmp_path / "one.html").read_text()
    assert f"<li>{html.escape(said)}</li>" in page
    # each method's fit and predict time, in every format
    assert all(m["seconds"] > 0 for m in report["methods"].values())
    assert "| seconds |" in out and "<th>seconds</th>" in page
    assert report["inner_cv"] is None and report["splits"] == [{"n_train": 3, "n_test": 15}]
    tip = report["methods"]["Tip-Adapter"]
    assert "default alpha=1, beta=5.5" in tip["configuration"]
    assert (tip["alpha"], tip["beta"]) == (1.0, 5.5)
    assert "text classifier only" in report["methods"]["zero-shot CLIP"]["configuration"]
    assert main([*base, str(tmp_path / "two.json"), "--shots", "3", "--cv", "2"]) == 0
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["inner_cv"] == 2
    assert "2-fold inner cross-validation" in report["methods"]["Tip-Adapter"]["configuration"]
    # 2-fold inner folds of 3 images train on 1 per class: GDA would tie on every alpha
    assert "carries no information" in report["methods"]["GDA"]["configuration"]
    capsys.readouterr()
    assert main(["evaluate", data_dir, "--model", tiny_clip_path, "--shots", "2", "--cv", "3"]) == 1
    err = capsys.readouterr().err
    assert "--cv 3 needs at least 3 training images (inner cross-validation)" in err


@pytest.fixture
def folder_with_a_bad_image(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    bad = root / "red_apple" / "broken.jpg"
    bad.write_bytes(b"not a JPEG at all")
    return root, bad


def test_5_on_error_skip(folder_with_a_bad_image, tiny_clip_path, tmp_path, capsys):
    """Item 5: one corrupt JPEG no longer aborts evaluate, fit and predict."""
    root, bad = folder_with_a_bad_image
    common = ["--model", tiny_clip_path, "-q"]
    assert main(["evaluate", str(root), "--cv", "2", *common]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "object at 0x" not in err
    assert "pass --on-error skip to leave them out" in err  # review: suggest the option

    report = tmp_path / "r.json"
    args = ["evaluate", str(root), "--cv", "2", "--on-error", "skip", "--report", str(report)]
    assert main(args + ["--model", tiny_clip_path]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 19 images" in err and str(bad) in err and "object at 0x" not in err
    data = json.loads(report.read_text())
    assert [s["path"] for s in data["skipped"]] == [str(bad)]
    assert data["n_images"] == 18
    assert data["skipped"][0]["error"] == "not an image file (cannot identify its format)"
    assert "skipped 1 unreadable image(s)" in render_markdown(data)

    model = tmp_path / "m.skops"
    assert main(["fit", str(root), "-o", str(model), "--on-error", "skip", *common]) == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    args = ["predict", str(model), str(root), "--on-error", "skip", "--proba", "--output", str(out)]
    assert main(args) == 0
    rows = {r["path"]: r for r in _rows(out)}
    assert len(rows) == 19 and rows[str(bad)]["prediction"] == ""
    assert rows[str(bad)]["error"] == "not an image file (cannot identify its format)"
    assert all(r["error"] == "" and r["prediction"] for p, r in rows.items() if p != str(bad))
    assert str(bad) in capsys.readouterr().err


def test_7_report_records_the_protocol(data_dir, tiny_clip_path, tmp_path, capsys):
    """Item 7: shots, cv, random_state, sizes, version, model and fingerprint; the
    per-class section names its method."""
    from skclip import __version__
    from skclip.backbones.loading import load_backbone as load_clip

    report = tmp_path / "r.json"
    args = [
        "evaluate",
        data_dir,
        "--model",
        tiny_clip_path,
        "-q",
        "--cv",
        "3",
        "--random-state",
        "4",
        "--report",
        str(report),
    ]
    assert main(args) == 0
    md = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["skclip_version"] == __version__ and data["model"] == tiny_clip_path
    clip = load_clip(tiny_clip_path, "auto")
    fingerprint = data["model_fingerprint"]
    assert fingerprint == clip.fingerprint
    assert data["tower_fingerprints"]["vision"] == clip.vision_fingerprint
    assert (data["shots"], data["cv"], data["random_state"]) == (None, 3, 4)
    assert data["splits"] == [{"n_train": 12, "n_test": 6}] * 3
    assert data["per_class_method"] in data["methods"]
    assert "## Protocol" in md and fingerprint in md
    assert "train / test images per fold: 12 / 6" in md
    heading = re.search(r"## Per class: (.+) \((.+)\)", md)
    assert heading[1] == data["per_class_method"] and "best accuracy" in heading[2]


def test_8_plain_progress_lines_when_not_a_terminal(data_dir, tiny_clip_path, capsys):
    """Item 8: stderr is not a terminal here: a few plain lines, no transformers bar;
    -q: nothing."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skclip",
            "evaluate",
            data_dir,
            "--model",
            tiny_clip_path,
            "--cv",
            "2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert 3 <= len(lines) <= 10 and all(line.startswith("skclip: [") for line in lines)
    assert any("encoding 18 images" in line for line in lines)
    assert main(["evaluate", data_dir, "--model", tiny_clip_path, "--cv", "2", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_12_skops_model_files(data_dir, tiny_clip_path, model_file, tmp_path, capsys):
    """Item 12: fit -o x.skops, predict trusts only skclip/sklearn/numpy types; a .joblib
    file gets a one-line note that loading it runs code."""
    skops_io = pytest.importorskip("skops.io")
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from skclip import CLIPFeaturizer

    model = tmp_path / "m.skops"
    assert main(["fit", data_dir, "-o", str(model), "--model", tiny_clip_path, "-q"]) == 0
    assert main(["predict", str(model), data_dir, "--output", str(tmp_path / "a.csv")]) == 0
    assert "runs code" not in capsys.readouterr().err
    assert main(["predict", str(model_file), data_dir, "--output", str(tmp_path / "b.csv")]) == 0
    assert "note: loading a .joblib file runs code stored in it" in capsys.readouterr().err
    assert _rows(tmp_path / "a.csv") == _rows(tmp_path / "b.csv")

    hostile = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path)),
            ("run", FunctionTransformer(func=os.system)),
        ]
    )
    skops_io.dump(hostile, tmp_path / "hostile.skops")
    assert main(["predict", str(tmp_path / "hostile.skops"), data_dir]) == 1
    err = capsys.readouterr().err
    assert f"The model file {str(tmp_path / 'hostile.skops')!r} contains types" in err
    assert "system" in err and "Traceback" not in err
    (tmp_path / "fake.skops").write_bytes(model_file.read_bytes())  # a pickle named .skops
    assert main(["predict", str(tmp_path / "fake.skops"), data_dir]) == 1
    assert "Cannot read the model file" in capsys.readouterr().err


def test_6_mistyped_local_model_is_a_missing_folder_at_once(
    data_dir, tmp_path, monkeypatch, capsys, no_encoding
):
    """Item 6 end to end (the hub-side cases are in test_models.py)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for command in (["evaluate", data_dir], ["fit", data_dir, "-o", "m.skops"]):
        assert main([*command, "--model", "models/clip-b32"]) == 1
        err = capsys.readouterr().err
        assert "--model 'models/clip-b32' is not a checkpoint folder" in err
        assert "the folder 'models' exists here" in err
    assert no_encoding == []


# -- review of issue 15 -------------------------------------------------------------------
def test_r2_checkpoint_checked_before_encoding_report_shows_the_same_fingerprint(
    data_dir, tiny_clip_path, tmp_path, monkeypatch, capsys
):
    """One guard, model_fingerprint_: predict compares it with the checkpoint before any
    image is encoded, names --model PATH, and evaluate's report records the fingerprint
    that the error shows."""
    from skclip import CheckpointMismatchError
    from skclip.backbones.loading import clear_model_cache
    from skclip._testing import save_random_clip
    from skclip.featurizer import CLIPFeaturizer

    clip_dir = tmp_path / "clip"
    shutil.copytree(tiny_clip_path, clip_dir)
    model = tmp_path / "m.skops"
    assert main(["fit", data_dir, "-o", str(model), "--model", str(clip_dir), "-q"]) == 0
    report = tmp_path / "r.json"
    args = ["evaluate", data_dir, "--model", str(clip_dir), "--cv", "2", "-q"]
    assert main(args + ["--report", str(report)]) == 0
    fitted_with = json.loads(report.read_text())["model_fingerprint"]
    assert not hasattr(skops_load(model), "skclip_checkpoint_")  # no second guard

    shutil.rmtree(clip_dir)
    save_random_clip(clip_dir, seed=1)
    clear_model_cache()
    encoded = []
    original = CLIPFeaturizer.transform
    monkeypatch.setattr(
        CLIPFeaturizer, "transform", lambda self, X: encoded.append(len(X)) or original(self, X)
    )
    with pytest.raises(CheckpointMismatchError):  # in Python: the same error class
        from skclip.cli.predict import _check_checkpoint

        _check_checkpoint(skops_load(model), str(model))
    assert main(["predict", str(model), data_dir, "-q"]) == 1
    err = capsys.readouterr().err
    assert encoded == []
    assert fitted_with in err and "--model PATH" in err
    assert main(args + ["--report", str(report)]) == 0
    assert json.loads(report.read_text())["model_fingerprint"] in err  # the one found


def skops_load(path):
    from skclip.cli.model_file import load_model_file as load_model

    return load_model(path)


def test_r3_only_model_suffixes_are_loaded(model_file, data_dir, tmp_path, monkeypatch, capsys):
    """An image given as the model (arguments swapped) or any other suffix is never
    unpickled."""
    image = next(Path(data_dir).rglob("*.jpg"))
    other = tmp_path / "model.pkl"
    shutil.copy(model_file, other)
    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("joblib.load was called"))
    assert main(["predict", str(image), str(model_file)]) == 2
    err = capsys.readouterr().err
    assert f"{str(image)!r} is an image, not a model file" in err
    assert "usage: skclip predict" in err and "MODEL_FILE IMAGES" in err
    assert main(["predict", str(other), data_dir]) == 2
    assert "end in .joblib or .skops" in capsys.readouterr().err


@pytest.mark.parametrize("step", ["numpy.load", "ufunc", "estimator"])
def test_r4_skops_trusts_only_what_skclip_fit_writes(
    data_dir, tiny_clip_path, tmp_path, capsys, step
):
    """Only the types a 'skclip fit' file holds, as exactly [CLIPFeaturizer, a skclip
    classifier]: a numpy function in a FunctionTransformer, or another scikit-learn
    estimator as the classifier, is refused, naming the type."""
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    model = tmp_path / "m.skops"
    assert main(["fit", data_dir, "-o", str(model), "--model", tiny_clip_path, "-q"]) == 0
    pipe = skops_load(model)
    structure = "not [CLIPFeaturizer, a skclip classifier]"
    if step == "numpy.load":  # a type skops does not trust: refused before loading
        pipe.steps.insert(1, ("f", FunctionTransformer(np.load)))
        said, named = "contains types that skclip does not load", "numpy.load"
    elif step == "ufunc":  # skops trusts both types: refused by the pipeline's steps
        pipe.steps.insert(1, ("f", FunctionTransformer(np.log1p)))
        said, named = structure, "sklearn.preprocessing._function_transformer.FunctionTransformer"
    else:
        pipe.steps[1] = ("tip", LogisticRegression().fit(np.eye(3), [0, 1, 2]))
        said, named = structure, "sklearn.linear_model._logistic.LogisticRegression"
    skops_io.dump(pipe, tmp_path / "other.skops")
    assert main(["predict", str(tmp_path / "other.skops"), data_dir, "-q"]) == 1
    err = capsys.readouterr().err
    assert said in err and named in err


def test_r5_fit_refuses_more_folds_than_images(
    data_dir, tiny_clip_path, tmp_path, capsys, no_encoding
):
    """As evaluate does, before any image is encoded."""
    out = str(tmp_path / "m.skops")
    assert main(["fit", data_dir, "-o", out, "--model", tiny_clip_path, "--cv", "7", "-q"]) == 1
    err = capsys.readouterr().err
    assert "--cv 7 needs at least 7 images in every class; the smallest class has 6" in err
    assert no_encoding == []


def test_r6_report_records_the_default_folds(data_dir, tiny_clip_path, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert (
        main(["evaluate", data_dir, "--model", tiny_clip_path, "-q", "--report", str(report)]) == 0
    )
    data = json.loads(report.read_text())
    assert data["cv"] == 5 and len(data["splits"]) == 5
    assert "cv: 5," in capsys.readouterr().out


def test_r7_per_class_heading_says_which_method_and_why():
    methods = {
        name: {
            "accuracy": acc,
            "accuracy_std": None,
            "f1_macro": acc,
            "f1_macro_std": None,
            "per_class": {},
            "confusion_matrix": [],
        }
        for name, acc in [("zero-shot CLIP", 0.5), ("Tip-Adapter", 0.9)]
    }
    report = {
        "data_dir": "d",
        "model": "m",
        "n_images": 2,
        "classes": [],
        "protocol": "p",
        "methods": methods,
    }
    md = render_markdown({**report, "per_class_method": "zero-shot CLIP"})
    assert (
        "## Per class: zero-shot CLIP (chosen by per_class_method; the best accuracy "
        "is Tip-Adapter's)"
    ) in md
    assert "## Per class: Tip-Adapter (the method with the best accuracy)" in render_markdown(
        report
    )


def test_r7_encode_restores_on_error_after_a_failure(tiny_clip_path, monkeypatch):
    from skclip.cli.common import _featurize as _encode
    from skclip.featurizer import CLIPFeaturizer

    def fail(self, X):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(CLIPFeaturizer, "transform", fail)
    featurizer = CLIPFeaturizer(model=tiny_clip_path, progress=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        _encode(featurizer, np.array(["a.jpg"]), "skip")
    assert featurizer.on_error == "raise"


def test_r7_broken_pipe_exits_quietly(model_file, data_dir):
    """``skclip predict ... | head``: no "[Errno 32] Broken pipe"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "skclip", "predict", str(model_file), data_dir, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    proc.stdout.close()  # the reader goes away before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Broken pipe" not in err and "Errno 32" not in err and "Traceback" not in err


def test_r7_messages(
    folder_with_a_bad_image, data_dir, model_file, tiny_clip_path, tmp_path, capsys
):
    """Skipped files as "path: reason" once, PIL's message said plainly, a file given as
    a data folder, a missing --model folder."""
    root, bad = folder_with_a_bad_image
    args = ["evaluate", str(root), "--cv", "2", "--model", tiny_clip_path, "--on-error", "skip"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"  {bad}: not an image file (cannot identify its format)\n" in err
    assert err.count(str(bad)) == 1 and "(input" not in err and "bytes" not in err
    assert main(["evaluate", str(model_file), "--model", tiny_clip_path]) == 2
    err = capsys.readouterr().err
    assert f"{str(model_file)!r} is a file, not a folder" in err and "skclip predict" in err
    missing = str(tmp_path / "nonexist")
    assert main(["evaluate", data_dir, "--model", missing]) == 1
    err = capsys.readouterr().err
    assert err == f"skclip: error: --model {missing!r}: the folder does not exist.\n"


def test_r7_skipping_leaves_a_class_without_test_images(
    folder_with_a_bad_image, tiny_clip_path, capsys
):
    root, bad = folder_with_a_bad_image  # red_apple: 6 images + a broken one
    (root / "red_apple" / "img0.jpg").unlink()  # 5 + 1 > 5 shots as listed, 5 once skipped
    args = ["evaluate", str(root), "--shots", "5", "--model", tiny_clip_path, "-q"]
    assert main(args + ["--on-error", "skip"]) == 1
    err = capsys.readouterr().err
    assert (
        "After skipping 1 unreadable image(s), class 'red_apple' has 5 image(s): none left "
        "to test after its 5 training images (--shots 5)"
    ) in err


# -- issue 14 -----------------------------------------------------------------------------
def test_14_html_report_compares_every_method_with_a_gallery_of_mistakes(
    data_dir, tiny_clip_path, tmp_path, capsys
):
    """``skclip evaluate DIR --report r.html``: every method in the table with the
    hyperparameters chosen on training data, and the misclassified images in the gallery
    (each method's most confident mistakes: thumbnail, true, predicted, confidence)."""
    from test_html_report import _browser, _parse, _run_browser

    from skclip.cli.evaluate import GALLERY_SIZE

    base = ["evaluate", data_dir, "--model", tiny_clip_path, "--cv", "3", "--fine-tune", "-q"]
    assert main(base + ["--report", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    markdown = capsys.readouterr().out
    page = tmp_path / "r.html"
    assert main(base + ["--report", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    parsed = _parse(text)
    table = text[text.index('id="methods"') : text.index("</table>", text.index('id="methods"'))]
    for name, entry in data["methods"].items():
        assert f"<td>{name}</td>" in table
        for key, value in entry["params"].items():  # the same choice as the JSON report
            assert f"{key}={value:.4g}" in table
        # ... printed identically in Markdown and HTML
        md_row = re.search(rf"^\| {re.escape(name)} \|.*\| ([^|]*) \|$", markdown, re.M)
        html_row = re.search(
            rf"<td>{re.escape(html.escape(name))}</td>.*?<td>([^<]*)</td></tr>", table
        )
        assert html.unescape(html_row[1]) == md_row[1], name
        # each method's configuration once per report (the Protocol list)
        how = f"{name}: {entry['configuration']}"
        assert markdown.count(how) == 1 and text.count(html.escape(how)) == 1, how
        sharing = sum(
            m["configuration"] == entry["configuration"] for m in data["methods"].values()
        )
        assert text.count(html.escape(entry["configuration"])) == sharing
    assert "alpha=" in table and "C=" in table and "gamma=" in table
    assert "4-fold inner cross-validation" in text  # how they were chosen

    wrong = {
        name: int(np.sum(m["confusion_matrix"]) - np.trace(m["confusion_matrix"]))
        for name, m in data["methods"].items()
    }
    assert wrong["zero-shot CLIP"] > 0  # the tiny model's random text tower errs
    share = -(-GALLERY_SIZE // sum(n > 0 for n in wrong.values()))
    expected = min(GALLERY_SIZE, sum(min(share, n) for n in wrong.values()))
    # every mistake is counted before the gallery leaves any out
    counts = re.findall(r"<li>([^<:]+): (\d+) mistakes?(?:, showing (\d+))?</li>", text)
    assert {name: int(n) for name, n, _ in counts} == wrong
    gallery = text[text.index('id="gallery"') :]
    figures = re.findall(
        r'<figure title="([^"]+)">.*?true: ([^<]+)<br>.*?predicted: ([^<]+)'
        r'</span> \((\d+)%\)<br><span class="muted">([^<]+)</span>',
        gallery,
    )
    assert len(figures) == expected == gallery.count("data:image/jpeg;base64,")
    for path, true, pred, _, method in figures:
        assert Path(path).parent.name == true != pred and method in data["methods"]
    for name, n, showing in counts:
        assert int(showing or 0) == sum(f[4] == name for f in figures) <= share
    confidences = [int(f[3]) for f in figures]
    assert confidences == sorted(confidences, reverse=True)  # worst first
    assert "script" not in parsed.tags

    if _browser() is None:
        pytest.skip("no headless browser: the page's DOM is checked above only")
    dom = _run_browser(
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.resolve().as_uri()
    ).stdout
    drawn = _parse(dom)
    assert drawn.tags.count("figure") == expected and drawn.tags.count("img") == expected


# -- the cache never lies (issue 19) --------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_19_7_a_model_file_cannot_steer_skclip(model_file, data_dir, tmp_path, capsys, suffix):
    """Machine-local parameters stored in a shared model file (where to write, threads,
    memory, device, runtime) are replaced by this machine's defaults or options."""
    from skclip.cli.model_file import load_model_file as load_model, save_model

    if suffix == ".skops":
        pytest.importorskip("skops.io")
    pipe = joblib.load(model_file)
    elsewhere = tmp_path / "anywhere" / "they" / "like"
    pipe.set_params(
        clip__cache_dir=str(elsewhere),
        clip__n_jobs=3,
        clip__batch_size=7,
        clip__cache_size=5,
        clip__runtime="torch",
        tip__device="cpu",
    )
    shared = tmp_path / f"shared{suffix}"
    save_model(pipe, shared)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(shared), data_dir, "--output", str(out), "-q"]) == 0
    assert not (tmp_path / "anywhere").exists()
    loaded = load_model(shared)
    params = loaded.named_steps["clip"].get_params()
    assert (params["cache_dir"], params["n_jobs"], params["batch_size"]) == (None, None, 32)
    assert (params["cache_size"], params["runtime"]) == (100_000, "auto")
    assert loaded.named_steps["tip"].device == "auto"
    capsys.readouterr()
    from skclip import CLIPFeaturizer

    CLIPFeaturizer.cache_clear()  # encoded again: written to the command's cache folder
    mine = tmp_path / "mine"
    assert (
        main(
            [
                "predict",
                str(shared),
                data_dir,
                "--output",
                str(out),
                "-v",
                "--cache-dir",
                str(mine),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"clip__cache_dir: {str(elsewhere)!r} -> {str(mine)!r}" in err
    assert "clip__n_jobs: 3 -> None" in err and "tip__device: 'cpu' -> 'cpu'" not in err
    assert len(list(mine.rglob("*.emb"))) == 18  # the command's own cache folder
    assert not (tmp_path / "anywhere").exists()


def test_19_9_predict_with_an_int8_featurizer(data_dir, tiny_clip_path, tmp_path, image_folder):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sklearn.pipeline import Pipeline

    from skclip import CLIPFeaturizer, TipAdapterClassifier

    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, dtype="int8")),
            ("tip", TipAdapterClassifier(clip_model=tiny_clip_path)),
        ]
    ).fit(paths, labels)
    model = tmp_path / "int8.joblib"
    joblib.dump(pipe, model)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model), *paths, "--output", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["prediction"] for row in rows] == list(pipe.predict(paths))


def test_19_11_a_full_disk_error_names_the_file(model_file, data_dir, tmp_path, capsys):
    """Writing the predictions to a full file system: the error says which file."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    folder = tmp_path / "full"
    folder.mkdir()
    out = folder / "preds.csv"
    code = (
        "import sys; from skclip.cli import main; "
        f"sys.exit(main(['predict', {str(model_file)!r}, {data_dir!r}, '--output', "
        f"{str(out)!r}, '-q', '--proba']))"
    )
    setup = (
        f"mount -t tmpfs -o size=4k,mode=755 tmpfs '{folder}' && "
        f"(head -c 100000 /dev/zero > '{folder}/filler' 2>/dev/null; true) && "
    )
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not permitted here: {probe.stderr!r}")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", setup + '"$0" -c "$1"', sys.executable, code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])),
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"No space left on device: {str(out)!r}" in done.stderr


# -- issue 20 ---------------------------------------------------------------------------------
@pytest.fixture
def folder_with_a_fifo(data_dir, tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    os.mkfifo(root / "red_apple" / "pipe.jpg")
    return root


def test_i20_2_predict_folder_with_a_fifo_does_not_hang(folder_with_a_fifo, model_file, tmp_path):
    """Issue 20, case 2: a FIFO named pipe.jpg in the folder made predict hang."""
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skclip",
            "predict",
            str(model_file),
            str(folder_with_a_fifo),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped 1 entries that are not regular files" in done.stderr
    assert "pipe.jpg" in done.stderr
    rows = _rows(out)  # one dict per image
    assert len(rows) == 18 and not any("pipe.jpg" in r["path"] for r in rows)


def test_i20_2_fifo_given_as_an_image(folder_with_a_fifo, model_file, capsys):
    """It was reported as "does not exist"."""
    fifo = folder_with_a_fifo / "red_apple" / "pipe.jpg"
    assert main(["predict", str(model_file), str(fifo), "-q"]) == 1
    assert f"Image {str(fifo)!r} is a FIFO (named pipe), not an image file" in (
        capsys.readouterr().err
    )


def test_i20_6_joblib_note_even_with_quiet(model_file, data_dir, tmp_path, capsys):
    """Issue 20, case 6: with -q, loading a .joblib (which runs code) said nothing."""
    out = str(tmp_path / "p.csv")
    assert main(["predict", str(model_file), data_dir, "-q", "--output", out]) == 0
    assert "note: loading a .joblib file runs code stored in it" in capsys.readouterr().err


def test_i20_minor_fit_suggests_on_error_skip(
    folder_with_a_bad_image, tiny_clip_path, tmp_path, capsys
):
    """docs/cli.rst promises the suggestion for fit too."""
    root, bad = folder_with_a_bad_image
    out = str(tmp_path / "m.joblib")
    assert main(["fit", str(root), "-o", out, "--model", tiny_clip_path, "-q"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "pass --on-error skip to leave them out" in err


def test_i20_minor_test_dir_classes_are_named_plainly(data_dir, tiny_clip_path, tmp_path, capsys):
    other = tmp_path / "test"
    shutil.copytree(data_dir, other)
    (other / "red_apple").rename(other / "zebra")
    args = ["evaluate", data_dir, "--test-dir", str(other), "--model", tiny_clip_path, "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--test-dir has classes not in" in err and "['zebra']" in err and "np.str_" not in err


def test_i20_minor_predict_folder_says_what_it_skips(data_dir, model_file, tmp_path, capsys):
    """Folder predict skipped .gif (an image Pillow reads) and .heic silently."""
    from PIL import Image

    folder = tmp_path / "new"
    folder.mkdir()
    Image.open(next(Path(data_dir, "red_apple").iterdir())).save(folder / "a.gif")
    (folder / "b.heic").write_bytes(b"\0" * 16)
    (folder / "c.HEIC").write_bytes(b"\0" * 16)
    out = tmp_path / "p.csv"
    assert main(["predict", str(model_file), str(folder), "--output", str(out)]) == 0
    assert [r["path"] for r in _rows(out)] == [str(folder / "a.gif")]
    assert "skipped 2 file(s) that are not images by their extension: .heic (2)" in (
        capsys.readouterr().err
    )


_LOAD = """
import sys
from skclip.backbones.loading import load_backbone as load_model
try:
    load_model(sys.argv[1])
    print("LOADED")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("what", ["file", "folder"])
def test_i20_minor_unreadable_checkpoint_is_named(tiny_clip_path, tmp_path, what):
    """An unreadable checkpoint said "No such file" (or "Unrecognized model"). Run as
    another user in a user namespace, where permissions apply (they do not to root)."""
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_path, folder)
    os.chmod(folder / "model.safetensors" if what == "file" else folder, 0)
    cmd = [
        "unshare",
        "--user",
        "--map-user=1000",
        "--map-group=1000",
        sys.executable,
        "-c",
        _LOAD,
        str(folder),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(folder / "model.safetensors" if what == "file" else folder, 0o755)
    if done.returncode != 0 or not done.stdout:
        pytest.skip(f"user namespaces are not permitted here: {done.stderr.strip()[:200]}")
    expected = (
        "its file 'model.safetensors' is not readable"
        if what == "file"
        else ("cannot be read: Permission denied")
    )
    assert done.stdout.startswith("OSError") and expected in done.stdout, done.stdout
    assert "No such file" not in done.stdout
