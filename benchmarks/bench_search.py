"""Tuning alpha and beta: what a search costs, as ratios measured in one run.

P2  GridSearchCV(Pipeline([CLIPFeaturizer, TipAdapterClassifier]), 10 x 10 alpha x beta,
    cv=5) on 200 images of a ViT-B/32-size random CLIP, divided by the time of one
    CLIPFeaturizer.transform pass over the same images (cache off). Goal <= 1.3: the
    embedding cache makes the search cost about one encoding pass. For comparison, the
    same search with cache=False on a smaller grid (2 x 1, cv=2), same divisor.
P3  TipAdapterClassifierCV (10 x 10 candidates, cv=5) on 16-shot x 100-class features
    (d=512), divided by one TipAdapterClassifier fit + predict on a test set of the same
    size (1600 queries). Goal <= 3. GridSearchCV over TipAdapterClassifier is printed too.

    python benchmarks/bench_search.py [--skip-p2] [--skip-p3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import best_of, jpeg_folder, vit_b32_folder  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV  # noqa: E402

GRID = {"alpha": list(np.r_[0.0, np.geomspace(0.1, 50, 9)]), "beta": list(np.geomspace(0.5, 50, 10))}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def p2() -> None:
    model = vit_b32_folder()
    paths = jpeg_folder(200)
    labels = np.repeat([f"class_{i}" for i in range(10)], 20)

    def pipe(**featurizer) -> Pipeline:
        return Pipeline([
            ("clip", CLIPFeaturizer(model=model, device="cpu", progress=False, **featurizer)),
            ("tip", TipAdapterClassifier(clip_model=model, device="cpu")),
        ])

    one_pass = CLIPFeaturizer(model=model, device="cpu", progress=False, cache=False)
    one_pass.transform(paths[:32])  # warm-up: load the model, threads
    t_pass = _timed(lambda: one_pass.transform(paths))

    grid = {f"tip__{k}": v for k, v in GRID.items()}
    CLIPFeaturizer.cache_clear()
    search = GridSearchCV(pipe(), grid, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    t_search = _timed(lambda: search.fit(paths, labels))
    info = CLIPFeaturizer.cache_info()

    small = {"tip__alpha": [1.0, 3.0], "tip__beta": [5.5]}
    naive = GridSearchCV(pipe(cache=False), small, cv=StratifiedKFold(2, shuffle=True, random_state=0))
    t_naive = _timed(lambda: naive.fit(paths, labels))
    t_pass2 = _timed(lambda: one_pass.transform(paths))  # the divisor again, after: drift check

    print(f"P2: 200 images (500x375 JPEG), ViT-B/32-size CLIP on the CPU, {os.cpu_count()} cpus")
    print(f"  one CLIPFeaturizer.transform pass: {t_pass:6.1f} s (again at the end: {t_pass2:.1f} s)")
    print(f"  GridSearchCV 10x10, cv=5 (500 fits + refit), cache on: {t_search:6.1f} s; "
          f"cache hits {info.hits}, misses {info.misses}")
    divisor = (t_pass + t_pass2) / 2  # before and after: the machine drifts
    print(f"  ratio search / one pass (mean of both): {t_search / divisor:.2f}  (goal <= 1.3)")
    print(f"  naive, cache=False, grid 2x1, cv=2 (4 fits + refit): {t_naive:6.1f} s, "
          f"ratio {t_naive / divisor:.2f}; a 10x10 cv=5 grid would encode ~{500 + 1} passes")


def p3(repeat: int = 3) -> None:
    rng = np.random.default_rng(0)
    d, classes, shots = 512, 100, 16

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    means = unit(classes)
    y = np.repeat(np.arange(classes), shots)
    X = unit(len(y)) + 2 * means[y]
    Xq = unit(len(y)) + 2 * means[y]
    W = unit(classes) + 0.5 * means

    def one() -> None:
        TipAdapterClassifier(clip_model=None, text_features=W).fit(X, y).predict(Xq)

    def cv_estimator() -> None:
        TipAdapterClassifierCV(
            alphas=GRID["alpha"], betas=GRID["beta"], cv=5, clip_model=None, text_features=W
        ).fit(X, y)

    def grid_search() -> None:
        GridSearchCV(TipAdapterClassifier(clip_model=None, text_features=W), GRID, cv=5).fit(X, y)

    one(), cv_estimator()  # warm-up
    t_one, t_cv = best_of(one, repeat), best_of(cv_estimator, repeat)
    t_grid = best_of(grid_search, 1)
    print(f"P3: {shots}-shot x {classes}-class features, d={d}, float32, 100 candidates, cv=5")
    print(f"  one TipAdapterClassifier fit + predict (1600 queries): {t_one * 1e3:7.1f} ms")
    print(f"  TipAdapterClassifierCV:                             {t_cv * 1e3:7.1f} ms")
    print(f"  GridSearchCV(TipAdapterClassifier):                 {t_grid * 1e3:7.1f} ms")
    print(f"  ratio CV / one fit+predict: {t_cv / t_one:.2f}  (goal <= 3); "
          f"GridSearchCV / one: {t_grid / t_one:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-p2", action="store_true")
    parser.add_argument("--skip-p3", action="store_true")
    args = parser.parse_args()
    if not args.skip_p3:
        p3()
    if not args.skip_p2:
        p2()


if __name__ == "__main__":
    main()
