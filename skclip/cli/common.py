"""What the commands share: messages, checks of the command line, encoding folders."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._images import readable
from .arguments import checkpoint_problem, data_folder_problem, default_model, folder_problem


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


def _resolve_model(name: str | None, say: _Say, *, records: bool = True) -> str:
    """A local checkpoint folder as an absolute path (a saved model then finds it from any
    directory, never a hub model of the same name); a hub id as given. ``None``: the
    default (:func:`default_model`). ``records``: the command records the checkpoint in
    what it writes (fit, evaluate's report), and the note says so; predict records
    nothing."""
    from ..backbones._hub import _path_reason

    option = "--model"
    if name is None:
        name, option = default_model()
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if checkpoint_problem(name) is not None:
            raise ValueError(f"{option} {checkpoint_problem(name)}.")
        if folder.is_absolute() or name.startswith((".", "~")):
            raise ValueError(f"{option} {name!r}: the folder does not exist.")
        reason = _path_reason(name)
        if reason is not None:
            raise ValueError(
                f"{option} {name!r} is not a checkpoint folder (read as a local path, not a hub "
                f"id: {reason})."
            )
        return name
    absolute = str(folder.resolve())
    if absolute != name:
        done = (
            f"recorded as {absolute!r}"
            if records
            else f"using {absolute!r} for this run (the model file is not changed)"
        )
        say.note(f"{option} {name!r} is a local folder: {done}")
    return absolute


def _featurizer(args: argparse.Namespace):
    from ..featurizer import CLIPFeaturizer

    # A seed, always: with random_state=None every call would draw new augmented views,
    # so the embedding cache could never reuse them.
    return CLIPFeaturizer(
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
        progress=False if args.quiet else "auto",
        cache_dir=args.cache_dir,
        augment=args.augment,
        random_state=args.random_state,
    )


def _check_common(args: argparse.Namespace) -> None:
    """Checks of the options shared by evaluate and fit that need more than the command
    line (the parser checks the values themselves: :mod:`skclip.cli.arguments`)."""
    _check_cache_dir(args)


def _check_cache_dir(args: argparse.Namespace) -> None:
    if args.cache_dir is not None and folder_problem(args.cache_dir) is not None:
        raise ValueError(f"--cache-dir {folder_problem(args.cache_dir)}.")


def _check_data_folder(path: str, option: str) -> None:
    """A data folder given as a file (a model file, an image) is named as what it is."""
    if data_folder_problem(path) is not None:
        raise ValueError(f"{option} {data_folder_problem(path)}.")


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
        for w in caught
        if isinstance(w.message, ImageLoadWarning)
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

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "per_class": {
            str(c): {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }
