"""Every head on the CLIP-calibrated synthetic tasks: accuracy, fit and predict time.

The tasks of ``bench_tip_f.py`` (``tests/helpers.py``: ``clip_statistics_task`` with
``TIPF_TASKS``), at 2, 4, 8 and 16 shots; accuracy on each task's held-out test samples.
Heads with hyperparameters are tuned on the training samples only (their ``*CV`` class
or ``GridSearchCV``, 2 to 5 stratified folds); CLAP and LP++ run at the authors' fixed
settings, as ``skclip evaluate`` does:

* zero-shot CLIP; Tip-Adapter (``TipAdapterClassifierCV``); GDA and APE (the grids of
  ``skclip.cli.methods.GRIDS``); ProKeR (``ProKeRClassifierCV``, the authors' grid);
* CLAP (300 epochs, SGD) and LP++ (300 full-batch epochs), ``train_views=0``: one
  clean feature per image (the authors train on augmented views);
* ``fit s`` and ``predict s``: the seconds of one fit (search included) and one
  ``predict`` on the test samples, on this machine, under whatever else runs on it.

    python benchmarks/bench_methods.py             # 10 and 100 classes (~minutes)
    python benchmarks/bench_methods.py --all       # also 500 classes
    python benchmarks/bench_methods.py --shots 2   # one shot count
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from _common import load_guard  # noqa: E402
from helpers import TIPF_TASKS, clip_statistics_task  # noqa: E402

from skclip import (  # noqa: E402
    APEClassifier,
    CLAPClassifier,
    GDAClassifier,
    LinearProbePPClassifier,
    ProKeRClassifierCV,
    TipAdapterClassifier,
    TipAdapterClassifierCV,
)
from skclip.cli.methods import GRIDS  # noqa: E402

HEADS = ("zero-shot", "Tip-Adapter", "GDA", "APE", "ProKeR", "CLAP", "LP++")


def _heads(W: np.ndarray, shots: int) -> dict:
    """Each head, tuned on the training samples only where it has hyperparameters."""
    text = dict(clip_model=None, text_features=W, device="cpu")
    folds = min(5, shots)
    inner = StratifiedKFold(folds, shuffle=True, random_state=0)
    return {
        "zero-shot": TipAdapterClassifier(alpha=0.0, **text),
        "Tip-Adapter": TipAdapterClassifierCV(cv=inner, **text),
        "GDA": GridSearchCV(GDAClassifier(**text), GRIDS["GDA"], cv=inner),
        "APE": GridSearchCV(APEClassifier(**text), GRIDS["APE"], cv=inner),
        "ProKeR": ProKeRClassifierCV(cv=inner, **text),
        "CLAP": CLAPClassifier(random_state=0, **text),
        "LP++": LinearProbePPClassifier(random_state=0, **text),
    }


def _rows(task: str, shots: int) -> list[dict]:
    Xtr, ytr, Xte, yte, W = clip_statistics_task(shots=shots, **TIPF_TASKS[task])
    rows = []
    for name, est in _heads(W, shots).items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. GDA's warning at few samples
            est.fit(Xtr, ytr)
        t1 = time.perf_counter()
        pred = est.predict(Xte)
        t2 = time.perf_counter()
        accuracy = float(np.mean(pred == yte))
        rows.append({"task": task, "shots": shots, "head": name, "accuracy": accuracy,
                     "fit s": t1 - t0, "predict s": t2 - t1})  # fmt: skip
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also the 500-class task")
    parser.add_argument("--shots", default="2,4,8,16")
    args = parser.parse_args(argv)
    load_guard()
    tasks = [t for t in TIPF_TASKS if args.all or not t.startswith("500")]
    shots = [int(s) for s in args.shots.split(",")]
    print("| task | shots | head | accuracy | fit s | predict s |")
    print("|---|---|---|---|---|---|")
    table = []
    for task in tasks:
        for k in shots:
            for r in _rows(task, k):
                table.append(r)
                print(f"| {task} | {k} | {r['head']} | {r['accuracy']:.3f} | "
                      f"{r['fit s']:.3f} | {r['predict s']:.4f} |", flush=True)  # fmt: skip
    print("\nmean accuracy over the tasks and shots:")
    for head in HEADS:
        acc = [r["accuracy"] for r in table if r["head"] == head]
        print(f"  {head:12s} {np.mean(acc):.3f}")


if __name__ == "__main__":
    main()
