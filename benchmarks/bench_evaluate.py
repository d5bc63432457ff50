"""Where ``skclip evaluate`` spends its time, per method, with every embedding cached.

The set-up a new user tried: 180 photo-like JPEGs in 6 class folders, a random CLIP of
ViT-B/32's size, ``skclip evaluate DIR --cv 5``. A first run fills the embedding cache;
the measured runs then use it, so what remains is the methods' own fits and predictions
(the report's ``seconds`` per method) and the command's fixed costs. Prints each method's
seconds and its share of the command's wall time (median over ``--rounds`` runs, each a
new process, as a user runs it), and the load average at the start and at the end.

    python benchmarks/bench_evaluate.py --rounds 3

Goal (issue 23): GDA under 10% of the command's time (it was 59% with GridSearchCV and
``pinvh``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import jpeg_folder, load_guard, load_note, vit_b32_folder


def _data(root: str, n_classes: int = 6, per_class: int = 30) -> str:
    data = os.path.join(root, "data")
    for c in range(n_classes):
        jpeg_folder(per_class, (320, 240), os.path.join(data, f"class_{c}"), seed=100 + c)
    return data


def _evaluate(data: str, model: str, cache: str, report: str, cv: int) -> float:
    """Wall time of one ``skclip evaluate`` in a new process."""
    cmd = [sys.executable, "-m", "skclip", "evaluate", data, "--model", model]
    cmd += ["--cv", str(cv), "--cache-dir", cache, "--report", report, "-q"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args()
    load_guard()
    root = tempfile.mkdtemp(prefix="skclip-bench-evaluate-")
    data, model = _data(root), vit_b32_folder(os.path.join(root, "model"))
    cache, report = os.path.join(root, "cache"), os.path.join(root, "report.json")
    _evaluate(data, model, cache, report, args.cv)  # fills the cache
    walls, seconds = [], {}
    for _ in range(args.rounds):
        walls.append(_evaluate(data, model, cache, report, args.cv))
        with open(report) as f:
            for name, entry in json.load(f)["methods"].items():
                seconds.setdefault(name, []).append(entry["seconds"])
    wall = statistics.median(walls)
    print(f"skclip evaluate (180 images, 6 classes, --cv {args.cv}, cached): {wall:.1f} s")
    for name, times in seconds.items():
        t = statistics.median(times)
        print(f"  {name:16s} {t:7.2f} s  {100 * t / wall:5.1f}% of the command's time")
    share = statistics.median(seconds["GDA"]) / wall
    print(f"GDA share of evaluate's time: {100 * share:.1f}% (goal < 10%){load_note()}")


if __name__ == "__main__":
    main()
