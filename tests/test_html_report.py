"""The HTML report: one self-contained page, drawn by a real headless browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from skclip.cli.report.html_page import hyperparameters, render_html

#: Debian's packages: chromium-headless-shell (small) or chromium.
BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")
MAGENTA = (255, 0, 255)


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


needs_browser = pytest.mark.skipif(
    _browser() is None,
    reason="no headless browser found (install Debian's: apt-get install -y "
    "--no-install-recommends chromium-headless-shell)",
)


def _report(classes):
    cm = [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    per_class = {c: {"precision": 0.75, "recall": 0.8, "f1": 0.77, "support": 4} for c in classes}
    scores = {"per_class": per_class, "confusion_matrix": cm}
    return {
        "data_dir": "/data/<photos>",
        "model": "tiny-clip",
        "n_images": 12,
        "classes": list(classes),
        "protocol": "3-fold stratified cross-validation",
        "methods": {
            "zero-shot": {
                "accuracy": 0.5,
                "accuracy_std": 0.1,
                "f1_macro": 0.45,
                "f1_macro_std": 0.12,
                **scores,
            },
            "Tip-Adapter": {
                "accuracy": 0.8333,
                "accuracy_std": 0.05,
                "f1_macro": 0.82,
                "f1_macro_std": 0.06,
                "alpha": 1.17,
                "beta": 5.5,
                **scores,
            },
            "GDA": {
                "accuracy": 0.75,
                "accuracy_std": None,
                "f1_macro": 0.7,
                "f1_macro_std": None,
                "params": {"alpha": 10.0},
                **scores,
            },
        },
    }


@pytest.fixture
def page(tmp_path, image_folder):
    paths, labels = image_folder
    classes = ["blue sky", "green-leaf", "red_apple<b>"]
    magenta = tmp_path / "magenta.png"
    Image.new("RGB", (90, 60), MAGENTA).save(magenta)
    misclassified = [
        {"path": paths[0], "true": "red_apple<b>", "pred": "blue sky", "confidence": 0.55},
        {
            "path": str(magenta),
            "true": "green-leaf",
            "pred": "blue sky",
            "confidence": 0.97,
            "method": "Tip-Adapter",
        },
        {
            "path": str(tmp_path / "gone.jpg"),
            "true": "blue sky",
            "pred": "green-leaf",
            "confidence": 0.6,
        },
        {
            "image": np.full((20, 30, 3), 128, np.uint8),
            "true": "blue sky",
            "pred": "red_apple<b>",
            "confidence": 0.3,
        },
    ]
    path = render_html(_report(classes), misclassified, tmp_path / "report.html", max_images=3)
    return path, misclassified


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    parser = _Collect()
    parser.feed(text)
    return parser


def test_page_is_self_contained_and_complete(page):
    path, _ = page
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    # nothing to fetch: no scripts, links, or sources other than embedded data URIs
    assert "script" not in parsed.tags and "link" not in parsed.tags
    sources = [a["src"] for t, a in zip(parsed.tags, parsed.attrs) if "src" in a]
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert not re.search(r"(href|src)=\"(?!data:)", text)
    words = " ".join(parsed.text)
    for method in ("zero-shot", "Tip-Adapter", "GDA"):
        assert method in words
    assert "0.500 ± 0.100" in words and "0.833 ± 0.050" in words
    assert "alpha=1.17, beta=5.5" in words and "alpha=10" in words
    # user strings are escaped, not markup
    assert "red_apple<b>" in words and "red_apple&lt;b&gt;" in text
    assert "red_apple<b>" not in text and "/data/&lt;photos&gt;" in text


def test_gallery_worst_first_capped_and_unreadable_named(page):
    path, _ = page
    text = path.read_text(encoding="utf-8")
    gallery = text[text.index('id="gallery"') :]
    captions = re.findall(r"\((\d+)%\)", gallery)
    assert captions == ["97", "60", "55"]  # most confident first; 0.30 is past the cap
    assert gallery.count("data:image/jpeg;base64,") == 2  # the missing file has none
    assert "gone.jpg" in gallery and "not found" in gallery
    assert "4 misclassified" in text


def test_hyperparameters_come_from_params_or_non_score_entries():
    assert hyperparameters({"accuracy": 1.0, "per_class": {}, "C": 0.1}) == {"C": 0.1}
    entry = {"accuracy": 1.0, "alpha": 2.0, "params": {"beta": 3.0}}
    assert hyperparameters(entry) == {"beta": 3.0}


def _run_browser(*args, timeout=120):
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


@needs_browser
def test_renders_in_a_headless_browser(page, tmp_path):
    path, _ = page
    url = path.resolve().as_uri()
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = _run_browser(profile, "--dump-dom", url).stdout
    parsed = _parse(dom)
    assert parsed.tags.count("figure") == 3
    assert parsed.tags.count("img") == 2
    assert any(a.get("id") == "methods" for a in parsed.attrs)

    shot = tmp_path / "shot.png"
    _run_browser(profile, f"--screenshot={shot}", "--window-size=1000,2400", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 10  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # text, tables, photos
    # the embedded magenta thumbnail was decoded and drawn
    is_magenta = (np.abs(pixels - np.array(MAGENTA)) < 40).all(axis=-1)
    assert is_magenta.sum() > 0.5 * 90 * 60


def test_protocol_skipped_files_and_shown_method_match_the_markdown(tmp_path):
    """The page records the protocol (issue 15 item 7) and the skipped files (item 5), and
    marks the same method as the Markdown report."""
    from skclip.cli.report.summary import _protocol_lines, shown_method

    report = {
        "data_dir": "photos",
        "model": "/models/tiny",
        "n_images": 6,
        "classes": ["a", "b"],
        "protocol": "3-fold stratified cross-validation",
        "skclip_version": "9.9",
        "model_fingerprint": "f00dcafe",
        "shots": None,
        "cv": 3,
        "inner_cv": 2,
        "random_state": 0,
        "augment": 0,
        "per_class_method": "zero-shot",
        "skipped": [{"path": "photos/a/<bad>.jpg", "error": "not an image file"}],
        "methods": {
            "zero-shot": {
                "accuracy": 0.5,
                "accuracy_std": 0.1,
                "f1_macro": 0.5,
                "f1_macro_std": 0.1,
                "confusion_matrix": [[2, 1], [2, 1]],
            },
            "Tip-Adapter": {
                "accuracy": 0.9,
                "accuracy_std": 0.1,
                "f1_macro": 0.9,
                "f1_macro_std": 0.1,
                "confusion_matrix": [[3, 0], [1, 2]],
            },
        },
    }
    page = render_html(report, [], tmp_path / "r.html").read_text()
    for text in (
        "f00dcafe",
        "skclip 9.9",
        "inner cv: 2",
        "photos/a/&lt;bad&gt;.jpg",
        "not an image file",
    ):
        assert text in page, text
    assert shown_method(report) == "zero-shot"
    assert '<details open class="method" data-method="zero-shot">' in page
    assert any("f00dcafe" in line for line in _protocol_lines(report))


def test_gallery_counts_every_mistake_before_cutting(tmp_path):
    """106 mistakes of one method, 3 of another: each count is said in full, the
    gallery keeps an equal share per method (the trial's page said "60 misclassified;
    showing 60" for a linear probe with 106)."""
    from skclip.cli.report.html_page import gallery_selection

    image = np.zeros((4, 4, 3), np.uint8)
    mistakes = [
        {"image": image, "true": "a", "pred": "b", "confidence": 0.5 + i / 1000, "method": m}
        for m, n in (("linear probe", 106), ("GDA", 3))
        for i in range(n)
    ]
    shown, counts, cap = gallery_selection(mistakes, 20)
    assert counts == {"linear probe": 106, "GDA": 3} and cap == 10
    assert [m["method"] for m in shown].count("linear probe") == 10 and len(shown) == 13
    report = _report(["a", "b", "c"])
    report["methods"] = {"linear probe": report["methods"]["GDA"], "GDA": report["methods"]["GDA"]}
    text = render_html(report, mistakes, tmp_path / "r.html", max_images=20).read_text()
    assert "<li>linear probe: 106 mistakes, showing 10</li>" in text
    assert "<li>GDA: 3 mistakes, showing 3</li>" in text
    assert "109 misclassified" in text and text.count("data:image/jpeg;base64,") == 13


def test_numbers_notes_and_seconds_read_the_same_in_markdown_and_html(tmp_path):
    """One rounding for every format (the trial: beta=29.97 in HTML, beta=30 in
    Markdown), the notes and each method's seconds in both, each method's
    configuration once in each."""
    from skclip.cli.report.summary import render_markdown

    report = {
        **_report(["a", "b", "c"]),
        "skclip_version": "9.9",
        "splits": [{"n_train": 8, "n_test": 4}],
        "notes": ["1 shot per class: Tip-Adapter-F trains nothing, the keys are Tip-Adapter's"],
    }
    tip = report["methods"]["Tip-Adapter"]
    tip.update(params={"alpha": 1.1666, "beta": 29.9712}, seconds=0.25, configuration="by CV")
    markdown = render_markdown(report)
    page = render_html(report, [], tmp_path / "r.html").read_text()
    assert "| 0.25 | alpha=1.167, beta=29.97 |" in markdown
    assert "<td>0.25</td><td>alpha=1.167, beta=29.97</td>" in page
    note = html.escape(report["notes"][0])
    assert f"- {report['notes'][0]}" in markdown and f"<li>{note}</li>" in page
    assert markdown.count("by CV") == 1 and page.count("by CV") == 1
