"""TipAdapterClassifier prediction vs the naive numpy formula, and Tip-F epoch time.

1. Prediction at 16k keys (16 shots x 1000 classes), d=512, 50k queries: time of
   ``TipAdapterClassifier.decision_function`` / time of the one-line numpy formula
   ``100 Xq W^T + alpha exp(-beta (1 - Xq K^T)) V`` in the same run (goal <= 1.0),
   and the peak memory of each (goal for ours <= 2 GiB). Peaks are measured in child
   processes, so neither run inherits the other's high-water mark.
2. Tip-Adapter-F: seconds per epoch at 16 shots x 100 classes, d=512.

With ``--device cuda`` the classifier predicts on the GPU and the naive formula is the
same one-liner in torch on the GPU (inputs from and outputs to numpy in both); peaks are
then GPU memory (``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_classifier.py [--queries 50000] [--keys-per-class 16]
    python benchmarks/bench_classifier.py --queries 100000 --keys-per-class 20 --skip-naive
    python benchmarks/bench_classifier.py --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
from _common import load_guard, load_note

GiB = 2**30


def _data(n_classes: int, shots: int, n_queries: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    y = np.repeat(np.arange(n_classes), shots)
    return unit(len(y)), y, unit(n_queries), unit(n_classes)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _run(which: str, args: argparse.Namespace, out: mp.Queue) -> None:
    """In a child process: build the data, time one prediction, report the peak RSS
    above the resident size once the inputs exist."""
    K, y, Xq, W = _data(args.classes, args.keys_per_class, args.queries, args.dim)
    alpha, beta = 1.0, 5.5
    gpu = args.device.startswith("cuda")
    if which == "skclip":
        from skclip import TipAdapterClassifier

        clf = TipAdapterClassifier(
            alpha=alpha, beta=beta, clip_model=None, text_features=W, device=args.device
        )
        clf.fit(K, y)
        clf.decision_function(Xq[:10])  # warm-up (thread pools, CUDA context)

        def predict() -> np.ndarray:
            return clf.decision_function(Xq)
    elif gpu:
        import torch

        dev = torch.device(args.device)
        Kt, Wt = torch.from_numpy(K).to(dev), torch.from_numpy(W).to(dev)
        Vt = torch.from_numpy(np.eye(args.classes, dtype=np.float32)[y]).to(dev)

        def predict() -> np.ndarray:
            q = torch.from_numpy(Xq).to(dev)
            return (100 * q @ Wt.T + alpha * torch.exp(-beta * (1 - q @ Kt.T)) @ Vt).cpu().numpy()

        predict()  # warm-up (CUDA context, kernels); fast on a GPU
    else:
        V = np.eye(args.classes, dtype=np.float32)[y]
        (Xq[:10] @ K.T) @ V  # warm-up

        def predict() -> np.ndarray:
            return 100 * Xq @ W.T + alpha * np.exp(-beta * (1 - Xq @ K.T)) @ V

    if gpu:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    t0 = time.perf_counter()
    logits = predict()
    seconds = time.perf_counter() - t0
    if gpu:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put((which, seconds, peak - base, float(logits[:100].sum())))


def _measure(which: str, args: argparse.Namespace) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_run, args=(which, args, q))
    p.start()
    result = q.get()
    p.join()
    return result[1:]


def bench_predict(args: argparse.Namespace) -> None:
    n_keys = args.classes * args.keys_per_class
    print(
        f"predict: {args.queries} queries x {n_keys} keys, {args.classes} classes, d={args.dim}, "
        f"float32"
    )
    runs: dict[str, list] = {"skclip": []} if args.skip_naive else {"skclip": [], "numpy": []}
    for _ in range(args.repeat):  # interleaved, so machine drift hits both alike
        for which in runs:
            runs[which].append(_measure(which, args))
    where = "GPU" if args.device.startswith("cuda") else "CPU"
    print(f"  device={args.device}: peaks are {where} memory; times are the best of {args.repeat}")
    (t_ours, peak_ours, check_ours) = min(runs["skclip"])
    if args.skip_naive:
        print(
            f"  TipAdapterClassifier.decision:  {t_ours:7.2f} s, peak +{peak_ours / GiB:5.2f} GiB "
            "(naive formula skipped)"
        )
        return
    (t_np, peak_np, check_np) = min(runs["numpy"])
    assert abs(check_ours - check_np) <= 1e-3 * abs(check_np), "results differ"
    print(
        f"  naive formula ({'torch' if where == 'GPU' else 'numpy'}):  {t_np:7.2f} s, "
        f"peak +{peak_np / GiB:5.2f} GiB"
    )
    print(f"  TipAdapterClassifier.decision:  {t_ours:7.2f} s, peak +{peak_ours / GiB:5.2f} GiB")
    print(f"  ratio time skclip / naive formula: {t_ours / t_np:.3f}  (goal <= 1.0){load_note()}")
    print(f"  peak memory skclip: {peak_ours / GiB:.2f} GiB  (goal <= 2 GiB)")


def bench_tipf(args: argparse.Namespace) -> None:
    from skclip import TipAdapterClassifier

    classes, shots = 100, 16
    K, y, _, W = _data(classes, shots, 1, args.dim, seed=1)
    epochs = 5
    clf = TipAdapterClassifier(
        clip_model=None,
        text_features=W,
        fine_tune=True,
        epochs=epochs,
        random_state=0,
        device=args.device,
    )
    t0 = time.perf_counter()
    clf.fit(K, y)
    per_epoch = (time.perf_counter() - t0) / epochs
    print(
        f"Tip-F: {shots} shots x {classes} classes, d={args.dim}, batch 256, leave-one-out: "
        f"{per_epoch:.3f} s/epoch on {args.device}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--keys-per-class", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the classifier's device (cpu, cuda)")
    parser.add_argument(
        "--skip-naive",
        action="store_true",
        help="only skclip (the naive formula needs ~3 x queries x keys x 4 bytes)",
    )
    parser.add_argument("--skip-tipf", action="store_true")
    args = parser.parse_args()
    load_guard()
    bench_predict(args)
    if not args.skip_tipf:
        bench_tipf(args)


if __name__ == "__main__":
    main()
