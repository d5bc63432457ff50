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
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._models import DEFAULT_MODEL

_EPILOG = (
    "The model is a Hugging Face hub id or a local folder written by save_pretrained; "
    "the default comes from the SKCLIP_MODEL environment variable, else "
    f"{DEFAULT_MODEL}. Data folders hold one sub-folder of images per class."
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=os.environ.get("SKCLIP_MODEL", DEFAULT_MODEL),
        help="CLIP checkpoint: hub id or local folder (default: $SKCLIP_MODEL or %(default)s)",
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
    ev.add_argument("--random-state", type=int, default=0, help="seed of splits and training")
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
    fit.add_argument("--random-state", type=int, default=0, help="seed of Tip-F training")
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

    return CLIPFeaturizer(
        model=args.model, device=args.device, batch_size=args.batch_size,
        progress=False if args.quiet else "auto", cache_dir=args.cache_dir,
    )


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


def _methods(args: argparse.Namespace, inner_cv: int) -> dict[str, Any]:
    from .model_selection import TipAdapterClassifierCV
    from .tip_adapter import TipAdapterClassifier

    common = dict(clip_model=args.model, device=args.device)
    methods: dict[str, Any] = {
        "zero-shot CLIP": TipAdapterClassifier(alpha=0.0, **common),
        "Tip-Adapter": TipAdapterClassifierCV(cv=inner_cv, **common),
    }
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
def evaluate(args: argparse.Namespace) -> int:
    """``skclip evaluate``: see the sub-command's help."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    from .datasets import load_image_folder
    from .model_selection import few_shot_split

    if args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}.")
    data = load_image_folder(args.data_dir)
    featurizer = _featurizer(args)
    X, y = featurizer.transform(data.filenames), data.labels
    classes = data.target_names
    report: dict[str, Any] = {
        "data_dir": str(args.data_dir), "model": str(args.model), "n_images": int(len(y)),
        "classes": classes.tolist(), "methods": {},
    }
    if args.test_dir or args.shots:
        if args.test_dir:
            test = load_image_folder(args.test_dir)
            unknown = sorted(set(test.labels) - set(classes))
            if unknown:
                raise ValueError(f"--test-dir has classes not in {args.data_dir}: {unknown}.")
            X_test, y_test = featurizer.transform(test.filenames), test.labels
            if args.shots:
                train, _ = few_shot_split(y, args.shots, random_state=args.random_state)
                X, y = X[train], y[train]
            report["protocol"] = f"train on {args.data_dir}, test on {args.test_dir}"
        else:
            train, test_idx = few_shot_split(y, args.shots, random_state=args.random_state)
            X, y, X_test, y_test = X[train], y[train], X[test_idx], y[test_idx]
            report["protocol"] = f"{args.shots}-shot split, the other images as test set"
        for name, est in _methods(args, _inner_cv(y, None)).items():
            pred = est.fit(X, y).predict(X_test)
            report["methods"][name] = {
                "accuracy": float(accuracy_score(y_test, pred)), "accuracy_std": None,
                "f1_macro": float(f1_score(y_test, pred, average="macro")), "f1_macro_std": None,
                **_scores(y_test, pred, classes),
            }
            if hasattr(est, "alpha_"):
                report["methods"][name].update(alpha=est.alpha_, beta=est.beta_)
    else:
        outer = StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state)
        if np.unique(y, return_counts=True)[1].min() < args.cv:
            raise ValueError(
                f"--cv {args.cv} needs at least {args.cv} images in every class; use a smaller --cv."
            )
        report["protocol"] = f"{args.cv}-fold stratified cross-validation"
        for name, est in _methods(args, _inner_cv(y, args.cv)).items():
            pred, acc, f1 = np.empty_like(y), [], []
            for train, test_idx in outer.split(X, y):  # one fit per fold gives both
                pred[test_idx] = clone(est).fit(X[train], y[train]).predict(X[test_idx])
                acc.append(accuracy_score(y[test_idx], pred[test_idx]))
                f1.append(f1_score(y[test_idx], pred[test_idx], average="macro"))
            entry = {
                "accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                "f1_macro": float(np.mean(f1)), "f1_macro_std": float(np.std(f1)),
                **_scores(y, pred, classes),
            }
            if hasattr(est, "alphas"):  # the choice on all the data, to use from here on
                final = est.fit(X, y)
                entry.update(alpha=final.alpha_, beta=final.beta_)
            report["methods"][name] = entry
    text = _markdown(report)
    print(text)
    if args.report:
        _write_report(report, text, Path(args.report), args.verbose)
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# skclip evaluation: {report['data_dir']}",
        "",
        f"Model `{report['model']}`, {report['n_images']} images, {len(report['classes'])} "
        f"classes; {report['protocol']}.",
        "",
        "| method | accuracy | macro-F1 | alpha | beta |",
        "|---|---|---|---|---|",
    ]

    def pm(mean: float, std: float | None) -> str:
        return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"

    for name, m in report["methods"].items():
        ab = (f"{m['alpha']:.3g} | {m['beta']:.3g}" if "alpha" in m else "– | –")
        lines.append(
            f"| {name} | {pm(m['accuracy'], m['accuracy_std'])} | "
            f"{pm(m['f1_macro'], m['f1_macro_std'])} | {ab} |"
        )
    best = max(report["methods"], key=lambda k: report["methods"][k]["accuracy"])
    m = report["methods"][best]
    lines += ["", f"## Per class ({best})", "", "| class | precision | recall | F1 | images |",
              "|---|---|---|---|---|"]
    for c, s in m["per_class"].items():
        lines.append(f"| {c} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                     f"{s['support']} |")
    lines += ["", f"## Confusion matrix ({best}; rows: true, columns: predicted)", "",
              "| | " + " | ".join(report["classes"]) + " |",
              "|---" * (len(report["classes"]) + 1) + "|"]
    for c, row in zip(report["classes"], m["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _write_report(report: dict[str, Any], text: str, path: Path, verbose: bool) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(report, indent=2))
    elif path.suffix.lower() == ".md":
        path.write_text(text)
    else:
        raise ValueError(f"--report must end in .json or .md, got {str(path)!r}.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay
    except ImportError:
        if verbose:
            print("matplotlib is not installed: no confusion-matrix PNG.", file=sys.stderr)
        return
    best = max(report["methods"], key=lambda k: report["methods"][k]["accuracy"])
    disp = ConfusionMatrixDisplay(
        np.array(report["methods"][best]["confusion_matrix"]), display_labels=report["classes"]
    )
    disp.plot(xticks_rotation=45, colorbar=False)
    disp.ax_.set_title(best)
    png = path.with_name(path.stem + "_confusion.png")
    disp.figure_.tight_layout()
    disp.figure_.savefig(png, dpi=120)
    plt.close(disp.figure_)


# -- fit / predict ------------------------------------------------------------------------
def fit_command(args: argparse.Namespace) -> int:
    """``skclip fit``: see the sub-command's help."""
    import joblib
    from sklearn.pipeline import Pipeline

    from .datasets import load_image_folder
    from .model_selection import TipAdapterClassifierCV

    data = load_image_folder(args.data_dir)
    cv = min(args.cv, int(np.unique(data.labels, return_counts=True)[1].min()))
    if cv < 2:
        raise ValueError("Every class needs at least 2 images to choose alpha and beta.")
    pipe = Pipeline([
        ("clip", _featurizer(args)),
        ("tip", TipAdapterClassifierCV(
            clip_model=args.model, device=args.device, cv=cv, fine_tune=args.fine_tune,
            random_state=args.random_state,
        )),
    ])
    pipe.fit(data.filenames, data.labels)
    joblib.dump(pipe, args.output)
    tip = pipe.named_steps["tip"]
    print(f"saved {args.output}: {len(data.labels)} images, classes {data.target_names.tolist()}, "
          f"alpha={tip.alpha_:.3g} beta={tip.beta_:.3g} ({cv}-fold accuracy {tip.best_score_:.3f})")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """``skclip predict``: see the sub-command's help."""
    import joblib

    from .datasets import IMAGE_EXTENSIONS, _images_below

    if not Path(args.model_file).is_file():
        raise ValueError(f"Model file {args.model_file!r} does not exist.")
    pipe = joblib.load(args.model_file)
    params = {"clip__progress": False} if args.quiet else {}
    if args.device:
        params.update(clip__device=args.device, tip__device=args.device)
    pipe.set_params(**params)
    paths: list[str] = []
    for item in args.images:
        if Path(item).is_dir():
            found = _images_below(Path(item), IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"Folder {item!r} has no images.")
            paths.extend(found)
        else:
            paths.append(item)
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
