"""Model files of ``skclip fit``: saving and loading them safely.

A model file holds a fitted :class:`~sklearn.pipeline.Pipeline` of exactly two steps, a
:class:`~skclip.CLIPFeaturizer` and a skclip classifier: parameters and fitted arrays,
never weights. The checkpoint is loaded again by name or path; the estimators record its
weights fingerprint (``model_fingerprint_``) at fit and refuse a different checkpoint
found later under that name (:class:`skclip.CheckpointMismatchError`).

Two formats:

- ``.skops`` (:mod:`skops.io`): loading trusts only the types listed in
  :data:`TRUSTED_TYPES` (what a ``skclip fit`` file holds) and refuses anything else,
  naming the type: safe for files from others.
- ``.joblib`` (pickle): loading runs code stored in the file: only for files you made.

A model file is data: it never decides where skclip writes or what this machine spends.
Loading one resets the machine-local parameters of its steps (:data:`MACHINE_PARAMS`:
``cache_dir``, ``cache_size``, ``n_jobs``, the featurizer's ``batch_size``, ``device``,
``runtime``) to their defaults or to the command's options
(:func:`reset_machine_params`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: File suffixes a model file may have.
MODEL_SUFFIXES = (".joblib", ".skops")

#: Image file suffixes: such a file given as the model means the arguments were swapped.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: The types a ``.skops`` model file may hold beyond those skops trusts by default:
#: exactly what :func:`skops.io.get_untrusted_types` reports for the files ``skclip fit``
#: writes (with or without ``--fine-tune``, with or without ``--coverage``: its
#: calibration adds the last two; sklearn's ``FrozenEstimator`` between them is trusted
#: by skops), and the plain Tip-Adapter classifier.
TRUSTED_TYPES = (
    "skclip.featurizer.CLIPFeaturizer",
    "skclip.model_selection.TipAdapterClassifierCV",
    "skclip.tip_adapter.TipAdapterClassifier",
    "skclip.calibration.TemperatureScaledClassifier",
    "skclip.conformal.MondrianConformalClassifier",
)

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


#: Most bytes the members of a ``.skops`` model file may unpack to (their sizes as the
#: archive declares them, which also bound what is read). A fitted skclip model holds
#: parameters and arrays of the training features: megabytes, rarely a gigabyte. Raise it
#: (``skclip._model_file.MAX_UNPACKED_BYTES = ...``) for a larger model you trust.
MAX_UNPACKED_BYTES = 4 * 2**30


def _load_skops(path: str) -> Any:
    require_skops()
    import zipfile

    import skops.io

    try:  # before anything is unpacked: a tiny file may declare gigabytes of zeros
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise ValueError(
            f"The model file {path!r} ({os.path.getsize(path)} bytes) unpacks to {unpacked} "
            f"bytes, more than skclip._model_file.MAX_UNPACKED_BYTES={MAX_UNPACKED_BYTES}: not "
            "loaded (a small file that unpacks to gigabytes would exhaust memory). If you "
            "trust the file, raise that limit before loading it."
        )
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip archive, or not skops's schema
        raise _unreadable(path, exc) from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise ValueError(
            f"The model file {path!r} contains types that skclip does not load: "
            f"{', '.join(refused)}. Only the types of a model written by 'skclip fit' are "
            "trusted. If you trust whoever made the file, load it in Python with "
            "skops.io.load(file, trusted=[...])."
        )
    try:
        return skops.io.load(path, trusted=untrusted)
    except Exception as exc:  # damaged archive members
        raise _unreadable(path, exc) from None


def _classifiers() -> tuple[type, ...]:
    """The classifier classes a model file's second step may be."""
    from ..model_selection import TipAdapterClassifierCV
    from ..tip_adapter import TipAdapterClassifier

    return (TipAdapterClassifierCV, TipAdapterClassifier)


def calibrated_classifier(step: Any) -> Any:
    """The classifier inside a calibrated step of ``skclip fit --coverage``, i.e.
    ``MondrianConformalClassifier(TemperatureScaledClassifier(FrozenEstimator(clf)))``
    whose fitted ``estimator_`` are those same objects; None for any other step."""
    from sklearn.frozen import FrozenEstimator

    from ..calibration import TemperatureScaledClassifier
    from ..conformal import MondrianConformalClassifier

    chain = (MondrianConformalClassifier, TemperatureScaledClassifier, FrozenEstimator)
    for kind in chain:
        if type(step) is not kind or getattr(step, "estimator_", step.estimator) is not (
            step.estimator
        ):
            return None
        step = step.estimator
    return step if type(step) in _classifiers() else None


def model_steps(model: Any) -> list[tuple[str, Any]]:
    """The Pipeline's steps, and after a calibrated step (:func:`calibrated_classifier`)
    the classifier inside it, as ``"<step>.classifier"``: every estimator whose
    checkpoint and machine-local parameters a model file must not decide."""
    steps = list(model.steps)
    for name, step in model.steps:
        inner = calibrated_classifier(step)
        if inner is not None:
            steps.append((f"{name}.classifier", inner))
    return steps


def set_step_params(model: Any, params: dict[str, Any]) -> None:
    """Set ``{"<step>__<param>": value}`` on the estimators of :func:`model_steps`
    (directly: a FrozenEstimator refuses nested ``set_params``)."""
    steps = dict(model_steps(model))
    for key, value in params.items():
        step, param = key.split("__", 1)
        steps[step].set_params(**{param: value})


def model_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a model file, from its name and kind alone, else None: a
    folder, an image (arguments swapped), another suffix (never unpickled). A missing
    file is not such a problem: :func:`load_model_file` says so.

    Examples
    --------
    >>> from skclip.cli.model_file import model_file_problem
    >>> model_file_problem("photo.jpg")
    "'photo.jpg' is an image, not a model file"
    >>> model_file_problem("model.skops") is None
    True
    """
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    if Path(name).is_dir():
        return f"{name!r} is a folder, not a model file"
    if suffix in _IMAGE_SUFFIXES:
        return f"{name!r} is an image, not a model file"
    if suffix not in MODEL_SUFFIXES:
        return (
            f"{name!r} is not a model file: model files written by 'skclip fit' end in "
            f"{' or '.join(MODEL_SUFFIXES)}"
        )
    return None


def load_model_file(
    path: str | os.PathLike,
    *,
    usage: str = "",
    note: Any = None,
    machine: dict[str, Any] | None = None,
    reset_note: Any = None,
) -> Any:
    """Load the Pipeline that ``skclip fit`` saved in ``path``.

    The file must end in ``.skops`` or ``.joblib`` (anything else is never unpickled) and
    hold exactly ``[CLIPFeaturizer, a skclip classifier]``.

    Parameters
    ----------
    path : str or path-like
        A ``.skops`` file (loaded with trusted types only) or a ``.joblib`` file.
    usage : str, default=""
        Appended to the messages about a missing file or a folder.
    note : callable or None, default=None
        Called with a one-line note before a joblib file is loaded (it runs code).
    machine : dict or None, default=None
        This machine's values of machine-local parameters (e.g. ``{"device": "cpu"}``);
        the others get their defaults (see :func:`reset_machine_params`).
    reset_note : callable or None, default=None
        Called with a line per machine-local parameter whose stored value was replaced.

    Returns
    -------
    model : Pipeline
        Its machine-local parameters reset.

    Raises
    ------
    ValueError
        One sentence naming the file when it is missing, a folder, an image, has
        another suffix, is damaged (including fitted arrays with NaN or infinite
        values), holds untrusted types or something other than a fitted skclip pipeline.
    """
    from sklearn.pipeline import Pipeline

    from ..featurizer import CLIPFeaturizer

    name = os.fspath(path)
    file = Path(name)
    suffix = file.suffix.lower()
    problem = model_file_problem(name)
    if problem is not None:
        raise ValueError(f"{problem}.{usage}")
    if not file.is_file():
        raise ValueError(f"Model file {name!r} does not exist.{usage}")
    if suffix == ".skops":
        model = _load_skops(name)
    else:
        import joblib

        if note is not None:
            note(_JOBLIB_NOTE)
        try:
            model = joblib.load(file)
        except Exception as exc:  # unpickling damaged or foreign bytes can raise anything
            raise _unreadable(name, exc) from None
    if not isinstance(model, Pipeline):
        raise ValueError(
            f"{name!r} is not a model written by 'skclip fit': it holds a "
            f"{type(model).__name__}, not a Pipeline of a CLIPFeaturizer and a classifier."
        )
    steps = [type(step) for _, step in model.steps]
    if (
        len(steps) != 2
        or steps[0] is not CLIPFeaturizer
        or (steps[1] not in _classifiers() and calibrated_classifier(model.steps[1][1]) is None)
    ):
        raise ValueError(
            f"{name!r} is not a model written by 'skclip fit': its Pipeline has the steps "
            f"[{', '.join(f'{t.__module__}.{t.__qualname__}' for t in steps)}], not "
            "[CLIPFeaturizer, a skclip classifier] (the classifier optionally calibrated "
            "by 'skclip fit --coverage')."
        )
    _check_fitted(model, name)
    for line in reset_machine_params(model, machine):
        if reset_note is not None:
            reset_note(line)
    return model


def _check_fitted(model: Any, name: str) -> None:
    """A fitted model whose fitted arrays are all finite, or a ValueError naming the file."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ValueError(f"The model in {name!r} is not fitted.") from None
    damaged = _non_finite(model)
    if damaged is not None:
        raise ValueError(
            f"The model file {name!r} is damaged: its fitted array {damaged} holds NaN or "
            "infinite values, which 'skclip fit' never writes."
        )


def _non_finite(model: Any) -> str | None:
    """``"step.attribute"`` of the first fitted float array (or float) of the pipeline's
    steps that holds NaN or infinity, else None. Such a model would predict one class
    for every image, with NaN probabilities."""
    import numpy as np

    for step_name, step in model_steps(model):
        for attr, value in vars(step).items():
            if not (attr.endswith("_") or attr == "_y") or attr.startswith("__"):
                continue
            if isinstance(value, (float, np.floating, np.ndarray)):
                array = np.asarray(value)
                if attr == "quantiles_":  # +inf: too few calibration images, in every set
                    array = np.where(np.isposinf(array), 0.0, array)
                if array.dtype.kind in "fc" and not np.isfinite(array).all():
                    return f"{step_name}.{attr}"
    return None


def checkpoint_names(model: Any) -> dict[str, str]:
    """The checkpoint parameters of the pipeline's steps: ``{"clip__model": name, ...}``."""
    names = {}
    for step_name, step in model_steps(model):
        params = step.get_params(deep=False)
        for key in ("model", "clip_model"):
            if isinstance(params.get(key), (str, os.PathLike)):
                names[f"{step_name}__{key}"] = os.fspath(params[key])
    return names


def missing_checkpoint_folders(model: Any) -> list[str]:
    """The local checkpoint folders the model's steps record (``skclip fit`` records
    them by absolute path) that do not exist here any more: moved or deleted since the
    fit. Hub ids are not listed (they are looked up in the cache and on the hub).

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from skclip import CLIPFeaturizer, TipAdapterClassifier
    >>> from skclip.cli.model_file import missing_checkpoint_folders
    >>> pipe = Pipeline([("clip", CLIPFeaturizer(model="/gone/clip")),
    ...                  ("tip", TipAdapterClassifier(clip_model="/gone/clip"))])
    >>> missing_checkpoint_folders(pipe)
    ['/gone/clip']
    """
    from ..backbones._hub import _path_reason

    names = dict.fromkeys(checkpoint_names(model).values())  # once each, in order
    return [
        name
        for name in names
        if not Path(name).expanduser().is_dir() and _path_reason(name) is not None
    ]


#: The parameters that belong to the machine running a model, not to the model, per
#: step class name ("*": every step): where it writes, the threads and memory it uses,
#: what runs it. A model file's values of these are never used.
MACHINE_PARAMS = {
    "CLIPFeaturizer": ("cache_dir", "cache_size", "n_jobs", "batch_size", "device", "runtime"),
    "*": ("device",),
}


def reset_machine_params(model: Any, machine: dict[str, Any] | None = None) -> list[str]:
    """Set the machine-local parameters (:data:`MACHINE_PARAMS`) of every step of the
    Pipeline ``model`` to ``machine``'s value (where given and not None), else to the
    step's default; the trust boundary of a model file, which is data from anyone.

    Parameters
    ----------
    model : Pipeline
    machine : dict or None, default=None
        This machine's values, e.g. the command's options ``{"device": "cpu"}``.

    Returns
    -------
    changed : list of str
        One line per parameter whose stored value was replaced, e.g.
        ``"clip__cache_dir: '/elsewhere' -> None"``.

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from skclip import CLIPFeaturizer, TipAdapterClassifier
    >>> from skclip.cli.model_file import reset_machine_params
    >>> pipe = Pipeline([("clip", CLIPFeaturizer(cache_dir="/elsewhere", n_jobs=64)),
    ...                  ("tip", TipAdapterClassifier())])
    >>> for line in reset_machine_params(pipe, {"device": "cpu"}):
    ...     print(line)
    clip__cache_dir: '/elsewhere' -> None
    clip__n_jobs: 64 -> None
    clip__device: 'auto' -> 'cpu'
    tip__device: 'auto' -> 'cpu'
    >>> pipe.named_steps["clip"].cache_dir is None
    True
    """
    import inspect

    machine = {k: v for k, v in (machine or {}).items() if v is not None}
    changed, params = [], {}
    for step_name, step in model_steps(model):
        names = MACHINE_PARAMS.get(type(step).__name__, MACHINE_PARAMS["*"])
        current = step.get_params(deep=False)
        defaults = inspect.signature(type(step)).parameters
        for name in names:
            if name not in current or name not in defaults:
                continue
            value = machine.get(name, defaults[name].default)
            if current[name] != value or type(current[name]) is not type(value):
                changed.append(f"{step_name}__{name}: {current[name]!r} -> {value!r}")
            params[f"{step_name}__{name}"] = value
    set_step_params(model, params)
    return changed
