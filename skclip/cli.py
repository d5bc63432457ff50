"""The ``skclip`` command: evaluate, fit and predict on folders of images.

::

    skclip evaluate data/ --cv 5 --report report.md
    skclip fit data/ -o model.joblib
    skclip predict model.joblib new_images/ --proba --output predictions.csv

Exit status: 0 on success, 1 when the data or model cannot be used (the message says
why), 2 for a wrong command line.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._models import DEFAULT_MODEL
from ._report import REPORT_SUFFIXES, check_output_path, render_markdown, write_report

_EPILOG = (
    "The model is a Hugging Face hub id or a local folder written by save_pretrained; "
    "the default comes from the SKCLIP_MODEL environment variable, else "
    f"{DEFAULT_MODEL}. Data folders hold one sub-folder of images per class."
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=os.environ.get("SKCLIP_MODEL", DEFAULT_MODEL),
        help="checkpoint (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2...): hub id or local "
        "folder (default: $SKCLIP_MODEL or %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--cache-dir", default=None, help="folder to keep embeddings in")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="more detail")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skclip`` command."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="skclip", description="Few-shot image classification with CLIP and Tip-Adapter.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"skclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate", help="how well do zero-shot CLIP, Tip-Adapter and Tip-Adapter-F do?",
        description="Encode every image once, then report cross-validated accuracy and macro-F1 "
        "of zero-shot CLIP, Tip-Adapter with alpha/beta tuned by inner cross-validation, and "
        "(with --fine-tune) Tip-Adapter-F, with per-class results and a confusion matrix.",
        epilog=_EPILOG,
    )
    ev.add_argument("data_dir", help="folder with one sub-folder of images per class")
    ev.add_argument("--cv", type=int, default=5, help="cross-validation folds (default: 5)")
    ev.add_argument("--shots", type=int, default=None,
                    help="train on K images per class, test on the rest (instead of --cv)")
    ev.add_argument("--test-dir", default=None,
                    help="train on DATA_DIR, test on this folder (e.g. another domain)")
    ev.add_argument("--fine-tune", action="store_true", help="also evaluate Tip-Adapter-F")
    ev.add_argument("--report", default=None,
                    help="write the report to this .json or .md file (and a confusion-matrix "
                    ".png beside it if matplotlib is installed)")
    ev.add_argument("--augment", type=int, default=0, metavar="K",
                    help="training images: mean embedding of K random views (default 0: none)")
    ev.add_argument("--random-state", type=int, default=0,
                    help="seed of splits, augmentation and training (default 0)")
    _common(ev)
    ev.set_defaults(func=evaluate)

    fit = sub.add_parser(
        "fit", help="fit a classifier on a folder and save it",
        description="Fit CLIPFeaturizer + TipAdapterClassifierCV (alpha/beta chosen by "
        "cross-validation) on a folder and save the pipeline with joblib. The file holds no "
        "model weights: the checkpoint is loaded again, by name or path, when predicting.",
        epilog=_EPILOG,
    )
    fit.add_argument("data_dir", help="folder with one sub-folder of images per class")
    fit.add_argument("-o", "--output", required=True, help="where to save, e.g. model.joblib")
    fit.add_argument("--cv", type=int, default=5, help="folds to choose alpha/beta (default 5)")
    fit.add_argument("--fine-tune", action="store_true", help="Tip-Adapter-F")
    fit.add_argument("--augment", type=int, default=0, metavar="K",
                     help="training images: mean embedding of K random views (default 0: none)")
    fit.add_argument("--random-state", type=int, default=0,
                     help="seed of augmentation and Tip-F training (default 0)")
    _common(fit)
    fit.set_defaults(func=fit_command)

    pred = sub.add_parser(
        "predict", help="classify images with a saved model",
        description="Classify image files, or every image in folders, with a model saved by "
        "'skclip fit'. Writes CSV: path, prediction (and one probability column per class).",
    )
    pred.add_argument("model_file", help="a file written by 'skclip fit'")
    pred.add_argument("images", nargs="+", help="image files or folders")
    pred.add_argument("--proba", action="store_true", help="add class probabilities")
    pred.add_argument("--output", default=None, help="CSV file to write (default: stdout)")
    pred.add_argument("--device", default=None, help="override the saved device")
    pred.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pred.set_defaults(func=predict_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``skclip`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"skclip: error: {exc}", file=sys.stderr)
        return 1


# -- helpers ------------------------------------------------------------------------------
def _featurizer(args: argparse.Namespace):
    from .featurizer import CLIPFeaturizer

    # A seed, always: with random_state=None every call would draw new augmented views,
    # so the embedding cache could never reuse them.
    return CLIPFeaturizer(
        model=args.model, device=args.device, batch_size=args.batch_size,
        progress=False if args.quiet else "auto", cache_dir=args.cache_dir,
        augment=args.augment, random_state=args.random_state,
    )


def _check_common(args: argparse.Namespace) -> None:
    """Checks of the options shared by evaluate and fit."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.augment < 0:
        raise ValueError(f"--augment must be 0 or more, got {args.augment}.")
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(
        args.cache_dir
    ).is_dir():
        raise ValueError(f"--cache-dir {args.cache_dir!r} is a file, not a folder.")


def _inner_cv(y: np.ndarray, outer_folds: int | None) -> int:
    """Folds for the alpha/beta search inside a training part: at most 5, and no more
    than the smallest class has samples there."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if outer_folds:
        smallest = smallest * (outer_folds - 1) // outer_folds
    if smallest < 2:
        raise ValueError(
            "Every class needs at least 2 training images to choose alpha and beta by "
            f"cross-validation; the smallest class has {smallest} in a training part."
        )
    return min(5, smallest)


def _text_model(args: argparse.Namespace) -> str | None:
    """``args.model`` as the classifiers' ``clip_model``, or None for an image-only
    backbone (DINOv2...): the cache model alone, without a zero-shot text term."""
    from ._models import load_model

    return args.model if load_model(args.model, args.device).has_text else None


def _methods(args: argparse.Namespace, inner_cv: int) -> dict[str, Any]:
    from .model_selection import TipAdapterClassifierCV
    from .tip_adapter import TipAdapterClassifier

    common = dict(clip_model=_text_model(args), device=args.device)
    methods: dict[str, Any] = {}
    if common["clip_model"] is not None:
        methods["zero-shot CLIP"] = TipAdapterClassifier(alpha=0.0, **common)
    methods["Tip-Adapter"] = TipAdapterClassifierCV(cv=inner_cv, **common)
    if args.fine_tune:
        methods["Tip-Adapter-F"] = TipAdapterClassifierCV(
            cv=inner_cv, fine_tune=True, random_state=args.random_state, **common
        )
    return methods


def _scores(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "per_class": {
            str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                     "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


# -- evaluate -----------------------------------------------------------------------------
def _plan_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Check everything that can be checked from the arguments and the folder listings,
    before any model is loaded or image encoded; return what to encode and how to split."""
    from sklearn.model_selection import StratifiedKFold

    from .datasets import load_image_folder
    from .model_selection import few_shot_split

    _check_common(args)
    if args.shots is not None and args.shots < 1:
        raise ValueError(f"--shots must be at least 1, got {args.shots}.")
    if args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}.")
    if args.report:
        check_output_path(args.report, "--report", REPORT_SUFFIXES)
    data = load_image_folder(args.data_dir)
    plan: dict[str, Any] = {"data": data, "test": None}
    if args.test_dir:
        test = load_image_folder(args.test_dir)
        unknown = sorted(set(test.labels) - set(data.target_names))
        if unknown:
            raise ValueError(f"--test-dir has classes not in {args.data_dir}: {unknown}.")
        plan["test"] = test
    y = data.labels
    if args.shots:  # labels only: no image is opened to draw the split
        train, test_idx = few_shot_split(y, args.shots, random_state=args.random_state)
        plan["train"] = train
        plan["test_idx"] = None if args.test_dir else test_idx
        plan["inner_cv"] = _inner_cv(y[train], None)
    elif args.test_dir:
        plan["train"] = np.arange(len(y))
        plan["inner_cv"] = _inner_cv(y, None)
    else:
        if np.unique(y, return_counts=True)[1].min() < args.cv:
            raise ValueError(
                f"--cv {args.cv} needs at least {args.cv} images in every class; "
                "use a smaller --cv."
            )
        plan["outer"] = StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state)
        plan["inner_cv"] = _inner_cv(y, args.cv)
    return plan


def evaluate(args: argparse.Namespace) -> int:
    """``skclip evaluate``: see the sub-command's help."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, f1_score

    plan = _plan_evaluate(args)
    data = plan["data"]
    classes = data.target_names
    methods = _methods(args, plan["inner_cv"])
    featurizer = _featurizer(args)
    report: dict[str, Any] = {
        "data_dir": str(args.data_dir), "model": str(args.model), "n_images": int(len(data.labels)),
        "classes": classes.tolist(), "methods": {},
    }

    def encode(files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clean embeddings (queries) and training keys (augmented views if asked)."""
        X = featurizer.transform(files)
        return X, (featurizer.fit_transform(files) if args.augment else X)

    if "outer" not in plan:
        train = plan["train"]
        if plan["test"] is not None:
            _, X_keys = encode(data.filenames[train])
            X_test = featurizer.transform(plan["test"].filenames)
            y_train, y_test = data.labels[train], plan["test"].labels
            report["protocol"] = f"train on {args.data_dir}, test on {args.test_dir}"
            if args.shots:
                report["protocol"] = f"{args.shots}-shot {report['protocol']}"
        else:
            X, X_keys_all = encode(data.filenames)
            X_keys, X_test = X_keys_all[train], X[plan["test_idx"]]
            y_train, y_test = data.labels[train], data.labels[plan["test_idx"]]
            report["protocol"] = f"{args.shots}-shot split, the other images as test set"
        for name, est in methods.items():
            pred = est.fit(X_keys, y_train).predict(X_test)
            report["methods"][name] = {
                "accuracy": float(accuracy_score(y_test, pred)), "accuracy_std": None,
                "f1_macro": float(f1_score(y_test, pred, average="macro")), "f1_macro_std": None,
                **_scores(y_test, pred, classes),
            }
            if hasattr(est, "alpha_"):
                report["methods"][name].update(alpha=est.alpha_, beta=est.beta_)
    else:
        X, X_keys = encode(data.filenames)
        y = data.labels
        report["protocol"] = f"{args.cv}-fold stratified cross-validation"
        for name, est in methods.items():
            pred, acc, f1 = np.empty_like(y), [], []
            for train, test_idx in plan["outer"].split(X, y):  # one fit per fold gives both
                pred[test_idx] = clone(est).fit(X_keys[train], y[train]).predict(X[test_idx])
                acc.append(accuracy_score(y[test_idx], pred[test_idx]))
                f1.append(f1_score(y[test_idx], pred[test_idx], average="macro"))
            entry = {
                "accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                "f1_macro": float(np.mean(f1)), "f1_macro_std": float(np.std(f1)),
                **_scores(y, pred, classes),
            }
            if hasattr(est, "alphas"):  # the choice on all the data, to use from here on
                final = est.fit(X_keys, y)
                entry.update(alpha=final.alpha_, beta=final.beta_)
            report["methods"][name] = entry
    print(render_markdown(report))
    if args.report:
        write_report(report, args.report, verbose=args.verbose)
    return 0


# -- fit / predict ------------------------------------------------------------------------
def fit_command(args: argparse.Namespace) -> int:
    """``skclip fit``: see the sub-command's help."""
    import joblib
    from sklearn.pipeline import Pipeline

    from .datasets import load_image_folder
    from .model_selection import TipAdapterClassifierCV

    _check_common(args)
    if args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}.")
    check_output_path(args.output, "-o/--output")
    data = load_image_folder(args.data_dir)
    smallest = int(np.unique(data.labels, return_counts=True)[1].min())
    if smallest < 2:
        raise ValueError("Every class needs at least 2 images to choose alpha and beta.")
    cv = min(args.cv, smallest)
    pipe = Pipeline([
        ("clip", _featurizer(args)),
        ("tip", TipAdapterClassifierCV(
            clip_model=_text_model(args), device=args.device, cv=cv, fine_tune=args.fine_tune,
            random_state=args.random_state,
        )),
    ])
    pipe.fit(data.filenames, data.labels)
    joblib.dump(pipe, args.output)
    tip = pipe.named_steps["tip"]
    print(f"saved {args.output}: {len(data.labels)} images, classes {data.target_names.tolist()}, "
          f"alpha={tip.alpha_:.3g} beta={tip.beta_:.3g} ({cv}-fold accuracy {tip.best_score_:.3f})")
    return 0


_USAGE_PREDICT = (
    "skclip predict MODEL_FILE IMAGES... (the model file first, then images or folders)"
)


def _load_model(path: str) -> Any:
    """The Pipeline saved by ``skclip fit`` in ``path``; a ValueError naming the file
    (never a traceback) when it is missing, a folder, damaged or something else."""
    import joblib
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    from .featurizer import CLIPFeaturizer

    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{path!r} is a folder, not a model file. Usage: {_USAGE_PREDICT}.")
    if not file.is_file():
        raise ValueError(f"Model file {path!r} does not exist. Usage: {_USAGE_PREDICT}.")
    try:
        model = joblib.load(file)
    except Exception as exc:  # unpickling damaged or foreign bytes can raise anything
        raise ValueError(
            f"Cannot read the model file {path!r}: it is damaged (e.g. truncated) or not a file "
            f"written by 'skclip fit' ({type(exc).__name__} while loading)."
        ) from None
    is_pipeline = isinstance(model, Pipeline) and len(model.steps) >= 2
    if not is_pipeline or not isinstance(model.steps[0][1], CLIPFeaturizer):
        raise ValueError(
            f"{path!r} is not a model written by 'skclip fit': it holds a "
            f"{type(model).__name__}, not a Pipeline of a CLIPFeaturizer and a classifier."
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ValueError(f"The model in {path!r} is not fitted.") from None
    return model


def _image_paths(items: list[str]) -> list[str]:
    """Expand folders into their images; every item must exist (checked before encoding)."""
    from .datasets import IMAGE_EXTENSIONS, _images_below

    paths: list[str] = []
    for item in items:
        if Path(item).is_dir():
            found = _images_below(Path(item), IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"Folder {item!r} has no images.")
            paths.extend(found)
        elif Path(item).is_file():
            paths.append(item)
        else:
            raise ValueError(f"Image file or folder {item!r} does not exist.")
    return paths


def predict_command(args: argparse.Namespace) -> int:
    """``skclip predict``: see the sub-command's help."""
    pipe = _load_model(args.model_file)
    if args.output:
        check_output_path(args.output, "--output")
    paths = _image_paths(args.images)
    params: dict[str, Any] = {}
    for name, step in pipe.steps:
        step_params = step.get_params(deep=False)
        if args.quiet and "progress" in step_params:
            params[f"{name}__progress"] = False
        if args.device and "device" in step_params:
            params[f"{name}__device"] = args.device
    pipe.set_params(**params)
    classes = pipe.classes_
    if args.proba:
        proba = pipe.predict_proba(paths)
        pred = classes[proba.argmax(axis=1)]
    else:
        pred = pipe.predict(paths)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "prediction"] + ([f"p_{c}" for c in classes] if args.proba else []))
        for i, (path, label) in enumerate(zip(paths, pred)):
            row = [path, label] + ([f"{p:.6f}" for p in proba[i]] if args.proba else [])
            writer.writerow(row)
    finally:
        if args.output:
            out.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
