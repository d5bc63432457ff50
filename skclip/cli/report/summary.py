"""Rendering the report of ``skclip evaluate``: JSON, Markdown and a confusion-matrix
PNG, or one self-contained HTML page with a gallery of the misclassified images.

The report is a plain dict (what ``--report x.json`` writes); this module only turns it
into files (the HTML page through :func:`skclip.cli.report.html_page.render_html`). Figures use
matplotlib's object API with an Agg canvas, so the process's matplotlib backend is never
changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np


def check_output_path(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can be written: the suffix is one of
    ``suffixes`` (if given), the folder it goes into exists, and it is not a folder.

    Raises
    ------
    ValueError
        Naming ``option`` and ``path``.
    """
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise ValueError(f"{option} must end in {' or '.join(suffixes)}, got {os.fspath(path)!r}.")
    if out.is_dir():
        raise ValueError(f"{option} {os.fspath(path)!r} is a folder; give a file name.")
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(
            f"{option} {os.fspath(path)!r}: the folder {os.fspath(parent)!r} does not exist; "
            "create it first."
        )
    return out


def number(value: Any) -> str:
    """A hyperparameter or a time as every report and ``skclip fit`` print it: 4
    significant digits; anything else as it is.

    Examples
    --------
    >>> number(29.9712), number(10000.0), number(0.001), number("auto")
    ('29.97', '1e+04', '0.001', 'auto')
    """
    if isinstance(value, Real) and not isinstance(value, bool):  # numpy's floats too
        return format(float(value), ".4g")
    return str(value)


def params_text(params: Mapping[str, Any]) -> str:
    """Chosen hyperparameters as the reports print them, e.g. ``alpha=1.17, beta=29.97``
    (``-`` for none)."""
    return ", ".join(f"{k}={number(v)}" for k, v in params.items()) or "-"


def shown_method(report: Mapping[str, Any]) -> str:
    """The method whose per-class results and confusion matrix the report shows:
    ``report["per_class_method"]`` if set, else the one with the best accuracy (the
    first one listed on ties)."""
    methods = report["methods"]
    if report.get("per_class_method") in methods:
        return report["per_class_method"]
    return _best(methods)


def _best(methods: Mapping[str, Any]) -> str:
    return max(methods, key=lambda name: methods[name]["accuracy"])


def shown_method_reason(report: Mapping[str, Any]) -> str:
    """Why :func:`shown_method` is the one shown, e.g. "the method with the best
    accuracy" or "chosen by per_class_method; the best accuracy is Tip-Adapter's"."""
    methods, shown = report["methods"], shown_method(report)
    best = _best(methods)
    if methods[shown]["accuracy"] == methods[best]["accuracy"]:
        ties = [n for n in methods if methods[n]["accuracy"] == methods[best]["accuracy"]]
        if len(ties) > 1:
            return f"the best accuracy, tied with {', '.join(n for n in ties if n != shown)}"
        return "the method with the best accuracy"
    return f"chosen by per_class_method; the best accuracy is {best}'s"


def _notes_lines(report: Mapping[str, Any]) -> list[str]:
    """The "Notes" section in Markdown: what the command said on stderr as notes (what
    it did differently from the protocol's plan, e.g. a method that trained nothing)."""
    notes = report.get("notes") or []
    return ["## Notes", "", *(f"- {n}" for n in notes), ""] if notes else []


def _protocol_lines(report: Mapping[str, Any]) -> list[str]:
    """The "Protocol" section in Markdown."""
    return ["## Protocol", "", *(f"- {item}" for item in protocol_items(report, code="`")), ""]


def protocol_items(report: Mapping[str, Any], code: str = "") -> list[str]:
    """Everything needed to reproduce the numbers, one plain-text item each: version,
    model and fingerprint, protocol, sizes, each method's configuration and the skipped
    files (``code`` quotes names, e.g. a backtick for Markdown)."""
    towers = report.get("tower_fingerprints") or {}
    prints = ", ".join(f"{tower} {fp}" for tower, fp in towers.items() if fp)
    fingerprint = report.get("model_fingerprint")
    splits = report.get("splits") or []
    sizes = sorted({(s["n_train"], s["n_test"]) for s in splits})
    items = [
        "hyperparameters: each split's score uses the choice made on that split's training "
        "images alone; the table shows, with several splits, the same search run on all "
        "images (what a refit would use), with one split, that split's choice",
        f"skclip {report.get('skclip_version', '?')}; model {code}{report['model']}{code}"
        + (f", weights fingerprint {fingerprint}" if fingerprint else "")
        + (f" (towers: {prints})" if prints else ""),
        f"{report['protocol']}; shots: {report.get('shots')}, cv: {report.get('cv')}, "
        f"inner cv: {report.get('inner_cv')}, random_state: {report.get('random_state')}, "
        f"augment: {report.get('augment')}",
    ]
    if sizes:
        per = " per fold" if len(splits) > 1 else ""
        items.append("train / test images" + per + ": " + ", ".join(f"{a} / {b}" for a, b in sizes))
    for name, m in report["methods"].items():
        if m.get("configuration"):
            items.append(f"{name}: {m['configuration']}")
    if any("seconds" in m for m in report["methods"].values()):
        items.append(
            "seconds: each method's fit and predict time (wall clock), summed over the splits, "
            "with the fit on all the images that reports the hyperparameters it would use"
        )
    if report.get("coverage_protocol"):
        items.append(report["coverage_protocol"])
    skipped = report.get("skipped") or []
    if skipped:
        items.append(
            f"skipped {len(skipped)} unreadable image(s): "
            + "; ".join(f"{code}{s['path']}{code}: {s['error']}" for s in skipped)
        )
    return items


#: The columns of the coverage table: (heading, the method entry's key).
COVERAGE_COLUMNS = (
    ("coverage", "coverage"),
    ("worst class", None),
    ("mean set size", "mean_set_size"),
    ("ECE", "ece"),
    ("ECE, temperature-scaled", "ece_calibrated"),
)


def coverage_cells(entry: Mapping[str, Any]) -> list[str]:
    """The coverage table's cells of one method (``-`` where a value is missing)."""
    cells = []
    for _, key in COVERAGE_COLUMNS:
        if key is None:
            per_class = [
                v for v in (entry.get("coverage_per_class") or {}).values() if v is not None
            ]
            value = min(per_class) if per_class else None
        else:
            value = entry.get(key)
        cells.append("-" if value is None else f"{value:.3f}")
    return cells


def coverage_lines(report: Mapping[str, Any]) -> list[str]:
    """The Markdown section of ``--coverage`` (nothing without it)."""
    if report.get("coverage") is None:
        return []
    lines = [
        f"## Prediction sets at confidence level {report['coverage']:g}",
        "",
        "Per-class conformal sets; calibration images from the training images only "
        "(see Protocol).",
        "",
        "| method | " + " | ".join(h for h, _ in COVERAGE_COLUMNS) + " |",
        "|---" * (len(COVERAGE_COLUMNS) + 1) + "|",
    ]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(coverage_cells(m)) + " |")
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a table of methods, then per-class results and the
    confusion matrix of :func:`shown_method`."""
    lines = [
        f"# skclip evaluation: {report['data_dir']}",
        "",
        f"Model `{report['model']}`, {report['n_images']} images, {len(report['classes'])} "
        f"classes; {report['protocol']}.",
        "",
        "| method | accuracy | macro-F1 | seconds | hyperparameters (see Protocol) |",
        "|---|---|---|---|---|",
    ]

    def pm(mean: float, std: float | None) -> str:
        return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"

    for name, m in report["methods"].items():
        params = m.get("params")
        if params is None:  # reports written before every method recorded "params"
            params = {k: m[k] for k in ("alpha", "beta") if k in m}
        seconds = number(m["seconds"]) if "seconds" in m else "-"
        lines.append(
            f"| {name} | {pm(m['accuracy'], m['accuracy_std'])} | "
            f"{pm(m['f1_macro'], m['f1_macro_std'])} | {seconds} | {params_text(params)} |"
        )
    best = shown_method(report)
    m = report["methods"][best]
    lines += [""] + _notes_lines(report) + coverage_lines(report) + _protocol_lines(report)
    lines += [
        f"## Per class: {best} ({shown_method_reason(report)})",
        "",
        "| class | precision | recall | F1 | images |",
        "|---|---|---|---|---|",
    ]
    for c, s in m["per_class"].items():
        lines.append(
            f"| {c} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
        )
    lines += [
        "",
        f"## Confusion matrix: {best} (rows: true, columns: predicted)",
        "",
        "| | " + " | ".join(report["classes"]) + " |",
        "|---" * (len(report["classes"]) + 1) + "|",
    ]
    for c, row in zip(report["classes"], m["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def confusion_png_path(path: str | os.PathLike) -> Path:
    """Where the confusion-matrix PNG of report ``path`` goes: ``<stem>_confusion.png``."""
    path = Path(path)
    return path.with_name(path.stem + "_confusion.png")


def save_confusion_png(report: dict[str, Any], png: str | os.PathLike) -> None:
    """Draw the confusion matrix of :func:`shown_method` into ``png``.

    Uses :class:`matplotlib.figure.Figure` on an Agg canvas: no pyplot state, no
    change of the process's backend. Raises ImportError without matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    best = shown_method(report)
    n = len(report["classes"])
    fig = Figure(figsize=(max(4.0, 0.6 * n + 2.5), max(3.5, 0.6 * n + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    disp = ConfusionMatrixDisplay(
        np.array(report["methods"][best]["confusion_matrix"]), display_labels=report["classes"]
    )
    disp.plot(ax=ax, xticks_rotation=45, colorbar=False)
    ax.set_title(best)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
