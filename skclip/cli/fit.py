"""``skclip fit``: fit a featurizer and Tip-Adapter on a folder, save the model file."""

from __future__ import annotations

import argparse
from typing import Any
from pathlib import Path

import numpy as np

from .._images import ImageLoadError, readable
from .model_file import MODEL_SUFFIXES, require_skops
from . import messages
from .report.summary import check_output_path, number
from .common import (
    _Say,
    _check_common,
    _check_data_folder,
    _featurize,
    _featurizer,
    _resolve_model,
    _skipped,
    _writing,
)
from .evaluate import _smallest_class, _too_few_for_cv
from .coverage import calibration_split, check_coverage
from .methods import _text_model


def fit_command(args: argparse.Namespace) -> int:
    """``skclip fit``: see the sub-command's help."""
    from sklearn.pipeline import Pipeline

    from .model_file import save_model
    from ..datasets import load_image_folder
    from ..model_selection import TipAdapterClassifierCV

    say = _Say(args.quiet)
    args.model = _resolve_model(args.model, say)
    _check_common(args)
    check_output_path(args.output, "-o/--output", MODEL_SUFFIXES)
    if Path(args.output).suffix.lower() == ".skops":
        require_skops()
    _check_data_folder(args.data_dir, "DATA_DIR")
    data = load_image_folder(args.data_dir, follow_symlinks=args.follow_symlinks)
    if _smallest_class(data.labels) < 2:
        raise ValueError("Every class needs at least 2 images to choose alpha and beta.")
    if args.cv is not None and args.cv > _smallest_class(data.labels):
        raise _too_few_for_cv(args.cv, _smallest_class(data.labels))
    say.step(f"{args.data_dir}: {len(data.labels)} images in {len(data.target_names)} classes")
    check_coverage(args.coverage, data.labels, args.random_state)  # before any encoding
    cal_files, cal_labels, skipped = _usable(args, data, say)
    files, labels, calibration = _keep_back(args, cal_files, cal_labels)
    cv = min(5, _smallest_class(labels)) if args.cv is None else args.cv
    pipe = Pipeline(
        [
            ("clip", _featurizer(args)),
            (
                "tip",
                TipAdapterClassifierCV(
                    clip_model=_text_model(args),
                    device=args.device,
                    cv=cv,
                    fine_tune=args.fine_tune,
                    random_state=args.random_state,
                ),
            ),
        ]
    )
    say.step(f"fitting on {len(files)} images ({cv}-fold choice of alpha and beta)")
    try:
        with messages.about(None, inner_cv=True):  # warnings of the cv folds say so
            pipe.fit(files, labels)
        if calibration is not None:
            pipe = _calibrated(pipe, cal_files, cal_labels, calibration, args.coverage)
    except ImageLoadError as exc:  # every unreadable image, named: say what to do
        raise ValueError(
            f"{readable(str(exc))}\nFix or remove them, or pass --on-error skip to leave them out."
        ) from None
    with _writing(args.output):
        save_model(pipe, args.output)
    tip = pipe.named_steps["tip"] if calibration is None else _classifier(pipe)
    print(
        f"saved {args.output}: {len(labels)} images, classes {data.target_names.tolist()}, "
        f"{_choice(tip, cv)}"
        + ("" if calibration is None else _calibration_note(pipe, calibration))
        + (f"; skipped {len(skipped)} unreadable images" if skipped else "")
        + f"; model {args.model}"
    )
    return 0


def _choice(tip: Any, cv: int) -> str:
    """alpha and beta, rounded as the reports round them, and their cv accuracy."""
    return (
        f"alpha={number(tip.alpha_)} beta={number(tip.beta_)} "
        f"({cv}-fold accuracy {tip.best_score_:.3f})"
    )


def _keep_back(args: argparse.Namespace, files: Any, labels: Any) -> tuple[Any, Any, list | None]:
    """The images to fit the classifier on, and with ``--coverage`` the indices (into
    ``files``) of the calibration part: [temperature, conformal thresholds]."""
    if args.coverage is None:
        return files, labels, None
    rest, *calibration = calibration_split(labels, args.random_state, what="images")
    if args.cv is not None and args.cv > _smallest_class(labels[rest]):
        raise ValueError(
            "--coverage leaves half of each class's images to fit on: "
            f"{_too_few_for_cv(args.cv, _smallest_class(labels[rest]))}"
        )
    return files[rest], labels[rest], calibration


def _calibrated(pipe: Any, files: Any, labels: Any, parts: list, level: float) -> Any:
    """``Pipeline([featurizer, conformal])``: the fitted classifier, temperature-scaled
    on the images ``parts[0]`` and conformalized at ``level`` on ``parts[1]``."""
    from sklearn.pipeline import Pipeline

    from .coverage import calibrate

    featurizer, head = pipe.named_steps["clip"], pipe.named_steps["tip"]
    temp, conf = parts
    X_temp, X_conf = featurizer.transform(files[temp]), featurizer.transform(files[conf])
    conformal = calibrate(head, X_temp, labels[temp], X_conf, labels[conf], level)
    return Pipeline([("clip", featurizer), ("conformal", conformal)])


def _classifier(pipe: Any) -> Any:
    from .model_file import calibrated_classifier

    return calibrated_classifier(pipe.named_steps["conformal"])


def _calibration_note(pipe: Any, parts: list) -> str:
    conformal = pipe.named_steps["conformal"]
    return (
        f"; calibrated at {conformal.confidence_level:g} on {len(parts[0]) + len(parts[1])} "
        f"kept-back images (temperature {number(conformal.estimator_.temperature_)} on "
        f"{len(parts[0])}, per-class conformal thresholds on {len(parts[1])})"
    )


def _usable(args: argparse.Namespace, data: Any, say: _Say) -> tuple[Any, Any, list[dict]]:
    """The files and labels to fit on, and the skipped ones: with ``--on-error skip``, the
    unreadable files are found first (their embeddings stay cached) and left out."""
    files, labels = data.filenames, data.labels
    if args.on_error != "skip":
        return files, labels, []
    say.step(f"encoding {len(files)} images with {args.model}")
    _, bad = _featurize(_featurizer(args), files, "skip")
    skipped = _skipped(files, bad, say)
    keep = np.setdiff1d(np.arange(len(files)), list(bad))
    files, labels = files[keep], labels[keep]
    smallest = min(int(np.sum(labels == c)) for c in data.target_names)
    if smallest < 2:
        raise ValueError(
            f"After skipping {len(bad)} unreadable image(s), a class has "
            f"{smallest} image(s): fewer than 2 to choose alpha and beta."
        )
    if args.cv is not None and args.cv > smallest:
        raise ValueError(
            f"After skipping {len(bad)} unreadable image(s): {_too_few_for_cv(args.cv, smallest)}"
        )
    return files, labels, skipped
