"""Generated image folders so that the examples run anywhere, offline.

With your own data, pass its folder on the command line instead.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 210),
    "yellow": (220, 200, 40),
}


def make_folder(
    n_per_class: int = 12, noise: float = 30.0, shift: float = 0.0, seed: int = 0, mix: float = 0.0
) -> Path:
    """A temporary folder with one sub-folder per colour class of noisy 96x128 JPEGs,
    removed when the script exits.

    ``shift`` darkens every image by that many grey levels: a second "domain". ``mix > 0``
    blends each image's colour with a random other class's, by a weight drawn uniformly
    from ``[0, mix]``: classes then overlap and some images are ambiguous.
    """
    root = Path(tempfile.mkdtemp(prefix="skclip-example-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # leave no folder behind
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(n_per_class):
            base = np.array(colour, dtype=float)
            if mix > 0:  # no extra draws otherwise: the other examples' images stay the same
                other = list(COLOURS.values())[rng.integers(len(COLOURS))]
                base += rng.uniform(0, mix) * (np.array(other) - base)
            arr = base - shift + rng.normal(0, noise, (96, 128, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name / f"{i}.jpg")
    return root
