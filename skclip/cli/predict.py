"""``skclip predict``: a model file on images, predictions as CSV."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .report.summary import check_output_path
from .common import _Say, _featurize, _resolve_model, _skipped, _writing


_USAGE_PREDICT = (
    " Usage: skclip predict MODEL_FILE IMAGES... (the model file first, then images or folders)."
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
            raise ValueError(
                f"Image {item!r} is {_file_kind(os.stat(item).st_mode)}, not an image file."
            )
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
            "(FIFOs, devices, sockets): "
            + ", ".join(listing.special[:5])
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

    from .model_file import model_steps

    for _, step in model_steps(pipe):
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


def _check_recorded_folders(pipe: Any, model_file: str) -> None:
    """Without ``--model``: a local checkpoint folder recorded at fit that is gone is an
    error naming it and saying how to pass its new place (before anything is loaded)."""
    from .model_file import missing_checkpoint_folders

    missing = missing_checkpoint_folders(pipe)
    if missing:
        raise ValueError(
            f"{model_file!r} was fitted with the checkpoint folder {missing[0]!r}, which does not "
            "exist any more (moved or deleted). If it moved, pass its new place: skclip "
            f"predict {model_file} IMAGES... --model NEW_FOLDER (its weights fingerprint is "
            "still checked)."
        )


def predict_command(args: argparse.Namespace) -> int:
    """``skclip predict``: see the sub-command's help."""
    from .model_file import checkpoint_names, load_model_file, model_steps, set_step_params

    say = _Say(args.quiet)

    def replaced(line: str) -> None:
        if args.verbose:
            say.note(f"the model file's machine-local parameter is not used: {line}")

    pipe = load_model_file(
        args.model_file,
        usage=_USAGE_PREDICT,
        note=say.always,
        reset_note=replaced,
        machine={"device": args.device, "cache_dir": args.cache_dir},
    )
    if args.output:
        check_output_path(args.output, "--output")
    if args.model is None:
        _check_recorded_folders(pipe, args.model_file)
    paths = _image_paths(args.images, say)
    params: dict[str, Any] = {}
    if args.model is not None:
        checkpoint = _resolve_model(args.model, say, records=False)
        params.update(dict.fromkeys(checkpoint_names(pipe), checkpoint))
    for name, step in model_steps(pipe):
        if args.quiet and "progress" in step.get_params(deep=False):
            params[f"{name}__progress"] = False
    set_step_params(pipe, params)
    level = _stored_level(pipe, args)
    featurizer, head = pipe.steps[0][1], pipe.steps[-1][1]
    # a calibrated model: probabilities of the temperature-scaled classifier
    scores = head.estimator_ if hasattr(head, "predict_set") else head
    say.step(f"loading {featurizer.model}")
    _check_checkpoint(pipe, args.model_file)
    say.step(f"encoding {len(paths)} images")
    X, bad = _featurize(featurizer, np.array(paths), args.on_error)
    _skipped(np.asarray(paths), bad, say)
    good = np.setdiff1d(np.arange(len(paths)), list(bad))
    classes = pipe.classes_
    proba = np.full((len(paths), len(classes)), np.nan)
    pred = np.full(len(paths), "", dtype=object)
    sets = np.full(len(paths), "", dtype=object)
    if len(good):
        if args.proba:
            proba[good] = scores.predict_proba(X[good])
            pred[good] = classes[proba[good].argmax(axis=1)]
        else:
            pred[good] = head.predict(X[good])
        if level is not None:
            in_set = head.predict_set(X[good])[1][:, :, 0]
            sets[good] = ["|".join(map(str, classes[row])) for row in in_set]
    with _writing(args.output or "<stdout>"):
        _write_predictions(args, paths, pred, proba, classes, bad, None if level is None else sets)
    return 0


def _stored_level(pipe: Any, args: argparse.Namespace) -> float | None:
    """The confidence level of the prediction sets to write: None without
    ``--coverage``; the level stored by ``skclip fit --coverage`` with ``--coverage``
    alone or with that same level; any other level is an error (the stored thresholds
    hold for their level only)."""
    if args.coverage is None:
        return None
    step = pipe.steps[-1][1]
    stored = getattr(step, "confidence_level", None)
    if not hasattr(step, "predict_set") or stored is None:
        raise ValueError(
            f"{args.model_file!r} holds no conformal calibration: it was written by 'skclip "
            "fit' without --coverage. Refit with skclip fit DATA_DIR -o MODEL --coverage 0.9."
        )
    stored = float(stored)
    level = args.coverage  # a level between 0 and 1 (the parser checked it), or True: alone
    if level is not True and not np.isclose(level, stored, rtol=0, atol=1e-9):
        raise ValueError(
            f"--coverage {level:g}: {args.model_file!r} was calibrated at {stored:g} "
            "('skclip fit --coverage'); its thresholds hold for that level only. Pass "
            f"--coverage {stored:g} (or --coverage alone), or refit at {level:g}."
        )
    return stored


def _write_predictions(
    args: argparse.Namespace,
    paths: list[str],
    pred: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    bad: dict[int, str],
    sets: np.ndarray | None = None,
) -> None:
    """The CSV of ``skclip predict``, to ``--output`` or stdout; ``sets``: the
    ``|``-separated prediction set of each image (a ``set`` column)."""
    skip = args.on_error == "skip"
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(
            ["path", "prediction"]
            + (["set"] if sets is not None else [])
            + ([f"p_{c}" for c in classes] if args.proba else [])
            + (["error"] if skip else [])
        )
        for i, (path, label) in enumerate(zip(paths, pred)):
            row = [path, label] + ([sets[i]] if sets is not None else [])
            if args.proba:
                row += ["" if i in bad else f"{p:.6f}" for p in proba[i]]
            writer.writerow(row + ([bad.get(i, "")] if skip else []))
    finally:
        if args.output:
            out.close()
