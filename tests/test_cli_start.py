"""The command line at a person's pace: a fast start, exit status 2 for a wrong command
line, a moved checkpoint said plainly, the real default model in the help, a demo model
to try skclip offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from skclip.cli import main

ROOT = Path(__file__).parents[1]

#: Imported by the commands' code, never by the parser.
HEAVY = ("torch", "transformers", "PIL", "sklearn", "scipy", "numpy", "huggingface_hub")

START_UP = r"""
import contextlib, io, json, sys
from skclip.cli import main
from skclip.cli.parser import build_parser

sub = next(a for a in build_parser()._actions if a.dest == "command")
runs = [["--help"], ["--version"], ["no-such-command"]]
for command in sub.choices:
    runs += [[command, "--help"], [command], [command, "--no-such-option"]]
runs += [
    ["evaluate", ".", "--cv", "1"],
    ["evaluate", ".", "--report", "r.txt"],
    ["fit", ".", "-o", "model.pkl"],
    ["predict", "photo.jpg", "model.skops"],
    ["predict", "model.skops", "x.jpg", "--coverage", "1.5"],
]
codes = {}
for argv in runs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes[" ".join(argv)] = main(argv)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"commands": sorted(sub.choices), "codes": codes, "heavy": heavy}))
"""


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environ, cwd=ROOT
    )


# -- 1. fast start ----------------------------------------------------------------------------
def test_help_and_usage_errors_import_nothing_heavy():
    """Every command's --help, a missing argument, an unknown option and the value checks
    are answered by the parser alone: torch, transformers, PIL, scikit-learn, SciPy,
    NumPy and the hub client are never imported (they took 3-6 s before each answer)."""
    done = _python(START_UP, *HEAVY)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {"evaluate", "fit", "predict", "demo-model"} <= set(found["commands"])
    codes = found["codes"]
    assert codes["--help"] == codes["fit --help"] == codes["--version"] == 0
    assert codes["fit"] == codes["predict photo.jpg model.skops"] == 2
    assert set(codes.values()) == {0, 2}
    assert found["heavy"] == []


def test_import_skclip_is_light_and_the_names_still_work():
    """``import skclip`` imports the public names on first use (PEP 562)."""
    code = (
        "import sys, skclip\n"
        "light = 'torch' not in sys.modules and 'sklearn' not in sys.modules\n"
        "from skclip import CLIPFeaturizer, TipAdapterClassifierCV, ImageLoadWarning\n"
        "from skclip.featurizer import CLIPFeaturizer as F\n"
        "print(light, CLIPFeaturizer is F, set(skclip.__all__) <= set(dir(skclip)))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


def test_unknown_public_name_is_an_attribute_error():
    import skclip

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchClassifier'"):
        skclip.NoSuchClassifier  # noqa: B018
    assert skclip.__version__


# -- 2. a wrong command line exits 2 ---------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(image_folder):
    paths, _ = image_folder
    return str(Path(paths[0]).parents[1])


@pytest.fixture(scope="module")
def model_file(data_dir, tiny_clip_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    assert main(["fit", data_dir, "-o", str(path), "--model", tiny_clip_path, "-q"]) == 0
    return path


USAGE_ERRORS = {
    "report suffix": (
        ["evaluate", "{data}", "--report", "{tmp}/r.txt"],
        "argument --report: must end in .json or .md or .html",
    ),
    "report folder": (
        ["evaluate", "{data}", "--report", "{tmp}/out.json"],
        "argument --report: '{tmp}/out.json' is a folder; give a file name",
    ),
    "shots": (
        ["evaluate", "{data}", "--shots", "0"],
        "argument --shots: must be at least 1, got 0",
    ),
    "evaluate cv": (
        ["evaluate", "{data}", "--cv", "1"],
        "argument --cv: must be at least 2, got 1",
    ),
    "cv not a number": (["evaluate", "{data}", "--cv", "two"], "must be a whole number, got 'two'"),
    "batch size": (
        ["evaluate", "{data}", "--batch-size", "0"],
        "argument --batch-size: must be at least 1",
    ),
    "augment": (
        ["fit", "{data}", "-o", "{tmp}/m.skops", "--augment", "-1"],
        "argument --augment: must be at least 0",
    ),
    "coverage": (
        ["evaluate", "{data}", "--coverage", "1"],
        "argument --coverage: must be strictly between 0 and 1",
    ),
    "device": (
        ["evaluate", "{data}", "--device", "gpu"],
        "argument --device: must be auto, cpu, cuda",
    ),
    "cache-dir a file": (
        ["evaluate", "{data}", "--cache-dir", "{model}"],
        "argument --cache-dir: '{model}' is a file, not a folder",
    ),
    "model a file": (
        ["evaluate", "{data}", "--model", "{model}"],
        "argument --model: '{model}' is a file, not a checkpoint folder",
    ),
    "test-dir a file": (
        ["evaluate", "{data}", "--test-dir", "{model}"],
        "argument --test-dir: '{model}' is a file",
    ),
    "data dir a model file": (
        ["evaluate", "{model}"],
        "argument DATA_DIR: '{model}' is a file, not a folder with one sub-folder of images "
        "per class (a model file",
    ),
    "fit output suffix": (
        ["fit", "{data}", "-o", "{tmp}/model.pkl"],
        "argument -o/--output: must end in .joblib or .skops, got",
    ),
    "fit output missing": (["fit", "{data}"], "the following arguments are required: -o/--output"),
    "fit cv": (
        ["fit", "{data}", "-o", "{tmp}/m.skops", "--cv", "1"],
        "argument --cv: must be at least 2",
    ),
    "fit coverage": (
        ["fit", "{data}", "-o", "{tmp}/m.skops", "--coverage", "abc"],
        "argument --coverage: must be strictly between 0 and 1, such as 0.9, got 'abc'",
    ),
    "swapped": (
        ["predict", "{image}", "{model}"],
        "argument MODEL_FILE: '{image}' is an image, not a model file (the model file comes first",
    ),
    "folder as model": (
        ["predict", "{data}", "{model}"],
        "argument MODEL_FILE: '{data}' is a folder, not a model file",
    ),
    "other suffix": (
        ["predict", "{tmp}/model.pkl", "{data}"],
        "is not a model file: model files written by 'skclip fit' end in .joblib or .skops",
    ),
    "predict output folder": (
        ["predict", "{model}", "{data}", "--output", "{tmp}"],
        "argument --output: '{tmp}' is a folder",
    ),
    "predict coverage": (
        ["predict", "{model}", "{data}", "--coverage", "2"],
        "argument --coverage: must be strictly between 0 and 1",
    ),
    "predict coverage text": (["predict", "{model}", "{data}", "--coverage", "most"], "got 'most'"),
    "demo-model a file": (
        ["demo-model", "{model}"],
        "argument DIR: '{model}' is a file, not a folder",
    ),
    "quiet and verbose": (
        ["predict", "{model}", "{data}", "-q", "-v"],
        "not allowed with argument",
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_a_wrong_command_line_exits_2_with_the_usage(case, data_dir, model_file, tmp_path, capsys):
    """Everything the command line alone shows to be wrong: argparse's usage, the
    message, exit status 2, and nothing run (nor imported: see the test above)."""
    argv, message = USAGE_ERRORS[case]
    (tmp_path / "out.json").mkdir()
    image = next(Path(data_dir).rglob("*.jpg"))
    fill = {"data": data_dir, "tmp": str(tmp_path), "model": str(model_file), "image": str(image)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: skclip {argv[0]} ")
    assert message.format(**fill) in " ".join(err.split())


def test_data_and_model_problems_still_exit_1(data_dir, tiny_clip_path, tmp_path, capsys):
    """What the files decide, not the command line: exit 1 and one line, no usage."""
    runs = {
        "does not exist": ["evaluate", str(tmp_path / "nope"), "--model", tiny_clip_path],
        "needs at least 7 images in every class": [
            "fit",
            data_dir,
            "-o",
            str(tmp_path / "m.skops"),
            "--model",
            tiny_clip_path,
            "--cv",
            "7",
        ],
        "Model file": ["predict", str(tmp_path / "none.joblib"), "x.jpg"],
        "the folder": [
            "fit",
            data_dir,
            "-o",
            str(tmp_path / "no" / "m.skops"),
            "--model",
            tiny_clip_path,
        ],
    }
    for said, argv in runs.items():
        assert main([*argv, "-q"]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("skclip: error: ") and said in err and "usage:" not in err


# -- 3. a checkpoint folder that moved --------------------------------------------------------
def test_moved_checkpoint_names_the_recorded_folder_and_model_option(
    data_dir, tiny_clip_path, tmp_path, capsys
):
    """The message named neither the model file's record nor ``--model``; with
    ``--model`` given, predict said "recorded as" although it records nothing."""
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_path, clip)
    model = str(tmp_path / "m.joblib")
    assert main(["fit", data_dir, "-o", model, "--model", str(clip), "--cv", "2", "-q"]) == 0
    recorded = joblib.load(model).named_steps["clip"].model
    moved = tmp_path / "moved" / "clip"
    moved.parent.mkdir()
    shutil.move(clip, moved)

    assert main(["predict", model, data_dir, "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{model!r} was fitted with the checkpoint folder {recorded!r}" in err
    assert "does not exist any more" in err
    assert f"skclip predict {model} IMAGES... --model NEW_FOLDER" in err

    os.chdir(tmp_path)  # a relative --model: made absolute for this run only
    try:
        assert main(["predict", model, data_dir, "--model", "moved/clip"]) == 0
    finally:
        os.chdir(ROOT)
    err = capsys.readouterr().err
    assert "recorded as" not in err
    absolute = str(moved.resolve())
    assert f"--model 'moved/clip' is a local folder: using {absolute!r} for this run" in err
    assert joblib.load(model).named_steps["clip"].model == recorded


# -- 4. the default model in the help ---------------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "fit"])
def test_help_shows_the_built_in_default_and_the_environment_separately(
    command, monkeypatch, capsys
):
    from skclip.backbones._hub import DEFAULT_MODEL

    monkeypatch.delenv("SKCLIP_MODEL", raising=False)
    assert main([command, "--help"]) == 0
    plain = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_MODEL})" in plain and "$SKCLIP_MODEL is set" not in plain

    monkeypatch.setenv("SKCLIP_MODEL", "/models/my-100%-clip")
    assert main([command, "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (
        f"(default: {DEFAULT_MODEL}; $SKCLIP_MODEL is set to '/models/my-100%-clip' and used "
        "instead)"
    ) in said


def test_the_environment_model_is_used_and_named_in_its_errors(
    data_dir, tmp_path, monkeypatch, capsys
):
    gone = str(tmp_path / "gone")
    monkeypatch.setenv("SKCLIP_MODEL", gone)
    assert main(["evaluate", data_dir, "-q"]) == 1
    assert f"$SKCLIP_MODEL {gone!r}: the folder does not exist" in capsys.readouterr().err


# -- 5. a demo model to try skclip offline ----------------------------------------------------
def test_demo_model_is_a_checkpoint_every_command_uses(data_dir, tmp_path, capsys):
    folder = str(tmp_path / "tiny-clip")
    assert main(["demo-model", folder]) == 0
    assert f"saved a random CLIP checkpoint in {folder}" in capsys.readouterr().out
    report = tmp_path / "r.json"
    args = ["evaluate", data_dir, "--model", folder, "--cv", "2", "-q", "--report", str(report)]
    assert main(args) == 0
    assert json.loads(report.read_text())["model"] == str(Path(folder).resolve())
    assert main(["demo-model", folder]) == 1  # never overwrites
    assert "already holds files" in capsys.readouterr().err


def test_predict_coverage_alone_means_the_stored_level():
    """``--coverage`` without a value (a string const would go through the type)."""
    from skclip.cli.parser import build_parser

    parse = build_parser().parse_args
    assert parse(["predict", "m.skops", "x.jpg", "--coverage"]).coverage is True
    assert parse(["predict", "m.skops", "x.jpg", "--coverage", "0.8"]).coverage == 0.8
    assert parse(["predict", "m.skops", "x.jpg"]).coverage is None
