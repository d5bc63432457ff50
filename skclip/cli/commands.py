"""The ``skclip`` command: evaluate, fit and predict on folders of images.

::

    skclip evaluate data/ --cv 5 --report report.html
    skclip fit data/ -o model.skops
    skclip predict model.skops new_images/ --proba --output predictions.csv

Every argument that can be checked from the command line and the folder listings is
checked before a model is loaded or an image encoded.

Exit status: 0 on success, 1 when the data or model cannot be used (the message says
why), 2 for a wrong command line, 141 (128 + SIGPIPE, silently) when whoever reads the
output stops early, as ``skclip predict ... | head`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._images import ImageLoadError, readable
from .model_file import MODEL_SUFFIXES, require_skops
from ..backbones.loading import DEFAULT_MODEL
from .report import write_report
from .report.summary import REPORT_SUFFIXES, check_output_path, render_markdown, shown_method

_EPILOG = (
    "The model is a Hugging Face hub id or a local folder written by save_pretrained (a "
    "local folder is recorded by its absolute path); the default comes from the "
    f"SKCLIP_MODEL environment variable, else {DEFAULT_MODEL}. Data folders hold one "
    "sub-folder of images per class."
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
    _on_error(parser)
    _follow_symlinks(parser)
    _quiet_or_verbose(parser)


def _quiet_or_verbose(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    group.add_argument("-v", "--verbose", action="store_true", help="more detail")


def _on_error(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise",
        help="an image that cannot be read: stop with an error naming every such file "
        "(raise, the default), or leave it out and list it on stderr and in the output (skip)",
    )


def _follow_symlinks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-symlinks", action="store_true",
        help="use class folders that are symbolic links to folders outside the data folder "
        "(by default they are skipped with a warning; links into it are always an error)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skclip`` command."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="skclip", description="Few-shot image classification with CLIP and Tip-Adapter.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"skclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate", help="which method works best on my images?",
        description="Encode every image once, then compare, under the same outer "
        "cross-validation or few-shot split, the accuracy and macro-F1 of zero-shot CLIP, "
        "Tip-Adapter, (with --fine-tune) Tip-Adapter-F, GDA, APE and a linear probe "
        "(logistic regression on the embeddings). Every method's hyperparameters are chosen "
        "by an inner cross-validation on the training images only (their documented "
        "defaults when a class has a single training image); the report says which and how, "
        "with per-class results and a confusion matrix.",
        epilog=_EPILOG,
    )
    ev.add_argument("data_dir", help="folder with one sub-folder of images per class")
    ev.add_argument("--cv", type=int, default=None,
                    help="cross-validation folds (default: 5); with --shots or --test-dir, the "
                    "folds of the inner cross-validation that chooses alpha and beta (default: "
                    "up to 5, as the training images allow)")
    ev.add_argument("--shots", type=int, default=None,
                    help="train on K images per class, test on the rest (instead of --cv)")
    ev.add_argument("--test-dir", default=None,
                    help="train on DATA_DIR, test on this folder (e.g. another domain)")
    ev.add_argument("--fine-tune", action="store_true", help="also evaluate Tip-Adapter-F")
    ev.add_argument("--report", default=None,
                    help="write the report to this .json or .md file (and a confusion-matrix "
                    ".png beside it if matplotlib is installed), or to a .html page that "
                    "opens offline, with a gallery of the misclassified images")
    ev.add_argument("--augment", type=int, default=0, metavar="K",
                    help="training images: mean embedding of K random views (default 0: none)")
    ev.add_argument("--random-state", type=int, default=0,
                    help="seed of splits, augmentation and training (default 0)")
    _common(ev)
    ev.set_defaults(func=evaluate)

    fit = sub.add_parser(
        "fit", help="fit a classifier on a folder and save it",
        description="Fit CLIPFeaturizer + TipAdapterClassifierCV (alpha/beta chosen by "
        "cross-validation) on a folder and save the pipeline: .skops (safe to share and load) "
        "or .joblib (a pickle: loading it runs code). The file holds no model weights: the "
        "checkpoint is loaded again, by name or absolute path, when predicting, and its "
        "weights fingerprint is checked.",
        epilog=_EPILOG,
    )
    fit.add_argument("data_dir", help="folder with one sub-folder of images per class")
    fit.add_argument("-o", "--output", required=True,
                     help="where to save: a .skops or .joblib file")
    fit.add_argument("--cv", type=int, default=None,
                     help="folds to choose alpha/beta (default: 5, or as many as the smallest "
                     "class's images allow); more folds than a class has images is an error")
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
        "'skclip fit'. Writes CSV: path, prediction (and one probability column per class). "
        ".skops files are loaded trusting only skclip, scikit-learn and numpy types; a "
        ".joblib file runs code stored in it, so load only .joblib files you made yourself. "
        "A model file never chooses where skclip writes or what this machine spends: its "
        "cache_dir, cache_size, n_jobs, batch_size, device and runtime are replaced by this "
        "machine's defaults or the options below (-v lists them).",
    )
    pred.add_argument("model_file", help="a .skops or .joblib file written by 'skclip fit'")
    pred.add_argument("images", nargs="+", help="image files or folders")
    pred.add_argument("--proba", action="store_true", help="add class probabilities")
    pred.add_argument("--output", default=None, help="CSV file to write (default: stdout)")
    pred.add_argument("--model", default=None,
                      help="where the checkpoint is now, if it moved since 'skclip fit' (its "
                      "weights fingerprint is still checked)")
    pred.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    pred.add_argument("--cache-dir", default=None, help="folder to keep embeddings in")
    _on_error(pred)
    _quiet_or_verbose(pred)
    pred.set_defaults(func=predict_command)
    return parser


@contextlib.contextmanager
def _progress_bars(quiet: bool) -> Iterator[None]:
    """transformers' own bars ("Loading weights") off with ``-q`` or when stderr is not
    a terminal; restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet or not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the ``skclip`` command; returns the exit status.

    Examples
    --------
    >>> from skclip.cli import main
    >>> main(["predict", "no-such-model.skops", "image.jpg"])
    1
    """
    args = build_parser().parse_args(argv)
    try:
        with _progress_bars(args.quiet):
            return args.func(args)
    except BrokenPipeError:
        return _reader_gone()
    except (ValueError, OSError) as exc:
        print(f"skclip: error: {readable(str(exc))}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as command-line tools
    do. stdout is pointed at /dev/null so that Python's final flush does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what the shell reports for a command stopped that way


# -- helpers ------------------------------------------------------------------------------
@contextlib.contextmanager
def _writing(path: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing ``path`` names it (a full disk's error, raised when a
    buffer is flushed, names no file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, BrokenPipeError) or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc


class _Say:
    """Messages on stderr. ``note``: always unless ``-q``; ``always``: even with ``-q``.
    ``step``: plain progress lines, only when stderr is not a terminal (CI logs, nohup),
    where no progress bar shows."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.plain = not quiet and not sys.stderr.isatty()
        self._start = time.perf_counter()

    def note(self, message: str) -> None:
        if not self.quiet:
            self.always(message)

    @staticmethod
    def always(message: str) -> None:
        """A message that ``-q`` does not silence: what the user must know (safety)."""
        print(f"skclip: {message}", file=sys.stderr, flush=True)

    def step(self, message: str) -> None:
        if self.plain:
            elapsed = time.perf_counter() - self._start
            print(f"skclip: [{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


def _resolve_model(name: str, say: _Say) -> str:
    """A local checkpoint folder as an absolute path (a saved model then finds it from any
    directory, never a hub model of the same name); a hub id as given."""
    from ..backbones._hub import _path_reason

    folder = Path(name).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"--model {name!r} is a file, not a checkpoint folder.")
        if folder.is_absolute() or name.startswith((".", "~")):
            raise ValueError(f"--model {name!r}: the folder does not exist.")
        reason = _path_reason(name)
        if reason is not None:
            raise ValueError(
                f"--model {name!r} is not a checkpoint folder (read as a local path, not a hub "
                f"id: {reason})."
            )
        return name
    absolute = str(folder.resolve())
    if absolute != name:
        say.note(f"--model {name!r} is a local folder: recorded as {absolute!r}")
    return absolute


def _featurizer(args: argparse.Namespace):
    from ..featurizer import CLIPFeaturizer

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
    _check_cache_dir(args)


def _check_cache_dir(args: argparse.Namespace) -> None:
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(
        args.cache_dir
    ).is_dir():
        raise ValueError(f"--cache-dir {args.cache_dir!r} is a file, not a folder.")


def _check_data_folder(path: str, option: str) -> None:
    """A data folder given as a file (a model file, an image) is named as what it is."""
    if Path(path).is_file():
        hint = (" (a model file: classify images with it by 'skclip predict MODEL_FILE "
                "IMAGES...')" if Path(path).suffix.lower() in MODEL_SUFFIXES else "")
        raise ValueError(
            f"{option} {path!r} is a file, not a folder with one sub-folder of images per "
            f"class{hint}."
        )


def _short_reason(path: str, index: int, reason: str) -> str:
    """The reason an image could not be used, without its path and input position (the
    caller names the path once)."""
    from .._images import describe

    named = re.escape(describe(path, index))
    reason = re.sub(rf"^Cannot read image {named}: ", "", reason)
    reason = re.sub(rf"\s*:?\s*{named}", "", reason).rstrip(".")
    return readable(reason)


def _featurize(
    featurizer: Any, files: np.ndarray, on_error: str, *, augmented: bool = False
) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings of ``files`` (augmented training keys if ``augmented``) and, with
    ``on_error="skip"``, ``{position: reason}`` of the files that could not be read
    (their rows are NaN). With ``on_error="raise"`` such files are a ValueError that
    lists them, each as "path: reason", and suggests ``--on-error skip``."""
    from .._images import ImageLoadWarning

    featurizer.set_params(on_error="warn")  # every bad file is found, then reported here
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ImageLoadWarning)
            X = featurizer.fit_transform(files) if augmented else featurizer.transform(files)
    finally:
        featurizer.set_params(on_error="raise")
    for w in caught:
        if not issubclass(w.category, ImageLoadWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    bad = {
        int(i): _short_reason(str(files[int(i)]), int(i), reason)
        for w in caught if issubclass(w.category, ImageLoadWarning)
        for i, reason in w.message.errors.items()
    }
    if bad and on_error == "raise":
        raise ValueError(
            f"{len(bad)} of {len(files)} images could not be read:\n"
            + "\n".join(f"  {files[i]}: {reason}" for i, reason in sorted(bad.items()))
            + "\nFix or remove them, or pass --on-error skip to leave them out."
        )
    return X, bad


def _skipped(files: np.ndarray, bad: dict[int, str], say: _Say) -> list[dict[str, str]]:
    """List skipped files on stderr ("path: reason"); return them for the report."""
    if bad:
        say.note(f"skipped {len(bad)} of {len(files)} images that could not be read:")
        for i, reason in sorted(bad.items()):
            print(f"  {files[i]}: {reason}", file=sys.stderr)
    return [{"path": str(files[i]), "error": reason} for i, reason in sorted(bad.items())]


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
        return {"splits": splits, "cv": folds, "inner_cv": _inner_cv(smallest_train, None),
                "protocol": f"{folds}-fold stratified cross-validation"}
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
            protocol = (f"{args.shots} images per class of {args.data_dir}, "
                        f"test on {args.test_dir}")
    else:
        protocol = f"{args.shots}-shot split, the other images as test set"
    inner_cv = _inner_cv(_smallest_class(y[train]), args.cv)
    return {"splits": [(train, test_idx)], "cv": None, "inner_cv": inner_cv,
            "protocol": protocol}


def _shots_per_class(y: np.ndarray, shots: int, random_state: int) -> np.ndarray:
    """Sorted indices of ``shots`` images per class (with ``--test-dir``, where no image
    of DATA_DIR is kept to test on, so a class may have exactly ``shots``)."""
    classes, counts = np.unique(y, return_counts=True)
    short = [f"{c!r} ({n})" for c, n in zip(classes.tolist(), counts.tolist()) if n < shots]
    if short:
        raise ValueError(f"--shots {shots} needs {shots} training images in every class; "
                         "these have fewer: " + ", ".join(short) + ".")
    rng = np.random.RandomState(random_state)
    return np.sort(np.concatenate(
        [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in classes]))


def _check_evaluate(args: argparse.Namespace) -> tuple[Any, Any]:
    """Check everything that can be checked from the arguments and the folder listings,
    before any model is loaded or image encoded; return the listings."""
    from ..datasets import load_image_folder

    _check_common(args)
    if args.shots is not None and args.shots < 1:
        raise ValueError(f"--shots must be at least 1, got {args.shots}.")
    if args.cv is not None and args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}.")
    if args.report:
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
    _splits(args, data.labels)
    return data, test


def _text_model(args: argparse.Namespace) -> str | None:
    """``args.model`` as the classifiers' ``clip_model``, or None for an image-only
    backbone (DINOv2...): the cache model alone, without a zero-shot text term."""
    from ..backbones.loading import load_backbone

    return args.model if load_backbone(args.model, args.device).has_text else None


#: Hyperparameter grids that the inner cross-validation of ``skclip evaluate`` searches.
#: GDA: the authors' grid of alpha (Wang et al., ICLR 2024). APE: alpha and beta in the
#: authors' search range [0.1, 7), gamma in [0, 0.5) (Zhu et al., ICCV 2023), coarsely.
#: Linear probe: the inverse L2 penalty C of logistic regression, log-spaced.
GRIDS: dict[str, dict[str, list[float]]] = {
    "GDA": {"alpha": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]},
    "APE": {"alpha": [0.5, 1.0, 2.0, 4.0], "beta": [1.0, 3.0, 5.5], "gamma": [0.0, 0.1, 0.3]},
    "linear probe": {"C": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]},
}


def _grid_text(grid: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} in [{', '.join(f'{v:g}' for v in values)}]"
                     for k, values in grid.items())


def _methods(args: argparse.Namespace, inner_cv: int | None, n_train_min: int) -> dict:
    """``{name: (estimator, how it is configured, its hyperparameters)}``: every
    hyperparameter is chosen by
    an inner cross-validation on the training images of each split (accuracy), or is
    the method's documented default when a class has a single training image. No
    zero-shot method for an image-only backbone (GDA and APE then have no text term)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from ..ape import APEClassifier
    from ..gda import GDAClassifier
    from ..model_selection import TipAdapterClassifierCV
    from ..tip_adapter import TipAdapterClassifier

    common = dict(clip_model=_text_model(args), device=args.device)
    methods: dict[str, tuple[Any, str]] = {}
    if common["clip_model"] is not None:
        methods["zero-shot CLIP"] = (TipAdapterClassifier(alpha=0.0, **common),
                                     "text classifier only (alpha=0), no training image used",
                                     ())
    no_cv = (f"{n_train_min} training image(s) in the smallest class leave no inner "
             "cross-validation")
    variants = [("Tip-Adapter", False)] + ([("Tip-Adapter-F", True)] if args.fine_tune else [])
    for name, fine_tune in variants:
        extra = dict(fine_tune=True, random_state=args.random_state) if fine_tune else {}
        if inner_cv is not None:
            methods[name] = (
                TipAdapterClassifierCV(cv=inner_cv, **extra, **common),
                f"alpha and beta chosen by {inner_cv}-fold inner cross-validation (accuracy) "
                "on the training images, over TipAdapterClassifierCV's default grid",
                ("alpha", "beta"),
            )
        else:
            est = TipAdapterClassifier(**extra, **common)
            methods[name] = (est, f"default alpha={est.alpha:g}, beta={est.beta:g}: {no_cv}",
                             ("alpha", "beta"))
    heads = {
        "GDA": (GDAClassifier(**common), ""),
        "APE": (APEClassifier(**common), ""),
        "linear probe": (LogisticRegression(max_iter=2000), "logistic regression on the "
                         "embeddings (the CLIP paper's linear probe); "),
    }
    # GDA learns nothing from one image per class (zero scatter): every alpha ties then
    smallest_inner_train = 0 if inner_cv is None else n_train_min - -(-n_train_min // inner_cv)
    for name, (est, what) in heads.items():
        grid = GRIDS[name]
        if inner_cv is None or (name == "GDA" and smallest_inner_train < 2):
            defaults = est.get_params()
            why = no_cv if inner_cv is None else (
                f"{inner_cv}-fold inner folds train GDA on {smallest_inner_train} image(s) of "
                "the smallest class, where its covariance carries no information")
            how = "default " + ", ".join(f"{k}={defaults[k]:g}" for k in grid) + f": {why}"
        else:
            inner = StratifiedKFold(inner_cv, shuffle=True, random_state=args.random_state)
            est = GridSearchCV(est, grid, cv=inner, scoring="accuracy")
            how = (f"{_grid_text(grid)} chosen by {inner_cv}-fold inner cross-validation "
                   "(accuracy) on the training images")
        methods[name] = (est, what + how, tuple(grid))
    return methods


def _chosen(fitted: Any, names: tuple[str, ...]) -> dict[str, float]:
    """The hyperparameters ``names`` that a fitted method uses: chosen by its inner
    cross-validation (GridSearchCV, TipAdapterClassifierCV), else its fixed values."""
    if hasattr(fitted, "best_params_"):
        return {k: float(v) for k, v in fitted.best_params_.items()}
    if hasattr(fitted, "alpha_"):
        return {"alpha": float(fitted.alpha_), "beta": float(fitted.beta_)}
    params = fitted.get_params()
    return {n: float(params[n]) for n in names}


#: Most misclassified images in the HTML report's gallery.
GALLERY_SIZE = 60


def _gallery(mistakes: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The mistakes the HTML gallery shows: every method's most confident ones, an equal
    share of :data:`GALLERY_SIZE` each (so one weak method cannot fill it)."""
    share = -(-GALLERY_SIZE // max(1, len(mistakes)))
    return [m for found in mistakes.values()
            for m in sorted(found, key=lambda m: -m["confidence"])[:share]]


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
        {"path": str(files_q[i]), "true": str(y_q[i]), "pred": str(pred[i]),
         "confidence": float(proba[k, column[pred[i]]])}
        for k, i in enumerate(wrong)
    ]


def _after_skipping(
    args: argparse.Namespace, classes: np.ndarray, y: np.ndarray, n_skipped: int,
    y_test: np.ndarray | None = None, test_classes: np.ndarray | None = None,
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
        "tower_fingerprints": {"vision": clip.vision_fingerprint,
                               "text": clip.text_fingerprint if clip.has_text else None},
    }


def evaluate(args: argparse.Namespace) -> int:
    """``skclip evaluate``: see the sub-command's help."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, f1_score

    from .._version import __version__

    say = _Say(args.quiet)
    args.model = _resolve_model(args.model, say)
    data, test = _check_evaluate(args)
    classes = data.target_names
    say.step(f"{args.data_dir}: {len(data.labels)} images in {len(classes)} classes"
             + (f"; {args.test_dir}: {len(test.labels)} images" if test is not None else ""))
    featurizer = _featurizer(args)
    say.step(f"encoding {len(data.labels)} images with {args.model}")
    X, bad = _featurize(featurizer, data.filenames, args.on_error)
    skipped = _skipped(data.filenames, bad, say)
    keep = np.setdiff1d(np.arange(len(X)), list(bad))
    files, X, y = data.filenames[keep], X[keep], data.labels[keep]
    X_keys = _featurize(featurizer, files, "raise", augmented=True)[0] if args.augment else X
    if test is not None:
        say.step(f"encoding {len(test.labels)} test images")
        X_test, bad_test = _featurize(featurizer, test.filenames, args.on_error)
        skipped += _skipped(test.filenames, bad_test, say)
        keep_test = np.setdiff1d(np.arange(len(X_test)), list(bad_test))
        X_test, y_test = X_test[keep_test], test.labels[keep_test]
        test_files = test.filenames[keep_test]
    # Again: skipped files may have changed the classes' sizes.
    plan = _after_skipping(args, classes, y, len(skipped),
                           None if test is None else y_test,
                           None if test is None else np.unique(test.labels))
    splits = plan["splits"]
    n_train_min = min(_smallest_class(y[train]) for train, _ in splits)
    methods = _methods(args, plan["inner_cv"], n_train_min)
    report: dict[str, Any] = {
        "skclip_version": __version__,
        "data_dir": str(args.data_dir), "test_dir": args.test_dir,
        "model": str(args.model), **_fingerprints(args),
        "protocol": plan["protocol"], "shots": args.shots, "cv": plan["cv"],
        "inner_cv": plan["inner_cv"], "random_state": args.random_state, "augment": args.augment,
        "n_images": int(len(y)), "n_test_dir_images": None if test is None else int(len(y_test)),
        "splits": [
            {"n_train": int(len(train)), "n_test": int(len(y_test) if part is None else len(part))}
            for train, part in splits
        ],
        "skipped": skipped, "classes": classes.tolist(), "methods": {},
    }
    mistakes: dict[str, list[dict[str, Any]]] = {}
    for name, (est, configuration, names) in methods.items():
        say.step(f"evaluating {name} ({len(splits)} split(s))")
        pred_all, truth_all, acc, f1, chosen = [], [], [], [], []
        mistakes[name] = []
        for train, part in splits:
            if part is None:
                X_q, y_q, files_q = X_test, y_test, test_files
            else:
                X_q, y_q, files_q = X[part], y[part], files[part]
            fitted = clone(est).fit(X_keys[train], y[train])
            pred = fitted.predict(X_q)
            pred_all.append(pred)
            truth_all.append(y_q)
            acc.append(accuracy_score(y_q, pred))
            f1.append(f1_score(y_q, pred, average="macro"))
            chosen.append(_chosen(fitted, names))
            mistakes[name] += [{**m, "method": name}
                               for m in _mistakes(fitted, X_q, y_q, files_q, pred)]
        single = len(splits) == 1
        # What the method uses from here on: its choice on all the images (one split:
        # the training images of that split).
        params = chosen[0] if single or not names else _chosen(clone(est).fit(X_keys, y), names)
        entry = {
            "configuration": configuration,
            "accuracy": float(np.mean(acc)), "accuracy_std": None if single else float(np.std(acc)),
            "f1_macro": float(np.mean(f1)), "f1_macro_std": None if single else float(np.std(f1)),
            **_scores(np.concatenate(truth_all), np.concatenate(pred_all), classes),
            "params": params,
            "params_per_split": chosen,
        }
        if name.startswith("Tip-Adapter"):
            entry.update(alpha=params["alpha"], beta=params["beta"])
        report["methods"][name] = entry
    report["per_class_method"] = shown_method(report)
    print(render_markdown(report))
    if args.report:
        with _writing(args.report):
            written = write_report(report, args.report, verbose=args.verbose,
                                   misclassified=_gallery(mistakes), max_images=GALLERY_SIZE)
        for path in written:
            say.step(f"wrote {path}")
    return 0


# -- fit / predict ------------------------------------------------------------------------
def fit_command(args: argparse.Namespace) -> int:
    """``skclip fit``: see the sub-command's help."""
    from sklearn.pipeline import Pipeline

    from .model_file import save_model
    from ..datasets import load_image_folder
    from ..model_selection import TipAdapterClassifierCV

    say = _Say(args.quiet)
    args.model = _resolve_model(args.model, say)
    _check_common(args)
    if args.cv is not None and args.cv < 2:
        raise ValueError(f"--cv must be at least 2, got {args.cv}.")
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
    files, labels = data.filenames, data.labels
    skipped: list[dict[str, str]] = []
    if args.on_error == "skip":  # find the unreadable files (the embeddings stay cached)
        say.step(f"encoding {len(files)} images with {args.model}")
        _, bad = _featurize(_featurizer(args), files, "skip")
        skipped = _skipped(files, bad, say)
        keep = np.setdiff1d(np.arange(len(files)), list(bad))
        files, labels = files[keep], labels[keep]
        smallest = min(int(np.sum(labels == c)) for c in data.target_names)
        if smallest < 2:
            raise ValueError(f"After skipping {len(bad)} unreadable image(s), a class has "
                             f"{smallest} image(s): fewer than 2 to choose alpha and beta.")
        if args.cv is not None and args.cv > smallest:
            raise ValueError(f"After skipping {len(bad)} unreadable image(s): "
                             f"{_too_few_for_cv(args.cv, smallest)}")
    cv = min(5, _smallest_class(labels)) if args.cv is None else args.cv
    pipe = Pipeline([
        ("clip", _featurizer(args)),
        ("tip", TipAdapterClassifierCV(
            clip_model=_text_model(args), device=args.device, cv=cv, fine_tune=args.fine_tune,
            random_state=args.random_state,
        )),
    ])
    say.step(f"fitting on {len(files)} images ({cv}-fold choice of alpha and beta)")
    try:
        pipe.fit(files, labels)
    except ImageLoadError as exc:  # every unreadable image, named: say what to do
        raise ValueError(
            f"{readable(str(exc))}\nFix or remove them, or pass --on-error skip to leave them out."
        ) from None
    with _writing(args.output):
        save_model(pipe, args.output)
    tip = pipe.named_steps["tip"]
    print(f"saved {args.output}: {len(labels)} images, classes {data.target_names.tolist()}, "
          f"alpha={tip.alpha_:.3g} beta={tip.beta_:.3g} ({cv}-fold accuracy {tip.best_score_:.3f})"
          + (f"; skipped {len(skipped)} unreadable images" if skipped else "")
          + f"; model {args.model}")
    return 0


_USAGE_PREDICT = (
    " Usage: skclip predict MODEL_FILE IMAGES... (the model file first, then images or "
    "folders)."
)


def _image_paths(items: list[str], say: _Say) -> list[str]:
    """Expand folders into their images; every item must exist and be a regular file or
    a folder (checked before encoding). A note lists what folders hold besides images."""
    from .._images import _file_kind
    from ..datasets import IMAGE_EXTENSIONS, _list_images

    paths: list[str] = []
    for item in items:
        if Path(item).is_dir():
            listing = _list_images(Path(item), IMAGE_EXTENSIONS)
            if not listing.images:
                raise ValueError(f"Folder {item!r} has no images.")
            _note_skipped(item, listing, say)
            paths.extend(listing.images)
        elif Path(item).is_file():
            paths.append(item)
        elif Path(item).exists():  # a FIFO, a device, a socket: never opened
            raise ValueError(f"Image {item!r} is {_file_kind(os.stat(item).st_mode)}, not an "
                             "image file.")
        elif os.path.lexists(item):
            raise ValueError(f"Image {item!r} is a symbolic link whose target does not exist.")
        else:
            raise ValueError(f"Image file or folder {item!r} does not exist.")
    return paths


def _note_skipped(folder: str, listing: Any, say: _Say) -> None:
    """Say which files of ``folder`` are not encoded: other extensions (by extension),
    and entries that are not regular files."""
    if listing.other:
        counts: dict[str, int] = {}
        for path in listing.other:
            ext = os.path.splitext(path)[1].lower() or "(no extension)"
            counts[ext] = counts.get(ext, 0) + 1
        say.note(
            f"{folder}: skipped {len(listing.other)} file(s) that are not images by their "
            "extension: " + ", ".join(f"{ext} ({n})" for ext, n in sorted(counts.items()))
        )
    if listing.special:
        say.note(
            f"{folder}: skipped {len(listing.special)} entries that are not regular files "
            "(FIFOs, devices, sockets): " + ", ".join(listing.special[:5])
            + (" ..." if len(listing.special) > 5 else "")
        )


def _check_checkpoint(pipe: Any, model_file: str) -> None:
    """Load the checkpoint of every step that records one and compare its fingerprint
    with the ``model_fingerprint_`` recorded at fit, before any image is encoded.

    Raises
    ------
    CheckpointMismatchError
        Naming the model file, the checkpoint, both fingerprints and ``--model PATH``.
    """
    from ..encoding.engine import model_dtype
    from ..backbones.loading import CheckpointMismatchError, check_fingerprint, load_backbone

    for _, step in pipe.steps:
        name = getattr(step, "model", None) or getattr(step, "clip_model", None)
        if getattr(step, "model_fingerprint_", None) is None or name is None:
            continue
        dtype = model_dtype(getattr(step, "dtype", "auto"))  # int8: quantized from float32
        clip = load_backbone(name, step.device, dtype)
        try:
            check_fingerprint(step, name, clip)
        except CheckpointMismatchError:
            raise CheckpointMismatchError(
                f"The checkpoint {os.fspath(name)!r} is not the one {model_file!r} was fitted "
                f"with: its weights fingerprint is {clip.fingerprint}, the model was fitted "
                f"with {step.model_fingerprint_}. If the checkpoint moved, pass its folder: "
                f"skclip predict {model_file} IMAGES... --model PATH."
            ) from None


def predict_command(args: argparse.Namespace) -> int:
    """``skclip predict``: see the sub-command's help."""
    from .model_file import checkpoint_names, load_model_file

    say = _Say(args.quiet)
    _check_cache_dir(args)

    def replaced(line: str) -> None:
        if args.verbose:
            say.note(f"the model file's machine-local parameter is not used: {line}")

    pipe = load_model_file(args.model_file, usage=_USAGE_PREDICT, note=say.always, reset_note=replaced,
                      machine={"device": args.device, "cache_dir": args.cache_dir})
    if args.output:
        check_output_path(args.output, "--output")
    paths = _image_paths(args.images, say)
    params: dict[str, Any] = {}
    if args.model is not None:
        params.update(dict.fromkeys(checkpoint_names(pipe), _resolve_model(args.model, say)))
    for name, step in pipe.steps:
        if args.quiet and "progress" in step.get_params(deep=False):
            params[f"{name}__progress"] = False
    pipe.set_params(**params)
    featurizer, head = pipe.steps[0][1], pipe[1:]
    say.step(f"loading {featurizer.model}")
    _check_checkpoint(pipe, args.model_file)
    say.step(f"encoding {len(paths)} images")
    X, bad = _featurize(featurizer, np.array(paths), args.on_error)
    _skipped(np.asarray(paths), bad, say)
    good = np.setdiff1d(np.arange(len(paths)), list(bad))
    classes = pipe.classes_
    proba = np.full((len(paths), len(classes)), np.nan)
    pred = np.full(len(paths), "", dtype=object)
    if len(good):
        if args.proba:
            proba[good] = head.predict_proba(X[good])
            pred[good] = classes[proba[good].argmax(axis=1)]
        else:
            pred[good] = head.predict(X[good])
    with _writing(args.output or "<stdout>"):
        _write_predictions(args, paths, pred, proba, classes, bad)
    return 0


def _write_predictions(
    args: argparse.Namespace, paths: list[str], pred: np.ndarray, proba: np.ndarray,
    classes: np.ndarray, bad: dict[int, str],
) -> None:
    """The CSV of ``skclip predict``, to ``--output`` or stdout."""
    skip = args.on_error == "skip"
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "prediction"] + ([f"p_{c}" for c in classes] if args.proba else [])
                        + (["error"] if skip else []))
        for i, (path, label) in enumerate(zip(paths, pred)):
            row = [path, label]
            if args.proba:
                row += ["" if i in bad else f"{p:.6f}" for p in proba[i]]
            writer.writerow(row + ([bad.get(i, "")] if skip else []))
    finally:
        if args.output:
            out.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
