"""Cost of Tip-Adapter-F on augmented views (``train_views=E``) against clean features.

Times a ``Pipeline(CLIPFeaturizer, TipAdapterClassifier(fine_tune=True))`` fit on
generated JPEGs, in paired rounds (clean, then views, then both again from the
embedding cache):

* clean: ``CLIPFeaturizer()`` + ``TipAdapterClassifier(fine_tune=True)``;
* views: ``CLIPFeaturizer(train_views=E)`` + ``TipAdapterClassifier(fine_tune=True,
  train_views=E)``.

"first" fits start from an empty embedding cache (every image and view is encoded);
"cached" fits repeat the same fit (nothing is encoded). Prints each round and the median
ratio views / clean, and the ratio of the best times (least disturbed by a shared
machine). The classifier's own fit (fine-tuning) is also timed alone, on the
features, to separate the encoding cost from the training cost.

Usage::

    python benchmarks/bench_train_views.py --size tiny --views 10 --rounds 3
    python benchmarks/bench_train_views.py --size vit-b32 --images 64 --views 10 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from _common import jpeg_folder, load_guard, load_note
from sklearn.pipeline import make_pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip._testing import save_random_clip


def pipeline(model: str, views: int):
    return make_pipeline(
        CLIPFeaturizer(
            model=model, device="cpu", train_views=views, random_state=0, progress=False
        ),
        TipAdapterClassifier(
            clip_model=model, device="cpu", fine_tune=True, train_views=views, random_state=0
        ),
    )


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "vit-b32"], default="tiny")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_guard()

    model = save_random_clip(tempfile.mkdtemp(prefix="skclip-bench-views-"), args.size)
    paths = jpeg_folder(args.images, size=(500, 375))
    y = np.arange(args.images) % args.classes
    print(
        f"model={args.size} images={args.images} classes={args.classes} views={args.views} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}"
    )
    pipeline(model, 0).fit(paths[:4], np.arange(4) % 2)  # load the model and the text tower once

    rows = []
    for r in range(args.rounds):
        row = {}
        for name, e in (("clean", 0), ("views", args.views)):
            CLIPFeaturizer.cache_clear()
            pipe = pipeline(model, e)
            row[f"{name} first"] = timed(lambda: pipe.fit(paths, y))
            row[f"{name} cached"] = timed(lambda: pipe.fit(paths, y))
            X = pipe[0].fit_transform(paths)  # cached
            row[f"{name} clf"] = timed(lambda: pipe[1].fit(X, y))
        rows.append(row)
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:.2f}s" for k, v in row.items()))
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    print("median: " + "  ".join(f"{k} {v:.2f}s" for k, v in med.items()))
    for kind in ("first", "cached", "clf"):
        ratios = [row[f"views {kind}"] / row[f"clean {kind}"] for row in rows]
        best = min(row[f"views {kind}"] for row in rows) / min(row[f"clean {kind}"] for row in rows)
        print(
            f"views/clean {kind}: median ratio {np.median(ratios):.2f} "
            f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); ratio of best times {best:.2f}"
            f"{load_note()}"
        )


if __name__ == "__main__":
    main()
