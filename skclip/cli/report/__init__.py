"""The evaluation report: JSON and Markdown (:mod:`.summary`), and the HTML page
(:mod:`.html_page`), written by :func:`write_report`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..arguments import REPORT_SUFFIXES
from .html_page import render_html
from .summary import (
    check_output_path,
    confusion_png_path,
    render_markdown,
    save_confusion_png,
)


def write_report(
    report: dict[str, Any],
    path: str | os.PathLike,
    *,
    verbose: bool = False,
    misclassified: list[dict[str, Any]] | None = None,
    max_images: int = 60,
) -> list[Path]:
    """Write ``report`` to ``path``: ``.json`` or ``.md`` (and, if matplotlib is
    installed, its confusion matrix to ``<stem>_confusion.png`` beside it), or ``.html``,
    one page that opens offline with the images in ``misclassified`` as a gallery.

    Parameters
    ----------
    report : dict
        As ``skclip evaluate`` builds it.
    path : str or path-like
        The file to write; its suffix chooses the format.
    verbose : bool, default=False
        Say on stderr why no PNG is written (matplotlib missing).
    misclassified : list of dict or None, default=None
        For ``.html``: every mistake (``path``, ``true``, ``pred``, ``confidence``,
        ``method``); the page counts them per method and shows the most confident.
    max_images : int, default=60
        Most thumbnails in the HTML gallery (an equal share per method).

    Returns
    -------
    written : list of Path
        The files written.
    """
    path = check_output_path(path, "--report", REPORT_SUFFIXES)
    if path.suffix.lower() == ".html":
        return [render_html(report, misclassified or [], path, max_images=max_images)]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(report, indent=2))
    else:
        path.write_text(render_markdown(report))
    written = [path]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if verbose:
            print("matplotlib is not installed: no confusion-matrix PNG.", file=sys.stderr)
        return written
    png = confusion_png_path(path)
    save_confusion_png(report, png)
    written.append(png)
    return written
