"""P6's search as a user's script runs it (see ``bench_search.py``, part P6).

Run by ``bench_search.py --parts p6`` in a new Python process per measurement, with an
empty ``$SKCLIP_CACHE_DIR`` and ``$TMPDIR``: it imports what a user's script imports
(numpy, scikit-learn, skclip) and nothing else, then times ``GridSearchCV(Pipeline).fit``
over the JPEGs the parent wrote. Prints one JSON line: the time of ``fit``, the heavy
modules already imported when the timer started (those its imports bring in), and the
load average before and after.

    python benchmarks/p6_user_script.py '{"model": ..., "images": [...], "n_jobs": 2, ...}'
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier

GRID = {"tip__alpha": [0.5, 1.0, 2.0], "tip__beta": [1.0, 5.5]}
HEAVY = ("torch", "transformers", "onnxruntime", "PIL")


def main(spec: dict) -> None:
    paths = spec["images"]
    labels = np.repeat(["a", "b", "c"], len(paths) // 3)
    featurizer = CLIPFeaturizer(
        model=spec["model"], device=spec["device"], progress=False, **spec["featurizer"]
    )
    pipe = Pipeline(
        [
            ("clip", featurizer),
            ("tip", TipAdapterClassifier(clip_model=spec["model"], device=spec["device"])),
        ]
    )
    search = GridSearchCV(
        pipe, GRID, cv=StratifiedKFold(3, shuffle=True, random_state=0), n_jobs=spec["n_jobs"]
    )
    preloaded = [name for name in HEAVY if name in sys.modules]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    search.fit(paths, labels)
    seconds = time.perf_counter() - t0
    print(json.dumps({"fit": seconds, "preloaded": preloaded, "load": [load, os.getloadavg()[0]]}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
