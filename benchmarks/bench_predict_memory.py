"""Peak memory of ``predict`` and ``predict_proba`` against the size of their output.

Each measurement runs in a fresh process: a fitted pure cache model (one key per
class, ``clip_model=None``) predicts ``N`` random queries over ``C`` classes; the peak
resident memory during the call (Linux: ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), minus the resident memory before it, is compared with the
``N x C`` float32 matrix of logits (``predict_proba``'s output).

    python benchmarks/bench_predict_memory.py                # 100,000 x 5,000
    python benchmarks/bench_predict_memory.py 20000 1000     # N C

Linux only. Memory, not time: the numbers do not depend on the machine's load, only
on the allocator.
"""

from __future__ import annotations

import json
import subprocess
import sys

from _common import load_guard

CHILD = r"""
import json, re, sys
import numpy as np
from skclip import TipAdapterClassifier

def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

n, c, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
d = 16
clf = TipAdapterClassifier(clip_model=None).fit(
    rng.normal(size=(c, d)).astype(np.float32), np.arange(c))
X = rng.normal(size=(n, d)).astype(np.float32)
getattr(clf, method)(X[:10])  # warm up: lazy imports, torch's thread pools
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak
before = status("VmRSS")
out = getattr(clf, method)(X)
peak = status("VmHWM") - before
print(json.dumps({"peak": peak, "output": out.nbytes, "logits": n * c * 4}))
"""


def measure(n: int, c: int, method: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(c), method],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    load_guard()  # memory, not time; printed all the same
    n, c = (int(argv[0]), int(argv[1])) if len(argv) >= 2 else (100_000, 5_000)
    print(f"{n} queries x {c} classes, float32: logits matrix {n * c * 4 / 2**30:.2f} GiB")
    for method in ("predict", "predict_proba"):
        r = measure(n, c, method)
        print(
            f"{method:>14}: peak {r['peak'] / 2**30:.2f} GiB over the baseline, "
            f"{r['peak'] / r['logits']:.2f} x the N x C logits, output "
            f"{r['output'] / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
