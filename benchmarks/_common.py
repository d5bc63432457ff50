"""Shared set-up for the benchmark scripts: random models and generated data, offline."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import numpy as np


def vit_b32_folder(folder: str | None = None) -> str:
    """A random CLIP whose image tower has the real ViT-B/32 size, saved to a folder."""
    from skclip._testing import save_random_clip

    return save_random_clip(folder or tempfile.mkdtemp(prefix="skclip-bench-vitb32-"), "vit-b32")


def jpeg_folder(n: int = 200, size: tuple[int, int] = (500, 375), folder: str | None = None) -> list[str]:
    """Write ``n`` generated photo-like JPEGs of (width, height) ``size``; return their paths."""
    from PIL import Image

    folder = folder or tempfile.mkdtemp(prefix="skclip-bench-jpegs-")
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        f = rng.uniform(0.01, 0.05, 3)
        base = np.stack([np.sin(f[c] * xx + f[(c + 1) % 3] * yy + i) for c in range(3)], -1)
        arr = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i:04d}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Shortest wall time of ``repeat`` calls (the least disturbed by machine noise)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
