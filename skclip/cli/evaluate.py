"""``skclip evaluate``: the protocol (splits, inner cross-validation, scores, mistakes)."""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

import numpy as np

from . import messages
from .report import write_report
from .arguments import REPORT_SUFFIXES
from .report.summary import check_output_path, render_markdown, shown_method
from .common import (
    _Say,
    _check_common,
    _check_data_folder,
    _featurize,
    _featurizer,
    _resolve_model,
    _scores,
    _skipped,
    _writing,
)
from .coverage import coverage_entry, protocol_text
from .methods import _chosen, _methods


def _smallest_class(y: np.ndarray) -> int:
    return int(np.unique(y, return_counts=True)[1].min())


def _too_few_for_cv(folds: int, smallest: int, what: str = "images") -> ValueError:
    return ValueError(
        f"--cv {folds} needs at least {folds} {what} in every class; the smallest class has "
        f"{smallest}: use a smaller --cv."
    )


def _inner_cv(smallest_train: int, requested: int | None) -> int | None:
    """Folds of the inner CV choosing alpha and beta, given the smallest class's number
    of training images; ``None``: too few to cross-validate (the defaults are used).
    A requested number of folds that the smallest class does not allow is an error."""
    if requested is not None:
        if requested > smallest_train:
            raise _too_few_for_cv(
                requested, smallest_train, "training images (inner cross-validation)"
            )
        return requested
    return min(5, smallest_train) if smallest_train >= 2 else None


def _splits(args: argparse.Namespace, y: np.ndarray) -> dict:
    """The protocol from the labels alone (no image is opened): outer splits and the
    inner CV. Raises a ValueError for anything the class sizes do not allow."""
    from sklearn.model_selection import StratifiedKFold

    from ..model_selection import few_shot_split

    if args.shots is None and args.test_dir is None:
        folds = 5 if args.cv is None else args.cv
        if _smallest_class(y) < folds:
            raise _too_few_for_cv(folds, _smallest_class(y))
        outer = StratifiedKFold(folds, shuffle=True, random_state=args.random_state)
        splits = list(outer.split(np.zeros(len(y)), y))
        smallest_train = min(_smallest_class(y[train]) for train, _ in splits)
        return {
            "splits": splits,
            "cv": folds,
            "inner_cv": _inner_cv(smallest_train, None),
            "protocol": f"{folds}-fold stratified cross-validation",
        }
    if args.shots is not None and args.test_dir is not None:
        train, test_idx = _shots_per_class(y, args.shots, args.random_state), None
    elif args.shots is not None:
        train, test_idx = few_shot_split(y, args.shots, random_state=args.random_state)
    else:
        train, test_idx = np.arange(len(y)), None
    if args.test_dir is not None:
        test_idx = None  # the test folder
        protocol = f"train on {args.data_dir}, test on {args.test_dir}"
        if args.shots is not None:
            protocol = f"{args.shots} images per class of {args.data_dir}, test on {args.test_dir}"
    else:
        protocol = f"{args.shots}-shot split, the other images as test set"
    inner_cv = _inner_cv(_smallest_class(y[train]), args.cv)
    return {"splits": [(train, test_idx)], "cv": None, "inner_cv": inner_cv, "protocol": protocol}


def _shots_per_class(y: np.ndarray, shots: int, random_state: int) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (with ``--test-dir``, where no image
    of DATA_DIR is kept to test on, so a class may have exactly ``shots``)."""
    classes, counts = np.unique(y, return_counts=True)
    short = [f"{c!r} ({n})" for c, n in zip(classes.tolist(), counts.tolist()) if n < shots]
    if short:
        raise ValueError(
            f"--shots {shots} needs {shots} training images in every class; "
            "these have fewer: " + ", ".join(short) + "."
        )
    rng = np.random.RandomState(random_state)
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in classes])
    )


def _check_evaluate(args: argparse.Namespace) -> tuple[Any, Any]:
    """Check everything that can be checked from the arguments and the folder listings,
    before any model is loaded or image encoded; return the listings."""
    from ..datasets import load_image_folder

    _check_common(args)  # --shots, --cv and --report's suffix: checked by the parser
    if args.report:  # its folder exists and it can be written (exit 1 otherwise)
        check_output_path(args.report, "--report", REPORT_SUFFIXES)
    _check_data_folder(args.data_dir, "DATA_DIR")
    data = load_image_folder(args.data_dir, follow_symlinks=args.follow_symlinks)
    test = None
    if args.test_dir:
        _check_data_folder(args.test_dir, "--test-dir")
        test = load_image_folder(args.test_dir, follow_symlinks=args.follow_symlinks)
        unknown = sorted(set(test.labels.tolist()) - set(data.target_names.tolist()))
        if unknown:
            raise ValueError(f"--test-dir has classes not in {args.data_dir}: {unknown}.")
    _check_coverage(args, _splits(args, data.labels), data.labels)
    return data, test


def _check_coverage(args: argparse.Namespace, plan: dict, y: np.ndarray) -> None:
    """With ``--coverage``: a valid level, and enough training images in every class of
    every split for the calibration part (an error naming the classes otherwise)."""
    from .coverage import calibration_split, check_level

    check_level(args.coverage)
    if args.coverage is not None:
        for train, _ in plan["splits"]:
            calibration_split(y[train], args.random_state, what="training images per split")


#: Most misclassified images in the HTML report's gallery (an equal share per method).
GALLERY_SIZE = 60


def _mistakes(
    fitted: Any, X_q: np.ndarray, y_q: np.ndarray, files_q: np.ndarray, pred: np.ndarray
) -> list[dict[str, Any]]:
    """The misclassified queries with the predicted class's probability."""
    wrong = np.flatnonzero(pred != y_q)
    if not len(wrong):
        return []
    proba = fitted.predict_proba(X_q[wrong])
    column = {c: j for j, c in enumerate(fitted.classes_)}
    return [
        {
            "path": str(files_q[i]),
            "true": str(y_q[i]),
            "pred": str(pred[i]),
            "confidence": float(proba[k, column[pred[i]]]),
        }
        for k, i in enumerate(wrong)
    ]


def _after_skipping(
    args: argparse.Namespace,
    classes: np.ndarray,
    y: np.ndarray,
    n_skipped: int,
    y_test: np.ndarray | None = None,
    test_classes: np.ndarray | None = None,
) -> dict:
    """The protocol again once unreadable images are left out: a class without images,
    without a test image, or too small for ``--shots``/``--cv`` now, is an error that
    says the skipped images caused it."""
    after = f"After skipping {n_skipped} unreadable image(s)"
    for c in map(str, classes):
        if not np.any(y == c):
            raise ValueError(f"{after}, class {c!r} of {args.data_dir} has no image left.")
    if test_classes is not None:
        for c in map(str, test_classes):
            if not np.any(y_test == c):
                raise ValueError(
                    f"{after}, class {c!r} of --test-dir {args.test_dir} has no test image left."
                )
    if args.shots is not None and args.test_dir is None:
        counts = {str(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))}
        for c in map(str, classes):
            if counts[c] <= args.shots:
                raise ValueError(
                    f"{after}, class {c!r} has {counts[c]} image(s): none left to test after "
                    f"its {args.shots} training images (--shots {args.shots}). Use a smaller "
                    "--shots, or fix the files."
                )
    try:
        return _splits(args, y)
    except ValueError as exc:
        if not n_skipped:
            raise
        raise ValueError(f"{after}: {exc}") from None


def _fingerprints(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's ``model_fingerprint`` (the one estimators record and errors show)
    and, for reference, its towers' fingerprints."""
    from ..backbones.loading import load_backbone

    clip = load_backbone(args.model, args.device)
    return {
        "model_fingerprint": clip.fingerprint,
        "tower_fingerprints": {
            "vision": clip.vision_fingerprint,
            "text": clip.text_fingerprint if clip.has_text else None,
        },
    }


class _Encoded(NamedTuple):
    """The usable images of ``skclip evaluate``, encoded (bad ones skipped)."""

    files: np.ndarray
    X: np.ndarray
    X_keys: np.ndarray  # the training embeddings: X, or the mean of --augment views
    y: np.ndarray
    test_files: np.ndarray | None
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    skipped: list[dict[str, str]]


def _encode_all(args: argparse.Namespace, data: Any, test: Any, say: _Say) -> _Encoded:
    """Encode the data folder (and --test-dir), skipping the images that cannot be used."""
    featurizer = _featurizer(args)
    say.step(f"encoding {len(data.labels)} images with {args.model}")
    X, bad = _featurize(featurizer, data.filenames, args.on_error)
    skipped = _skipped(data.filenames, bad, say)
    keep = np.setdiff1d(np.arange(len(X)), list(bad))
    files, X, y = data.filenames[keep], X[keep], data.labels[keep]
    X_keys = _featurize(featurizer, files, "raise", augmented=True)[0] if args.augment else X
    if test is None:
        return _Encoded(files, X, X_keys, y, None, None, None, skipped)
    say.step(f"encoding {len(test.labels)} test images")
    X_test, bad_test = _featurize(featurizer, test.filenames, args.on_error)
    skipped += _skipped(test.filenames, bad_test, say)
    keep_test = np.setdiff1d(np.arange(len(X_test)), list(bad_test))
    return _Encoded(
        files,
        X,
        X_keys,
        y,
        test.filenames[keep_test],
        X_test[keep_test],
        test.labels[keep_test],
        skipped,
    )


def _evaluate_method(
    name: str,
    est: Any,
    configuration: str,
    names: tuple[str, ...],
    splits: list,
    enc: _Encoded,
    classes: np.ndarray,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One method's report entry over the splits, and its mistakes."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, f1_score

    pred_all, truth_all, acc, f1, chosen = [], [], [], [], []
    mistakes: list[dict[str, Any]] = []
    seconds = 0.0
    for train, part in splits:
        if part is None:  # the --test-dir images
            assert enc.X_test is not None and enc.y_test is not None and enc.test_files is not None
            X_q, y_q, files_q = enc.X_test, enc.y_test, enc.test_files
        else:
            X_q, y_q, files_q = enc.X[part], enc.y[part], enc.files[part]
        start = time.perf_counter()
        fitted = clone(est).fit(enc.X_keys[train], enc.y[train])
        pred = fitted.predict(X_q)
        seconds += time.perf_counter() - start
        pred_all.append(pred)
        truth_all.append(y_q)
        acc.append(accuracy_score(y_q, pred))
        f1.append(f1_score(y_q, pred, average="macro"))
        chosen.append(_chosen(fitted, names))
        mistakes += [{**m, "method": name} for m in _mistakes(fitted, X_q, y_q, files_q, pred)]
    single = len(splits) == 1
    # What the method uses from here on: its choice on all the images (one split:
    # the training images of that split).
    start = time.perf_counter()
    params = chosen[0] if single or not names else _chosen(clone(est).fit(enc.X_keys, enc.y), names)
    seconds += time.perf_counter() - start
    entry = {
        "configuration": configuration,
        "accuracy": float(np.mean(acc)),
        "accuracy_std": None if single else float(np.std(acc)),
        "f1_macro": float(np.mean(f1)),
        "f1_macro_std": None if single else float(np.std(f1)),
        **_scores(np.concatenate(truth_all), np.concatenate(pred_all), classes),
        "params": params,
        "params_per_split": chosen,
        "seconds": seconds,
    }
    if name.startswith("Tip-Adapter"):
        entry.update(alpha=params["alpha"], beta=params["beta"])
    return entry, mistakes


def _report(args: argparse.Namespace, plan: dict, enc: _Encoded, classes: Any) -> dict[str, Any]:
    """The report's account of the run, before any method is evaluated."""
    from .._version import __version__

    y, y_test, splits = enc.y, enc.y_test, plan["splits"]
    n_test_dir = 0 if y_test is None else len(y_test)
    return {
        "skclip_version": __version__,
        "data_dir": str(args.data_dir),
        "test_dir": args.test_dir,
        "model": str(args.model),
        **_fingerprints(args),
        "protocol": plan["protocol"],
        "shots": args.shots,
        "cv": plan["cv"],
        "inner_cv": plan["inner_cv"],
        "random_state": args.random_state,
        "augment": args.augment,
        "coverage": args.coverage,
        "coverage_protocol": None if args.coverage is None else protocol_text(args.coverage),
        "n_images": int(len(y)),
        "n_test_dir_images": None if y_test is None else int(len(y_test)),
        "splits": [
            {"n_train": int(len(train)), "n_test": int(n_test_dir if part is None else len(part))}
            for train, part in splits
        ],
        "skipped": enc.skipped,
        "classes": classes.tolist(),
        "methods": {},
    }


def evaluate(args: argparse.Namespace) -> int:
    """``skclip evaluate``: see the sub-command's help."""
    say = _Say(args.quiet)
    args.model = _resolve_model(args.model, say)
    data, test = _check_evaluate(args)
    classes = data.target_names
    say.step(
        f"{args.data_dir}: {len(data.labels)} images in {len(classes)} classes"
        + (f"; {args.test_dir}: {len(test.labels)} images" if test is not None else "")
    )
    enc = _encode_all(args, data, test, say)
    y, y_test = enc.y, enc.y_test
    # Again: skipped files may have changed the classes' sizes.
    plan = _after_skipping(
        args, classes, y, len(enc.skipped), y_test, None if test is None else np.unique(test.labels)
    )
    _check_coverage(args, plan, y)
    splits = plan["splits"]
    n_train_min = min(_smallest_class(y[train]) for train, _ in splits)
    methods = _methods(args, plan["inner_cv"], n_train_min)
    report = _report(args, plan, enc, classes)
    mistakes: dict[str, list[dict[str, Any]]] = {}
    for name, (est, configuration, names) in methods.items():
        say.step(f"evaluating {name} ({len(splits)} split(s))")
        with messages.about(name, inner_cv=plan["inner_cv"] is not None):
            report["methods"][name], mistakes[name] = _evaluate_method(
                name, est, configuration, names, splits, enc, classes
            )
            if args.coverage is not None:
                say.step(f"calibrating {name} (--coverage {args.coverage:g})")
                report["methods"][name].update(
                    coverage_entry(est, splits, enc, classes, args.coverage, args.random_state)
                )
    report["per_class_method"] = shown_method(report)
    report["notes"] = messages.notes()
    print(render_markdown(report))
    if args.report:
        with _writing(args.report):
            written = write_report(
                report,
                args.report,
                verbose=args.verbose,
                misclassified=[m for found in mistakes.values() for m in found],
                max_images=GALLERY_SIZE,
            )
        for path in written:
            say.step(f"wrote {path}")
    return 0
