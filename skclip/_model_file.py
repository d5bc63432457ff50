"""Model files of ``skclip fit``: saving, loading safely, and guarding the checkpoint.

A model file holds a fitted :class:`~sklearn.pipeline.Pipeline` whose first step is a
:class:`~skclip.CLIPFeaturizer`: parameters and fitted arrays, never weights. The CLIP
checkpoint is loaded again by name or path, so the file also records the checkpoint's
weights fingerprints (``skclip_checkpoint_``) and :func:`check_checkpoint` refuses a
different checkpoint found under that name.

Two formats:

- ``.skops`` (:mod:`skops.io`): loading trusts only the types skclip, scikit-learn and
  numpy need and refuses anything else, naming the type: safe for files from others.
- ``.joblib`` (pickle): loading runs code stored in the file: only for files you made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: File suffixes a model file may have.
MODEL_SUFFIXES = (".joblib", ".skops")

#: Module prefixes of the types a ``.skops`` model file may contain.
TRUSTED_PREFIXES = ("skclip.", "sklearn.", "numpy.")

_JOBLIB_NOTE = (
    "note: loading a .joblib file runs code stored in it; load only files you made "
    "yourself (share models as .skops files)."
)


def require_skops() -> None:
    """Raise a ValueError saying how to install skops if it is missing."""
    try:
        import skops.io  # noqa: F401
    except ImportError:
        raise ValueError(
            ".skops model files need the skops package: pip install skops "
            "(or pip install 'skclip[skops]')."
        ) from None


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save ``model`` with skops (``.skops``) or joblib (any other suffix)."""
    if Path(path).suffix.lower() == ".skops":
        require_skops()
        import skops.io

        skops.io.dump(model, path)
    else:
        import joblib

        joblib.dump(model, path)


def _unreadable(path: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"Cannot read the model file {path!r}: it is damaged (e.g. truncated) or not a file "
        f"written by 'skclip fit' ({type(exc).__name__} while loading)."
    )


def _load_skops(path: str) -> Any:
    require_skops()
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip archive, or not skops's schema
        raise _unreadable(path, exc) from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(
            f"The model file {path!r} contains types that skclip does not load: "
            f"{', '.join(refused)}. Only skclip, scikit-learn and numpy types are trusted. If "
            "you trust whoever made the file, load it in Python with "
            "skops.io.load(file, trusted=[...])."
        )
    try:
        return skops.io.load(path, trusted=untrusted)
    except Exception as exc:  # damaged archive members
        raise _unreadable(path, exc) from None


def load_model(path: str | os.PathLike, *, usage: str = "", note: Any = None) -> Any:
    """Load the Pipeline that ``skclip fit`` saved in ``path``.

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file (loaded with trusted types only) or a joblib file.
    usage : str, default=""
        Appended to the messages about a missing file or a folder.
    note : callable or None, default=None
        Called with a one-line note before a joblib file is loaded (it runs code).

    Returns
    -------
    model : Pipeline

    Raises
    ------
    ValueError
        One sentence naming the file when it is missing, a folder, damaged, holds
        untrusted types or something other than a fitted skclip pipeline.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    from .featurizer import CLIPFeaturizer

    name = os.fspath(path)
    file = Path(name)
    if file.is_dir():
        raise ValueError(f"{name!r} is a folder, not a model file.{usage}")
    if not file.is_file():
        raise ValueError(f"Model file {name!r} does not exist.{usage}")
    if file.suffix.lower() == ".skops":
        model = _load_skops(name)
    else:
        import joblib

        if note is not None:
            note(_JOBLIB_NOTE)
        try:
            model = joblib.load(file)
        except Exception as exc:  # unpickling damaged or foreign bytes can raise anything
            raise _unreadable(name, exc) from None
    is_pipeline = isinstance(model, Pipeline) and len(model.steps) >= 2
    if not is_pipeline or not isinstance(model.steps[0][1], CLIPFeaturizer):
        raise ValueError(
            f"{name!r} is not a model written by 'skclip fit': it holds a "
            f"{type(model).__name__}, not a Pipeline of a CLIPFeaturizer and a classifier."
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ValueError(f"The model in {name!r} is not fitted.") from None
    return model


def checkpoint_names(model: Any) -> dict[str, str]:
    """The checkpoint parameters of the pipeline's steps: ``{"clip__model": name, ...}``."""
    names = {}
    for step_name, step in model.steps:
        params = step.get_params(deep=False)
        for key in ("model", "clip_model"):
            if isinstance(params.get(key), (str, os.PathLike)):
                names[f"{step_name}__{key}"] = os.fspath(params[key])
    return names


def _loaded(featurizer: Any) -> Any:
    """The featurizer's checkpoint, loaded (shared with the featurizer itself)."""
    from ._models import load_clip

    return load_clip(featurizer.model, featurizer.device, featurizer.dtype)


def _fingerprints(clip: Any) -> dict[str, str | None]:
    return {
        "vision": clip.vision_fingerprint,
        "text": clip.text_fingerprint if clip.has_text else None,  # None: image-only
    }


def record_checkpoint(model: Any) -> dict[str, Any]:
    """Store the name and weights fingerprints of the featurizer's checkpoint in
    ``model.skclip_checkpoint_`` (the model was just fitted, so it is loaded)."""
    featurizer = model.steps[0][1]
    clip = _loaded(featurizer)
    model.skclip_checkpoint_ = {"model": os.fspath(featurizer.model), **_fingerprints(clip)}
    return model.skclip_checkpoint_


def check_checkpoint(model: Any, file: str) -> None:
    """Load the featurizer's checkpoint and check it is the one recorded at fit.

    Raises
    ------
    ValueError
        If its fingerprints differ, naming what was stored and what was found.
    """
    featurizer = model.steps[0][1]
    clip = _loaded(featurizer)
    recorded = getattr(model, "skclip_checkpoint_", None)
    if not recorded:  # a file from before the fingerprints were recorded
        return
    found = _fingerprints(clip)
    changed = [
        tower for tower in ("vision", "text")
        if recorded.get(tower) and found[tower] and recorded[tower] != found[tower]
    ]
    if changed:
        raise ValueError(
            f"The checkpoint {os.fspath(featurizer.model)!r} is not the one {file!r} was fitted "
            f"with: {' and '.join(changed)} weights differ (fitted with {recorded['model']!r}, "
            + ", ".join(f"{t} fingerprint {recorded[t]}" for t in changed)
            + "; found "
            + ", ".join(f"{t} fingerprint {found[t]}" for t in changed)
            + "). Pass the original checkpoint's folder with --model."
        )
