"""Library warnings as plain notes: one line each on stderr, ``skclip: note: ...``.

The estimators warn for Python users: a ``UserWarning`` with the source line that
raised it, advice such as ``leave_one_out=False`` or "see the Notes". A command-line
user can act on none of that. While a command runs (:func:`plain_warnings`, entered by
:func:`skclip.cli.main`), every warning that Python would show is turned into one line:
its first sentence, with the Python parameters it names rewritten as the command's
options (or left out where the command has none), once per run however often it is
raised. ``-q`` hides progress, not these notes. :func:`notes` gives them back in order,
for the report of ``skclip evaluate``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: What starts every note on stderr.
PREFIX = "skclip: note: "


@dataclass
class _Run:
    """The notes of one command, and what the command is doing (for the wording)."""

    notes: list[str] = field(default_factory=list)
    method: str | None = None
    inner_cv: bool = False


_RUNS: list[_Run] = []  # the commands running in this process, innermost last
_LOCK = threading.Lock()  # warnings may come from the encoding threads


def _one_shot_fine_tune(match: re.Match, method: str | None, inner_cv: bool) -> str:
    name = method or "Tip-Adapter-F"
    if inner_cv:
        return (
            f"{name}: folds of the inner cross-validation have 1 training image per class, "
            "where it trains nothing (the keys are Tip-Adapter's) while choosing alpha and beta"
        )
    return f"1 shot per class: {name} trains nothing, the keys are Tip-Adapter's"


def _one_shot_gda(match: re.Match, method: str | None, inner_cv: bool) -> str:
    return (
        f"1 shot per class: {method or 'GDA'} has no covariance to learn, so its term "
        "carries no information (with a text model it predicts as zero-shot CLIP)"
    )


def _not_converged(match: re.Match, method: str | None, inner_cv: bool) -> str:
    n = match["n"]
    limit = "" if n is None else f" within {n} iteration{'' if n == '1' else 's'}"
    return (
        f"{method or 'a model'}: {match['solver']} did not converge{limit}; its scores may "
        "be slightly below a converged fit's"
    )


def _zero_rows(match: re.Match, method: str | None, inner_cv: bool) -> str:
    return (
        f"{match['n']} embedding(s) of all zeros: they carry no information, their "
        "predictions are uninformative (are those images blank or broken?)"
    )


def _read_only_cache(match: re.Match, method: str | None, inner_cv: bool) -> str:
    return (
        f"the embedding cache folder {match['name']} {match['why']}: its entries are read, "
        "new embeddings stay in memory, nothing is written to it"
    )


def _onnx_fallback(match: re.Match, method: str | None, inner_cv: bool) -> str:
    return (
        f"could not run the image tower of {match['name']} in ONNX Runtime "
        f"({match['why']}): PyTorch runs it instead"
    )


def _conformal(match: re.Match, method: str | None, inner_cv: bool) -> str:
    return (
        f"--coverage {match['level']}: too few calibration images in the classes "
        f"{match['classes']} (calibration images: {match['n']}): they are in every "
        "prediction set. At level c, a class needs at least c / (1 - c) calibration "
        "images (9 at 0.9), about 4 times as many training images"
    )


Rule = Callable[[re.Match, str | None, bool], str]

#: The warnings whose wording the command rewrites entirely: (pattern, new wording).
RULES: list[tuple[re.Pattern, Rule]] = [
    (re.compile(r"fine_tune=True with leave_one_out=True needs a class"), _one_shot_fine_tune),
    (re.compile(r"GDAClassifier got one sample per class"), _one_shot_gda),
    (
        re.compile(r"(?P<solver>[\w-]+) failed to converge(?: after (?P<n>\d+) iteration)?"),
        _not_converged,
    ),
    (re.compile(r"Found (?P<n>\d+) feature row\(s\) of all zeros"), _zero_rows),
    (
        re.compile(
            r"The embedding cache folder (?P<name>'[^']*'|\"[^\"]*\") (?P<why>.*?)\. "
            r"Its entries are still read"
        ),
        _read_only_cache,
    ),
    (
        re.compile(
            r"Could not run the image tower of (?P<name>.+?) in ONNX Runtime \((?P<why>.*)\);"
        ),
        _onnx_fallback,
    ),
    (
        re.compile(
            r"Too few calibration images for confidence_level \[(?P<level>[^\]]*)\] in the "
            r"classes (?P<classes>\[.*?\]) \(n_calibration_ \[(?P<n>[^\]]*)\]\)"
        ),
        _conformal,
    ),
]

#: Python parameters named in warnings, as the command's options.
OPTIONS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\bfollow_symlinks=True\b"), "--follow-symlinks"),
    (re.compile(r"\bon_error=['\"](\w+)['\"]"), r"--on-error \1"),
    (re.compile(r"\bconfidence_level\b"), "--coverage"),
    (re.compile(r"\bcache_dir\b"), "--cache-dir"),
    (re.compile(r"\bbatch_size\b"), "--batch-size"),
]

_PYTHON_ONLY = re.compile(r"\b[a-z_]+=\S|see the Notes|\w+_\b")  # e.g. leave_one_out=False
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def plain_text(message: str, method: str | None = None, inner_cv: bool = False) -> str:
    """A warning's message as one line for a command-line user.

    Known warnings are reworded (:data:`RULES`); others keep their first sentence and
    any later one that names a command option, with Python parameters written as the
    command's options (:data:`OPTIONS`); sentences and parentheses that advise a
    parameter the command has no option for are left out. ``method``: the method being
    evaluated (named first unless the text names it); ``inner_cv``: whether the warning
    may come from an inner cross-validation's folds.

    Examples
    --------
    >>> plain_text("Class folder 'x' is a link: skipped. Pass follow_symlinks=True to use it.")
    "Class folder 'x' is a link: skipped. Pass --follow-symlinks to use it"
    >>> plain_text("Scores tie (see the Notes). Set ties='random' to break them.", "GDA")
    'GDA: Scores tie'
    """
    text = " ".join(message.split())
    for pattern, rule in RULES:
        match = pattern.search(text)
        if match:
            return rule(match, method, inner_cv)
    for pattern, option in OPTIONS:
        text = pattern.sub(option, text)
    first, *rest = _SENTENCE_END.split(text)
    first = re.sub(r"\s*\([^()]*(?:see the Notes|\b[a-z_]+=)[^()]*\)", "", first)
    kept = [first] + [s for s in rest if "--" in s and not _PYTHON_ONLY.search(s)]
    line = " ".join(kept).rstrip(".")
    if method and method not in line:
        line = f"{method}: {line}"
    return line


def note(text: str) -> None:
    """Print ``skclip: note: text`` on stderr, once per command run, and keep it for
    :func:`notes`. Outside a run (no :func:`plain_warnings`) it is printed only."""
    with _LOCK:
        run = _RUNS[-1] if _RUNS else None
        if run is not None:
            if text in run.notes:
                return
            run.notes.append(text)
    print(f"{PREFIX}{text}", file=sys.stderr, flush=True)


def notes() -> list[str]:
    """The notes of the current run so far, in order (empty outside a run)."""
    with _LOCK:
        return list(_RUNS[-1].notes) if _RUNS else []


def _show(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` during a run: the message as a note, nothing else."""
    run = _RUNS[-1] if _RUNS else _Run()
    note(plain_text(str(message), run.method, run.inner_cv))


@contextlib.contextmanager
def plain_warnings() -> Iterator[list[str]]:
    """Within: every warning Python would show is a note (:func:`note`), its text
    rewritten by :func:`plain_text`; yields the run's list of notes. The warning filters
    are left as they are (``-W``, ``PYTHONWARNINGS``); all is restored on exit.

    Examples
    --------
    >>> import warnings
    >>> with plain_warnings() as said:
    ...     warnings.warn("Too many cooks. Set cooks=2 instead.")
    ...     warnings.warn("Too many cooks. Set cooks=2 instead.")
    >>> said
    ['Too many cooks']
    """
    run = _Run()
    with warnings.catch_warnings():
        warnings.showwarning = _show
        with _LOCK:
            _RUNS.append(run)
        try:
            yield run.notes
        finally:
            with _LOCK:
                _RUNS.remove(run)


@contextlib.contextmanager
def about(method: str | None, *, inner_cv: bool = False) -> Iterator[None]:
    """Within: warnings are worded as coming from ``method``, fitted with an inner
    cross-validation if ``inner_cv`` (e.g. "folds of the inner cross-validation have 1
    training image per class" rather than "1 shot per class")."""
    run = _RUNS[-1] if _RUNS else _Run()
    before = run.method, run.inner_cv
    run.method, run.inner_cv = method, inner_cv
    try:
        yield
    finally:
        run.method, run.inner_cv = before
