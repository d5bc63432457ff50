"""The command line of ``skclip``: one sub-parser per command.

Building and running the parser imports nothing heavy (no torch, transformers, PIL or
scikit-learn), so ``--help`` and a wrong command line are answered at once: each
command's code is imported when it runs (:func:`_evaluate`, :func:`_fit`...), and the
options' values are checked by the light types of :mod:`skclip.cli.arguments` (a wrong
one exits with status 2 and the usage).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..backbones._hub import DEFAULT_MODEL
from .arguments import (
    REPORT_SUFFIXES,
    at_least,
    checkpoint,
    data_folder,
    device,
    folder,
    level,
    model_file,
    model_help,
    output_file,
)
from .model_file import MODEL_SUFFIXES


_EPILOG = (
    "The model is a Hugging Face hub id or a local folder written by save_pretrained (a "
    "local folder is recorded by its absolute path); without --model, the SKCLIP_MODEL "
    f"environment variable if set, else {DEFAULT_MODEL}. Data folders hold one "
    "sub-folder of images per class."
)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    return evaluate(args)


def _fit(args: argparse.Namespace) -> int:
    from .fit import fit_command

    return fit_command(args)


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_command

    return predict_command(args)


def _demo_model(args: argparse.Namespace) -> int:
    from .demo_model import demo_model_command

    return demo_model_command(args)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=checkpoint, default=None, help=model_help())
    parser.add_argument(
        "--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=32, help="images per forward pass"
    )
    parser.add_argument(
        "--cache-dir", type=folder, default=None, help="folder to keep embeddings in"
    )
    _on_error(parser)
    _follow_symlinks(parser)
    _quiet_or_verbose(parser)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        type=data_folder,
        help="folder with one sub-folder of images per class",
    )


def _quiet_or_verbose(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    group.add_argument("-v", "--verbose", action="store_true", help="more detail")


def _on_error(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an image that cannot be read: stop with an error naming every such file "
        "(raise, the default), or leave it out and list it on stderr and in the output (skip)",
    )


def _follow_symlinks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="use class folders that are symbolic links to folders outside the data folder "
        "(by default they are skipped with a warning; links into it are always an error)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skclip`` command."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="skclip",
        description="Few-shot image classification with CLIP and Tip-Adapter.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"skclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_evaluate(sub)
    _add_fit(sub)
    _add_predict(sub)
    _add_demo_model(sub)
    _add_export_onnx(sub)
    return parser


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="which method works best on my images?",
        description="Encode every image once, then compare, under the same outer "
        "cross-validation or few-shot split, the accuracy and macro-F1 of zero-shot CLIP, "
        "Tip-Adapter, (with --fine-tune) Tip-Adapter-F, GDA, APE and a linear probe "
        "(logistic regression on the embeddings). Every method's hyperparameters are chosen "
        "by an inner cross-validation on the training images only (their documented "
        "defaults when a class has a single training image); the report says which and how, "
        "with per-class results and a confusion matrix.",
        epilog=_EPILOG,
    )
    _data_dir(ev)
    ev.add_argument(
        "--cv",
        type=at_least(2),
        default=None,
        help="cross-validation folds (default: 5); with --shots or --test-dir, the "
        "folds of the inner cross-validation that chooses alpha and beta (default: "
        "up to 5, as the training images allow)",
    )
    ev.add_argument(
        "--shots",
        type=at_least(1),
        default=None,
        help="train on K images per class, test on the rest (instead of --cv)",
    )
    ev.add_argument(
        "--test-dir",
        type=data_folder,
        default=None,
        help="train on DATA_DIR, test on this folder (e.g. another domain)",
    )
    ev.add_argument("--fine-tune", action="store_true", help="also evaluate Tip-Adapter-F")
    ev.add_argument(
        "--report",
        type=output_file(REPORT_SUFFIXES),
        default=None,
        help="write the report to this .json or .md file (and a confusion-matrix "
        ".png beside it if matplotlib is installed), or to a .html page that "
        "opens offline, with a gallery of the misclassified images",
    )
    ev.add_argument(
        "--augment",
        type=at_least(0),
        default=0,
        metavar="K",
        help="training images: mean embedding of K random views (default 0: none)",
    )
    _coverage_option(ev)
    ev.add_argument(
        "--random-state",
        type=int,
        default=0,
        help="seed of splits, augmentation and training (default 0)",
    )
    _common(ev)
    ev.set_defaults(func=_evaluate)


def _coverage_option(ev: argparse.ArgumentParser) -> None:
    ev.add_argument(
        "--coverage",
        type=level,
        default=None,
        metavar="LEVEL",
        help="also report, for each method, the empirical coverage (overall and per class) "
        "and mean size of per-class conformal prediction sets at this confidence level "
        "(e.g. 0.9), and the ECE before/after temperature scaling; the calibration images "
        "are half of each class's training images of each split (see the user guide)",
    )


def _add_fit(sub: Any) -> None:
    fit = sub.add_parser(
        "fit",
        help="fit a classifier on a folder and save it",
        description="Fit CLIPFeaturizer + TipAdapterClassifierCV (alpha/beta chosen by "
        "cross-validation) on a folder and save the pipeline: .skops (safe to share and load) "
        "or .joblib (a pickle: loading it runs code). The file holds no model weights: the "
        "checkpoint is loaded again, by name or absolute path, when predicting, and its "
        "weights fingerprint is checked.",
        epilog=_EPILOG,
    )
    _data_dir(fit)
    fit.add_argument(
        "-o",
        "--output",
        required=True,
        type=output_file(MODEL_SUFFIXES),
        help="where to save: a .skops or .joblib file",
    )
    fit.add_argument(
        "--cv",
        type=at_least(2),
        default=None,
        help="folds to choose alpha/beta (default: 5, or as many as the smallest "
        "class's images allow); more folds than a class has images is an error",
    )
    fit.add_argument("--fine-tune", action="store_true", help="Tip-Adapter-F")
    fit.add_argument(
        "--augment",
        type=at_least(0),
        default=0,
        metavar="K",
        help="training images: mean embedding of K random views (default 0: none)",
    )
    fit.add_argument(
        "--coverage",
        type=level,
        default=None,
        metavar="LEVEL",
        help="keep back half of each class's images (stratified, at random; at least 4 "
        "images per class) as calibration: the classifier is fitted on the rest, a "
        "temperature on a quarter, per-class conformal thresholds at LEVEL (e.g. 0.9) on "
        "the others; stored in the model file for 'skclip predict --coverage'",
    )
    fit.add_argument(
        "--random-state",
        type=int,
        default=0,
        help="seed of augmentation, Tip-F training and the --coverage split (default 0)",
    )
    _common(fit)
    fit.set_defaults(func=_fit)


def _add_predict(sub: Any) -> None:
    pred = sub.add_parser(
        "predict",
        help="classify images with a saved model",
        description="Classify image files, or every image in folders, with a model saved by "
        "'skclip fit'. Writes CSV: path, prediction (and one probability column per class). "
        ".skops files are loaded trusting only skclip, scikit-learn and numpy types; a "
        ".joblib file runs code stored in it, so load only .joblib files you made yourself. "
        "A model file never chooses where skclip writes or what this machine spends: its "
        "cache_dir, cache_size, n_jobs, batch_size, device and runtime are replaced by this "
        "machine's defaults or the options below (-v lists them).",
    )
    pred.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        type=model_file,
        help="a .skops or .joblib file written by 'skclip fit'",
    )
    pred.add_argument("images", metavar="IMAGES", nargs="+", help="image files or folders")
    pred.add_argument(
        "--proba",
        action="store_true",
        help="add class probabilities (temperature-scaled for a model fitted with --coverage)",
    )
    pred.add_argument(
        "--coverage",
        nargs="?",
        type=level,
        const=True,  # --coverage alone: the stored level (a string const would meet type)
        default=None,
        metavar="LEVEL",
        help="add a 'set' column: each image's conformal prediction set, its labels "
        "separated by '|', at the confidence level the model was calibrated at by 'skclip "
        "fit --coverage' (LEVEL, if given, must be that level)",
    )
    pred.add_argument(
        "--output", type=output_file(), default=None, help="CSV file to write (default: stdout)"
    )
    pred.add_argument(
        "--model",
        type=checkpoint,
        default=None,
        help="where the checkpoint is now, if it moved since 'skclip fit' (its "
        "weights fingerprint is still checked)",
    )
    pred.add_argument(
        "--device", type=device, default=None, help="auto (default), cpu, cuda, cuda:N or mps"
    )
    pred.add_argument("--cache-dir", type=folder, default=None, help="folder to keep embeddings in")
    _on_error(pred)
    _quiet_or_verbose(pred)
    pred.set_defaults(func=_predict)


def _add_demo_model(sub: Any) -> None:
    demo = sub.add_parser(
        "demo-model",
        help="save a small random CLIP checkpoint, to try skclip without the hub",
        description="Save a tiny CLIP with random weights (model, tokenizer and image "
        "processor, about 1 MB) to a new or empty folder, to try every command offline: "
        "skclip evaluate data/ --model DIR. Its predictions are no better than chance: "
        "for real results use a trained checkpoint (a hub id, or a folder written by "
        "save_pretrained on a machine with internet).",
    )
    demo.add_argument("folder", metavar="DIR", type=folder, help="a new or empty folder")
    demo.add_argument(
        "--random-state", type=int, default=0, help="seed of the random weights (default 0)"
    )
    demo.set_defaults(func=_demo_model, quiet=False)


def _export_onnx(args: argparse.Namespace) -> int:
    from .export_onnx import export_onnx_command  # imported when the command runs

    return export_onnx_command(args)


def _add_export_onnx(sub: Any) -> None:
    exp = sub.add_parser(
        "export-onnx",
        help="export a checkpoint's image tower for ONNX Runtime now, ahead of first use",
        description="Make the one-time ONNX export of MODEL's image tower that ONNX Runtime "
        "runs on the CPU (otherwise made on first use), in ~/.cache/skclip/onnx or "
        "$SKCLIP_CACHE_DIR/onnx; print its folder. An export already there is checked, "
        "not made again. Needs skclip[onnx].",
    )
    exp.add_argument(
        "model", type=checkpoint, help="checkpoint: hub id or local folder (save_pretrained)"
    )
    exp.add_argument(
        "--dtype",
        choices=("float32", "int8"),
        default="float32",
        help="float32 (the default; what runtime='onnxruntime' uses) or int8 (dynamic "
        "quantization, what dtype='int8' uses)",
    )
    _quiet_or_verbose(exp)
    exp.set_defaults(func=_export_onnx)
