"""The command line speaks plainly: library warnings become one ``skclip: note:`` line
each (no ``UserWarning``, no source line, once per run, even with ``-q``), worded for
someone who cannot set Python parameters; ``fit`` prints numbers as the reports do."""

from __future__ import annotations

import re
import shutil
import warnings
from types import SimpleNamespace

import joblib
import numpy as np
import pytest

from skclip.cli import main
from skclip.cli.messages import PREFIX, plain_text, plain_warnings
from skclip.cli.report.summary import number

#: A Python parameter (``leave_one_out=False``), a fitted attribute, or the docstrings.
PYTHON = re.compile(r"\b[a-z]+_[a-z_]*=|\b[a-z]+_\b|see the Notes|Warning")


def _caught(make) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    assert caught, "the library no longer warns here"
    return caught


def _fine_tune_one_shot():
    from skclip.heads._finetune import _query_rows

    _query_rows(np.array([0, 1]), 2, True)


def _gda_one_shot():
    from skclip import GDAClassifier

    GDAClassifier(clip_model=None).fit(np.eye(3, 4, dtype=np.float32) + 0.1, ["a", "b", "c"])


def _not_converged():
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).normal(size=(40, 5))
    LogisticRegression(max_iter=1).fit(X, (X[:, 0] > 0).astype(int))


def _zero_rows():
    from skclip.heads._base import _unit_rows

    _unit_rows(np.zeros((2, 4), np.float32))


def _cache_folder(tmp_path):
    from skclip.encoding.cache import _degrade

    _degrade(tmp_path / "cache", "is on a read-only file system")


def _class_link(tmp_path):
    from PIL import Image

    from skclip.datasets import load_image_folder

    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (root / "a", root / "c", outside):
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "x.png")
    (root / "b").symlink_to(outside)
    load_image_folder(root)


def _temperature():
    from skclip.calibration import _fit_temperature

    _fit_temperature(np.array([[5.0, 0.0], [0.0, 5.0]]), np.array([0, 1]))


def _conformal():
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression

    from skclip.conformal import MondrianConformalClassifier

    X, y = np.array([[0.0], [1.0], [0.1], [0.9]]), np.array([0, 1, 0, 1])
    fitted = FrozenEstimator(LogisticRegression().fit(X, y))
    MondrianConformalClassifier(fitted, confidence_level=0.9).conformalize(X, y)


def _onnx():
    from skclip.backbones.onnx import warn_fallback

    warn_fallback(SimpleNamespace(name=f"tiny-{np.random.rand()}"), RuntimeError("no op"))


#: Each library warning the command rewrites, and what its note must say.
CASES = {
    "fine-tune, 1 shot": (_fine_tune_one_shot, None, False),
    "fine-tune, inner folds": (_fine_tune_one_shot, "Tip-Adapter-F", True),
    "GDA, 1 shot": (_gda_one_shot, None, False),
    "ConvergenceWarning": (_not_converged, "linear probe", False),
    "ZeroFeaturesWarning": (_zero_rows, None, False),
    "CacheDirWarning": (_cache_folder, None, False),
    "class folder link": (_class_link, None, False),
    "temperature": (_temperature, None, False),
    "conformal": (_conformal, None, False),
    "onnx fallback": (_onnx, None, False),
}
EXPECTED = {
    "fine-tune, 1 shot": "1 shot per class: Tip-Adapter-F trains nothing, the keys are "
    "Tip-Adapter's",
    "fine-tune, inner folds": "Tip-Adapter-F: folds of the inner cross-validation have 1 "
    "training image per class, where it trains nothing",
    "GDA, 1 shot": "1 shot per class: GDA has no covariance to learn",
    "ConvergenceWarning": "linear probe: lbfgs did not converge within 1 iteration;",
    "ZeroFeaturesWarning": "2 embedding(s) of all zeros",
    "CacheDirWarning": "is on a read-only file system: its entries are read, new "
    "embeddings stay in memory",
    "class folder link": "outside the image folder: skipped. Pass --follow-symlinks to use it",
    "temperature": "Temperature scaling has no useful optimum: every held-out sample",
    "conformal": "--coverage 0.9: too few calibration images in the classes [",
    "onnx fallback": "in ONNX Runtime (RuntimeError('no op')): PyTorch runs it instead",
}


def _library_warnings(name, tmp_path):
    make, _, _ = CASES[name]
    takes_path = make in (_cache_folder, _class_link)
    return _caught((lambda: make(tmp_path)) if takes_path else make)


@pytest.mark.parametrize("name", CASES)
def test_each_library_warning_reads_as_one_plain_line(name, tmp_path):
    _, method, inner_cv = CASES[name]
    for caught in _library_warnings(name, tmp_path):
        line = plain_text(str(caught.message), method, inner_cv)
        assert EXPECTED[name] in line, line
        assert "\n" not in line and not PYTHON.search(line), line


def test_the_command_shows_each_warning_once_as_a_note(
    tmp_path, tiny_clip_path, image_folder, monkeypatch, capsys
):
    """A real ``skclip fit --fine-tune -q`` on 2 images per class (inner folds of 1 image
    per class train nothing), during which every other library warning is raised
    twice as well: each is one ``skclip: note:`` line, once, and nothing else is on
    stderr."""
    from skclip.model_selection import TipAdapterClassifierCV

    raised = [w for name in CASES for w in _library_warnings(name, tmp_path / name[:4])]
    fit = TipAdapterClassifierCV.fit

    def fit_and_warn(self, X, y):
        for w in raised * 2:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return fit(self, X, y)

    monkeypatch.setattr(TipAdapterClassifierCV, "fit", fit_and_warn)
    paths, labels = image_folder
    root = tmp_path / "two"
    for c in np.unique(labels):
        (root / c).mkdir(parents=True)
        for path in np.asarray(paths)[labels == c][:2]:
            shutil.copy(path, root / c)
    args = ["fit", str(root), "-o", str(tmp_path / "m.joblib"), "--fine-tune", "-q"]
    assert main([*args, "--model", tiny_clip_path]) == 0
    out, err = capsys.readouterr()
    tip = joblib.load(tmp_path / "m.joblib").named_steps["tip"]  # rounded as the reports do
    assert f"alpha={number(tip.alpha_)} beta={number(tip.beta_)} (2-fold" in out
    lines = err.splitlines()
    assert lines and all(line.startswith(PREFIX) for line in lines), err
    assert len(lines) == len(set(lines))  # once per run
    assert "UserWarning" not in err and "Warning:" not in err and "warn(" not in err
    said = [line[len(PREFIX) :] for line in lines]
    assert any(EXPECTED["fine-tune, inner folds"] in s for s in said)  # the fit's own
    # fit names no method; its warnings may come from the cv folds
    assert set(said) == {plain_text(str(w.message), None, True) for w in raised}


def test_notes_are_kept_in_order_and_filters_respected():
    before = warnings.showwarning
    with plain_warnings() as said:
        warnings.warn("First thing. Set knob_level=3 to change it.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.warn("Ignored by the filters.")
        warnings.warn("Second thing (see the Notes).", RuntimeWarning)
    assert said == ["First thing", "Second thing"]
    assert warnings.showwarning is before
