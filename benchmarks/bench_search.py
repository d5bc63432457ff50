"""Tuning alpha and beta: what a search costs, as ratios measured in one run.

P2  GridSearchCV(Pipeline([CLIPFeaturizer, TipAdapterClassifier]), 10 x 10 alpha x beta,
    cv=5) on 200 images of a ViT-B/32-size random CLIP, divided by the time of one
    CLIPFeaturizer.transform pass over the same images (cache off). Goal <= 1.3: the
    embedding cache makes the search cost about one encoding pass. For comparison, the
    same search with cache=False on a smaller grid (2 x 1, cv=2), same divisor.
P3  TipAdapterClassifierCV (10 x 10 candidates, cv=5) on 16-shot x 100-class features
    (d=512), divided by one TipAdapterClassifier fit + predict on a test set of the same
    size (1600 queries). Goal <= 3. GridSearchCV over TipAdapterClassifier is printed too.
P4  Cached search at array speed: GridSearchCV(Pipeline, 10 x 10, cv=5) over 1000 images
    that are all in the embedding cache, divided by the same search over
    TipAdapterClassifier on the precomputed embeddings (512-d; a small random CLIP, as
    no image is encoded while timing). Goal <= 1.5. Also: the lookup cost per image.
P5  Parallel search: GridSearchCV(Pipeline, 3 x 2, cv=3, n_jobs=2) over 60 new images
    (ViT-B/32-size CLIP, nothing cached: new images each round), divided by n_jobs=1.
    Goal <= 1.0.
P6  A first parallel search as a user runs it: every run is a new Python process
    (``p6_user_script.py``: it imports numpy, scikit-learn and skclip, as a user's script
    does, so importing torch and building the model happen inside ``fit``, in every
    process that needs them) with nothing cached in memory or on disk (an empty
    ``$SKCLIP_CACHE_DIR`` and an empty temporary folder, so no embedding is shared with
    an earlier run) over 60 new JPEGs written before it starts; ViT-B/32-size CLIP,
    GridSearchCV(Pipeline, 3 x 2, cv=3): the time of ``fit`` with n_jobs=2 divided by
    that with n_jobs=1 (each in its own process). Goal <= 1.0 on a quiet machine.
    ``--runtime onnxruntime --p6-onnx fresh`` makes the ONNX export in every run;
    ``--p6-onnx kept`` keeps one export for every run (made before the rounds): a search
    on a machine that has run skclip with this checkpoint before.

Ratios are medians of paired rounds (baseline and measured back to back). Every ratio
printed while the load average is above half the CPUs (at the start or when it is
printed) is marked "not comparable".

    python benchmarks/bench_search.py [--parts p2,p3,p4,p5,p6] [--device cpu] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    best_of,
    jpeg_folder,
    load_guard,
    machine,
    paired,
    paired_times,
    small_clip_folder,
    timed,
    vit_b32_folder,
)
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV  # noqa: E402

GRID = {
    "alpha": list(np.r_[0.0, np.geomspace(0.1, 50, 9)]),
    "beta": list(np.geomspace(0.5, 50, 10)),
}


RUNTIME: dict = {}  # --runtime, when given: CLIPFeaturizer(runtime=...)


def _pipe(model: str, device: str, **featurizer) -> Pipeline:
    featurizer = {**RUNTIME, **featurizer}
    return Pipeline(
        [
            ("clip", CLIPFeaturizer(model=model, device=device, progress=False, **featurizer)),
            ("tip", TipAdapterClassifier(clip_model=model, device=device)),
        ]
    )


def p2(args: argparse.Namespace) -> None:
    model = vit_b32_folder()
    paths = jpeg_folder(200)
    labels = np.repeat([f"class_{i}" for i in range(10)], 20)
    one_pass = CLIPFeaturizer(model=model, device=args.device, progress=False, cache=False)
    one_pass.transform(paths[:32])  # warm-up: load the model, threads
    t_pass = timed(lambda: one_pass.transform(paths))

    grid = {f"tip__{k}": v for k, v in GRID.items()}
    CLIPFeaturizer.cache_clear()
    search = GridSearchCV(
        _pipe(model, args.device), grid, cv=StratifiedKFold(5, shuffle=True, random_state=0)
    )
    t_search = timed(lambda: search.fit(paths, labels))
    info = CLIPFeaturizer.cache_info()

    small = {"tip__alpha": [1.0, 3.0], "tip__beta": [5.5]}
    naive = GridSearchCV(
        _pipe(model, args.device, cache=False),
        small,
        cv=StratifiedKFold(2, shuffle=True, random_state=0),
    )
    t_naive = timed(lambda: naive.fit(paths, labels))
    t_pass2 = timed(lambda: one_pass.transform(paths))  # the divisor again, after: drift check

    print(f"P2: 200 images (500x375 JPEG), ViT-B/32-size CLIP on {args.device}")
    print(
        f"  one CLIPFeaturizer.transform pass: {t_pass:6.2f} s (again at the end: {t_pass2:.2f} s)"
    )
    print(
        f"  GridSearchCV 10x10, cv=5 (500 fits + refit), cache on: {t_search:6.2f} s; "
        f"cache hits {info.hits}, misses {info.misses}"
    )
    divisor = (t_pass + t_pass2) / 2  # before and after: the machine drifts
    print(f"  ratio search / one pass (mean of both): {t_search / divisor:.2f}  (goal <= 1.3)")
    print(
        f"  naive, cache=False, grid 2x1, cv=2 (4 fits + refit): {t_naive:6.2f} s, "
        f"ratio {t_naive / divisor:.2f}; a 10x10 cv=5 grid would encode ~{500 + 1} passes"
    )


def p3(args: argparse.Namespace, repeat: int = 3) -> None:
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
    params = dict(clip_model=None, text_features=W, device=args.device)

    def one() -> None:
        TipAdapterClassifier(**params).fit(X, y).predict(Xq)

    def cv_estimator() -> None:
        TipAdapterClassifierCV(alphas=GRID["alpha"], betas=GRID["beta"], cv=5, **params).fit(X, y)

    def grid_search() -> None:
        GridSearchCV(TipAdapterClassifier(**params), GRID, cv=5).fit(X, y)

    one(), cv_estimator()  # warm-up
    t_one, t_cv = best_of(one, repeat), best_of(cv_estimator, repeat)
    t_grid = best_of(grid_search, 1)
    print(
        f"P3: {shots}-shot x {classes}-class features, d={d}, float32, 100 candidates, cv=5, "
        f"device={args.device}"
    )
    print(f"  one TipAdapterClassifier fit + predict (1600 queries): {t_one * 1e3:7.1f} ms")
    print(f"  TipAdapterClassifierCV:                             {t_cv * 1e3:7.1f} ms")
    print(f"  GridSearchCV(TipAdapterClassifier):                 {t_grid * 1e3:7.1f} ms")
    print(
        f"  ratio CV / one fit+predict: {t_cv / t_one:.2f}  (goal <= 3); "
        f"GridSearchCV / one: {t_grid / t_one:.1f}"
    )


def p4(args: argparse.Namespace) -> None:
    n, classes = 1000, 10
    model = small_clip_folder(512)
    paths = jpeg_folder(n, size=(64, 48))
    labels = np.repeat([f"class_{i}" for i in range(classes)], n // classes)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    CLIPFeaturizer.cache_clear()
    featurizer = CLIPFeaturizer(model=model, device=args.device, progress=False)
    X = featurizer.transform(paths)  # every image is now in the memory cache
    tip = TipAdapterClassifier(clip_model=model, device=args.device)
    on_arrays = GridSearchCV(tip, GRID, cv=cv)
    on_paths = GridSearchCV(
        _pipe(model, args.device), {f"tip__{k}": v for k, v in GRID.items()}, cv=cv
    )

    def arrays() -> None:
        on_arrays.fit(X, labels)

    def cached() -> None:
        on_paths.fit(paths, labels)

    arrays(), cached()  # warm-up: text weights, thread pools
    hits = CLIPFeaturizer.cache_info()
    result = paired(arrays, cached, args.rounds)
    info = CLIPFeaturizer.cache_info()
    assert info.misses == hits.misses, "P4 encoded images while timing"
    lookups = (info.hits - hits.hits) / args.rounds  # images looked up per search
    per_image = (result.measured - result.baseline) / lookups
    t_lookup = min(timed(lambda: featurizer.transform(paths)) for _ in range(5))
    rotations = iter([paths[k:] + paths[:k] for k in range(1, 6)])  # lists not seen before
    t_files = min(timed(lambda: featurizer.transform(next(rotations))) for _ in range(5))
    print(
        f"P4: {n} cached images (d=512), GridSearchCV 10x10, cv=5 (500 fits + refit), "
        f"device={args.device}"
    )
    print(
        f"  over precomputed embeddings: {result.baseline:6.2f} s; over the Pipeline: "
        f"{result.measured:6.2f} s; {lookups:.0f} cached lookups per search, "
        f"{per_image * 1e6:.1f} us extra per lookup"
    )
    print(
        f"  one CLIPFeaturizer.transform of {n} cached paths: {t_files * 1e3:.1f} ms "
        f"({t_files / n * 1e6:.2f} us per image) for a list not seen before (per file); "
        f"{t_lookup * 1e3:.1f} ms for the same list again (its rows, under a lease)"
    )
    print("  " + result.line("cached Pipeline search / search on embeddings", "<= 1.5"))


def p5(args: argparse.Namespace) -> None:
    model = vit_b32_folder()
    labels = np.repeat(["a", "b", "c"], 20)
    grid = {"tip__alpha": [0.5, 1.0, 2.0], "tip__beta": [1.0, 5.5]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    root = tempfile.mkdtemp(prefix="skclip-bench-p5-")
    sets = iter(range(1, 100))

    def search(n_jobs: int):
        def run() -> None:
            seed = next(sets)  # new images: nothing cached in any process
            paths = jpeg_folder(60, folder=os.path.join(root, str(seed)), seed=seed)
            GridSearchCV(_pipe(model, args.device), grid, cv=cv, n_jobs=n_jobs).fit(paths, labels)

        return run

    CLIPFeaturizer(model=model, device=args.device, progress=False).transform(
        jpeg_folder(4, folder=os.path.join(root, "0"))
    )  # load the model in this process
    search(2)()  # warm-up: start the worker processes
    result = paired(search(1), search(2), args.rounds)
    print(
        f"P5: 60 new images, ViT-B/32-size CLIP on {args.device}, GridSearchCV 3x2, cv=3 "
        f"(18 fits + refit); {os.cpu_count()} cpus"
    )
    print(f"  n_jobs=1: {result.baseline:6.2f} s, n_jobs=2: {result.measured:6.2f} s")
    print("  " + result.line("n_jobs=2 / n_jobs=1", "<= 1.0"))


def _p6_run(spec: dict, root: str, onnx_folder: str | None) -> dict:
    """Run ``p6_user_script.py`` in a new process over new JPEGs (written here, before
    it starts), with empty cache and temporary folders (and ``onnx_folder`` as
    ``$SKCLIP_CACHE_DIR`` when given); its result and the process's wall time."""
    run = tempfile.mkdtemp(dir=root, prefix=f"n{spec['n_jobs']}-")
    for sub in ("cache", "tmp"):
        os.mkdir(os.path.join(run, sub))
    env = {
        **os.environ,
        "SKCLIP_CACHE_DIR": onnx_folder or os.path.join(run, "cache"),
        "TMPDIR": os.path.join(run, "tmp"),  # the workers' shared folder: new
        "HF_HUB_OFFLINE": "1",
    }
    folder = os.path.join(run, "images")
    images = jpeg_folder(spec.pop("n_images"), folder=folder, seed=spec["seed"])
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "p6_user_script.py")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, script, json.dumps({**spec, "images": images})],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    shutil.rmtree(run, ignore_errors=True)  # its export alone is a few hundred MB
    if done.returncode:
        raise RuntimeError(f"P6 run failed:\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


def p6(args: argparse.Namespace) -> None:
    model = vit_b32_folder()
    root = tempfile.mkdtemp(prefix="skclip-bench-p6-")
    onnx_folder = os.path.join(root, "kept") if args.p6_onnx == "kept" else None
    seeds = iter(range(1000, 2000))  # new images in every run
    runs: dict[int, list[dict]] = {1: [], 2: []}
    base = {"model": model, "device": args.device, "featurizer": RUNTIME}
    base["n_images"] = args.p6_images

    def search(n_jobs: int):
        def run() -> float:
            spec = {**base, "n_jobs": n_jobs, "seed": next(seeds)}
            runs[n_jobs].append(_p6_run(spec, root, onnx_folder))
            return runs[n_jobs][-1]["fit"]

        return run

    if onnx_folder is not None:
        search(1)()  # the export, made once for every run
        runs[1].clear()
    result = paired_times(search(1), search(2), args.rounds)
    walls = {n: sorted(r["wall"] for r in runs[n]) for n in runs}
    runtime = RUNTIME.get("runtime", "auto (PyTorch on the CPU)")
    if runtime == "onnxruntime":
        runtime += f", ONNX export {'kept' if onnx_folder else 'made in every run'}"
    print(
        f"P6: first search in a new process, {args.p6_images} new images, ViT-B/32-size CLIP on "
        f"{args.device}, GridSearchCV 3x2, cv=3 (18 fits + refit); runtime={runtime}"
        f"; {os.cpu_count()} cpus"
    )
    print(
        f"  fit n_jobs=1: {result.baseline:6.2f} s, n_jobs=2: {result.measured:6.2f} s (median); "
        f"whole processes: {walls[1][len(walls[1]) // 2]:.2f} s and "
        f"{walls[2][len(walls[2]) // 2]:.2f} s"
    )
    shutil.rmtree(root, ignore_errors=True)
    loads = [load for n in runs for r in runs[n] for load in r["load"]]
    print(f"  load average in the runs: {min(loads):.2f} to {max(loads):.2f}")
    preloaded = sorted({name for n in runs for r in runs[n] for name in r["preloaded"]})
    print(f"  imported by the script before fit (as `from skclip import ...` does): {preloaded}")
    print("  " + result.line("n_jobs=2 / n_jobs=1", "<= 1.0"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        default="p2,p3,p4,p5,p6",
        help="comma-separated parts to run (p2, p3, p4, p5, p6)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (p4, p5, p6)")
    parser.add_argument("--runtime", default=None, help="CLIPFeaturizer(runtime=...) in p4, p5, p6")
    parser.add_argument(
        "--p6-onnx",
        choices=["fresh", "kept"],
        default="fresh",
        help="p6: ONNX export made in every run (fresh: nothing on disk) or kept from the first",
    )
    parser.add_argument(
        "--p6-images", type=int, default=60, help="p6: new images per run (3 classes)"
    )
    args = parser.parse_args()
    if args.runtime is not None:
        RUNTIME["runtime"] = args.runtime
    parts = set(args.parts.split(","))
    load_guard()
    print(machine())
    for name, fn in (("p3", p3), ("p4", p4), ("p2", p2), ("p5", p5), ("p6", p6)):
        if name in parts:
            fn(args)


if __name__ == "__main__":
    main()
