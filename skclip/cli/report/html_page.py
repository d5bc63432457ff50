"""The evaluation report as one self-contained HTML page.

:func:`render_html` writes a single file that opens offline, with nothing beside it:
styles are inline and the thumbnails of the misclassified images are embedded as
base64 JPEG ``data:`` URIs. It shows the method table (mean ± std over folds), each
method's chosen hyperparameters, per-class scores and confusion matrix (as an HTML
table, so no plotting library is needed), and a gallery of the misclassified images,
the most confident mistakes first.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from ..._images import ImageLoadError, open_image
from .summary import (
    COVERAGE_COLUMNS,
    coverage_cells,
    number,
    params_text,
    protocol_items,
    shown_method,
)

#: Entries of a method's report that are scores (or times), not hyperparameters.
_SCORE_KEYS = frozenset(
    {
        "accuracy",
        "accuracy_std",
        "f1_macro",
        "f1_macro_std",
        "per_class",
        "confusion_matrix",
        "seconds",
    }
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.best td { font-weight: bold; background: #eef6ee; }
#methods td:last-child { text-align: left; }
table.confusion td { min-width: 2.2em; text-align: center; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: %(size)dpx; font-size: 0.85em; }
figure img { display: block; max-width: %(size)dpx; max-height: %(size)dpx; }
figure .missing { width: %(size)dpx; height: %(size)dpx; background: #eee; color: #a00;
  overflow: hidden; font-size: 0.8em; }
figcaption .pred { color: #a00; }
.muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, spec: str = ".3f") -> str:
    """A score with 3 decimals; others escaped."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return "nan" if math.isnan(float(value)) else format(float(value), spec)
    return "-" if value is None else _e(value)


def _mean_std(entry: Mapping[str, Any], key: str) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None:
        return '<span class="muted">-</span>'
    return _number(mean) if std is None else f"{_number(mean)} &plusmn; {_number(std)}"


def hyperparameters(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A method's chosen hyperparameters: its ``params`` dict if it has one, else every
    entry that is not a score (e.g. ``alpha`` and ``beta`` as ``skclip evaluate``
    writes them).

    Examples
    --------
    >>> hyperparameters({"accuracy": 0.9, "accuracy_std": None, "alpha": 1.0, "beta": 5.5})
    {'alpha': 1.0, 'beta': 5.5}
    """
    if isinstance(entry.get("params"), Mapping):
        return dict(entry["params"])
    return {k: v for k, v in entry.items() if k not in _SCORE_KEYS}


def thumbnail_data_uri(image: Any, size: int = 160) -> str:
    """A JPEG thumbnail of ``image`` (path, PIL image or array) as a ``data:`` URI.

    The image is opened as the featurizer opens it (EXIF orientation applied,
    transparency on white) and shrunk to fit ``size`` x ``size`` pixels.

    Raises
    ------
    skclip.ImageLoadError
        If the image cannot be read; the message names it.

    Examples
    --------
    >>> import numpy as np
    >>> thumbnail_data_uri(np.zeros((300, 200, 3), dtype=np.uint8), size=32)[:23]
    'data:image/jpeg;base64,'
    """
    img = open_image(image).copy()
    img.thumbnail((size, size))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _method_table(methods: Mapping[str, Mapping[str, Any]], best: str | None) -> list[str]:
    out = [
        '<table id="methods"><thead><tr><th>method</th><th>accuracy</th><th>macro-F1</th>'
        "<th>seconds</th><th>hyperparameters (see the protocol)</th></tr></thead><tbody>"
    ]
    for name, entry in methods.items():
        shown = _e(params_text(hyperparameters(entry)))
        seconds = _e(number(entry["seconds"])) if "seconds" in entry else "-"
        cls = ' class="best"' if name == best else ""
        out.append(
            f"<tr{cls}><td>{_e(name)}</td><td>{_mean_std(entry, 'accuracy')}</td>"
            f"<td>{_mean_std(entry, 'f1_macro')}</td><td>{seconds}</td><td>{shown}</td></tr>"
        )
    out.append("</tbody></table>")
    return out


def _notes_section(notes: Sequence[str]) -> list[str]:
    """What the command said as notes on stderr (e.g. a method that trained nothing)."""
    if not notes:
        return []
    return ["<h2>Notes</h2>", '<ul id="notes">', *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]


def _coverage_section(report: Mapping[str, Any]) -> list[str]:
    """With ``--coverage``: the table of coverage, set size and ECE, and a reliability
    diagram per method (inline SVG)."""
    if report.get("coverage") is None:
        return []
    methods: Mapping[str, Mapping[str, Any]] = report.get("methods", {})
    out = [
        f"<h2>Prediction sets at confidence level {_number(report['coverage'], 'g')}</h2>",
        "<p>Per-class conformal sets; calibration images from the training images only "
        "(see the protocol).</p>",
        '<table id="coverage"><thead><tr><th>method</th>'
        + "".join(f"<th>{_e(h)}</th>" for h, _ in COVERAGE_COLUMNS)
        + "</tr></thead><tbody>",
    ]
    for name, entry in methods.items():
        cells = "".join(f"<td>{_e(c)}</td>" for c in coverage_cells(entry))
        out.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
    out.append("</tbody></table>")
    out.append(
        "<p>Reliability diagrams (test images; x: top-label confidence, y: accuracy per "
        "confidence bin; grey: raw, blue: temperature-scaled; the diagonal is calibrated):</p>"
    )
    out.append('<div class="reliability">')
    for name, entry in methods.items():
        if "reliability" in entry:
            out.append(_reliability_svg(name, entry))
    out.append("</div>")
    return out


def _reliability_svg(name: str, entry: Mapping[str, Any], size: int = 200) -> str:
    """One method's reliability diagram: a point per confidence bin, its area by the
    bin's number of images."""
    pad, inner = 24, size - 32

    def xy(confidence: float, accuracy: float) -> str:
        return f'cx="{pad + confidence * inner:.1f}" cy="{8 + (1 - accuracy) * inner:.1f}"'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 16}" '
        f'role="img" aria-label="reliability diagram of {_e(name)}">',
        f'<rect x="{pad}" y="8" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{8 + inner}" x2="{pad + inner}" y2="8" stroke="#bbb" '
        'stroke-dasharray="4 3"/>',
    ]
    for key, colour in (("reliability", "#888"), ("reliability_calibrated", "#1f6fb4")):
        bins = entry.get(key) or []
        total = max(1, sum(b["n"] for b in bins))
        for b in bins:
            radius = 2 + 6 * (b["n"] / total) ** 0.5
            parts.append(
                f'<circle {xy(b["confidence"], b["accuracy"])} r="{radius:.1f}" '
                f'fill="{colour}" fill-opacity="0.6"><title>{_e(key)}: confidence '
                f"{b['confidence']:.2f}, accuracy {b['accuracy']:.2f}, {b['n']} images</title>"
                "</circle>"
            )
    parts.append(
        f'<text x="{pad}" y="{size + 12}" font-size="11">{_e(name)}: ECE '
        f"{_number(entry.get('ece'))} &#8594; {_number(entry.get('ece_calibrated'))}</text>"
    )
    return "".join(parts) + "</svg>"


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = [
        '<table class="per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
        "<th>F1</th><th>support</th></tr></thead><tbody>"
    ]
    for name, s in per_class.items():
        out.append(
            f"<tr><td>{_e(name)}</td><td>{_number(s.get('precision'))}</td>"
            f"<td>{_number(s.get('recall'))}</td><td>{_number(s.get('f1'))}</td>"
            f"<td>{_e(s.get('support', ''))}</td></tr>"
        )
    out.append("</tbody></table>")
    return out


def _confusion_table(matrix: Sequence[Sequence[int]], classes: Sequence[Any]) -> list[str]:
    """Rows: true class; columns: predicted class; cells shaded by their row share."""
    out = [
        '<table class="confusion"><thead><tr><th>true \\ predicted</th>',
        *(f"<th>{_e(c)}</th>" for c in classes),
        "</tr></thead><tbody>",
    ]
    for name, row in zip(classes, matrix):
        total = sum(row) or 1
        cells = []
        for j, count in enumerate(row):
            share = count / total
            hue = 120 if classes[j] == name else 0  # green diagonal, red mistakes
            style = f"background: hsla({hue}, 60%, 45%, {share:.2f})" if count else ""
            cells.append(f'<td style="{style}">{int(count)}</td>')
        out.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return out


def gallery_selection(
    misclassified: Sequence[Mapping[str, Any]], max_images: int
) -> tuple[list[Mapping[str, Any]], dict[Any, int], int]:
    """The mistakes the gallery shows, each method's count of mistakes (counted before
    any is left out; key ``None`` for mistakes without a ``method``) and the per-method
    cap: each method's most confident mistakes, at most ``ceil(max_images / methods)``
    each (so one weak method cannot fill the gallery), then at most ``max_images`` in
    all, the most confident first.

    Examples
    --------
    >>> mistakes = [{"method": "a", "confidence": c} for c in (0.9, 0.8, 0.7)]
    >>> shown, counts, cap = gallery_selection(mistakes + [{"method": "b", "confidence": 0.1}], 2)
    >>> [m["confidence"] for m in shown], counts, cap
    ([0.9, 0.1], {'a': 3, 'b': 1}, 1)
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for item in misclassified:
        groups.setdefault(item.get("method"), []).append(item)
    cap = -(-max_images // max(1, len(groups)))

    def confidence(m: Mapping[str, Any]) -> float:
        return -float(m.get("confidence", 0.0))

    chosen = [m for found in groups.values() for m in sorted(found, key=confidence)[:cap]]
    shown = sorted(chosen, key=confidence)[:max_images]
    return shown, {method: len(found) for method, found in groups.items()}, cap


def _mistake_counts(
    counts: Mapping[Any, int], shown: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> list[str]:
    """One line per method: "linear probe: 106 mistakes, showing 7"."""
    named = list(methods) + [m for m in counts if m is not None and m not in methods]
    if not any(m is not None for m in counts):
        return []
    out = ['<ul id="mistakes">']
    for method in named:
        n, k = counts.get(method, 0), sum(1 for m in shown if m.get("method") == method)
        out.append(
            f"<li>{_e(method)}: {n} mistake{'' if n == 1 else 's'}"
            + (f", showing {k}" if n else "")
            + "</li>"
        )
    return out + ["</ul>"]


def _gallery(
    misclassified: Sequence[Mapping[str, Any]],
    max_images: int,
    size: int,
    methods: Sequence[str] = (),
) -> list[str]:
    worst, counts, cap = gallery_selection(misclassified, max_images)
    out = [
        f"<h2>Misclassified images</h2><p>{len(misclassified)} misclassified (an image "
        f"counts once for each method that got it wrong); showing {len(worst)}, at most "
        f"{cap} per method, the most confident mistakes first.</p>",
        *_mistake_counts(counts, worst, methods),
        '<div class="gallery" id="gallery">',
    ]
    for item in worst:
        source = item.get("image", item.get("path"))
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else ""
        try:
            picture = f'<img src="{thumbnail_data_uri(source, size)}" alt="{_e(name)}">'
        except ImageLoadError as exc:
            picture = f'<div class="missing">{_e(exc)}</div>'
        method = ""
        if "method" in item:
            method = f'<br><span class="muted">{_e(item["method"])}</span>'
        out.append(
            f'<figure title="{_e(name)}">{picture}<figcaption>'
            f"true: {_e(item.get('true'))}<br>"
            f'<span class="pred">predicted: {_e(item.get("pred"))}</span> '
            f"({100 * float(item.get('confidence', float('nan'))):.0f}%)"
            f"{method}</figcaption></figure>"
        )
    out.append("</div>")
    return out


def render_html(
    report: Mapping[str, Any],
    misclassified: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    max_images: int = 60,
    thumbnail_size: int = 160,
) -> Path:
    """Write the evaluation ``report`` as one self-contained HTML page.

    Parameters
    ----------
    report : dict
        As ``skclip evaluate`` builds it: ``data_dir``, ``model``, ``n_images``,
        ``classes``, ``protocol`` and ``methods``, a dict from method name to its
        ``accuracy``, ``accuracy_std``, ``f1_macro``, ``f1_macro_std`` (the std may be
        ``None``), ``per_class`` (class -> precision, recall, f1, support),
        ``confusion_matrix`` (rows: true class, in ``classes`` order) and its chosen
        hyperparameters: a ``params`` dict, or any other entries (e.g. ``alpha``);
        optionally its ``seconds``, and the run's ``notes`` (a list of str).
    misclassified : list of dict
        Every mistake: ``path`` (or ``image``: a PIL image or array), ``true`` and
        ``pred`` labels, ``confidence`` (the predicted class's probability) and
        optionally ``method``. All are counted (per method); the gallery shows the
        most confident first, as :func:`gallery_selection` chooses them.
    path : str or path-like
        The ``.html`` file to write.
    max_images : int, default=60
        Most thumbnails in the gallery (an equal share per method).
    thumbnail_size : int, default=160
        Largest side of a thumbnail, in pixels.

    Returns
    -------
    path : Path
        The file written. Images that cannot be read get a placeholder naming them.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> report = {"data_dir": "photos", "model": "tiny", "n_images": 4, "classes": ["a", "b"],
    ...           "protocol": "2-fold CV", "methods": {"zero-shot": {
    ...               "accuracy": 0.75, "accuracy_std": 0.25, "f1_macro": 0.7,
    ...               "f1_macro_std": 0.3, "confusion_matrix": [[2, 0], [1, 1]]}}}
    >>> mistake = {"image": np.zeros((8, 8, 3), np.uint8), "true": "b", "pred": "a",
    ...            "confidence": 0.9}
    >>> out = render_html(report, [mistake], pathlib.Path(tempfile.mkdtemp()) / "r.html")
    >>> page = out.read_text()
    >>> "0.750 &plusmn; 0.250" in page, page.count("data:image/jpeg;base64,")
    (True, 1)
    """
    methods: Mapping[str, Mapping[str, Any]] = report.get("methods", {})
    classes = list(report.get("classes", []))
    best = shown_method(report) if methods else None  # the same method as the Markdown report
    title = f"skclip evaluation: {report.get('data_dir', '')}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Model <code>{_e(report.get('model', ''))}</code>, {_e(report.get('n_images', '?'))} "
        f"images, {len(classes)} classes; {_e(report.get('protocol', ''))}. Scores are the mean "
        "&plusmn; standard deviation over the outer folds where there are folds.</p>",
        "<h2>Methods</h2>",
        *_method_table(methods, best),
        *_notes_section(report.get("notes") or []),
        *_coverage_section(report),
    ]
    if "model" in report and "protocol" in report:
        body.append("<h2>Protocol</h2>")
        body.append(
            "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in protocol_items(report)) + "</ul>"
        )
    for name, entry in methods.items():
        is_best = " open" if name == best else ""
        body.append(f'<details{is_best} class="method" data-method="{_e(name)}">')
        body.append(
            f"<summary><b>{_e(name)}</b>{' (best)' if is_best else ''}: per class "
            "and confusion matrix</summary>"
        )
        if "per_class" in entry:
            body.extend(_per_class_table(entry["per_class"]))
        if "confusion_matrix" in entry:
            body.extend(_confusion_table(entry["confusion_matrix"], classes))
        body.append("</details>")
    body.extend(_gallery(misclassified, max_images, thumbnail_size, list(methods)))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE % {'size': thumbnail_size}}</style></head>"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
