"""Helpers shared by the tests: image generation and the tiny model's sizes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from skclip._testing import TINY_DIM, TINY_IMAGE_SIZE  # noqa: F401 (re-exported for tests)


def make_image(rng: np.random.Generator, size: tuple[int, int] = (48, 40), mode: str = "RGB"):
    """A random PIL image of (width, height) ``size``: smooth colour blobs plus noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, size=3)
    freq = rng.uniform(0.05, 0.3, size=3)
    arr = np.stack([base[c] / 2 + 60 * np.sin(freq[c] * (xx + yy * (c + 1))) for c in range(3)], -1)
    arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


def clip_like_task(seed=0, d=64, n_classes=8, shots=16, n_test=100, noise=2.0, text_eps=0.15):
    """Synthetic features shaped like CLIP's, as (X_train, y_train, X_test, y_test, W).

    Image features share a common direction (so same-class cosines are ~0.35 and
    other-class ~0.15), text weights have small cosines with images (~0.1) that differ
    by a few hundredths between classes, as with real CLIP. Zero-shot is imperfect
    (~0.85 accuracy), the cache model helps a little, fine-tuning the keys more.
    """
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(seed)
    shared = normalize(rng.normal(size=(1, d)))
    means = normalize(rng.normal(size=(n_classes, d)))

    def draw(n):
        y = np.repeat(np.arange(n_classes), n)
        noise_ = noise * rng.normal(size=(len(y), d)) / np.sqrt(d)
        return normalize(shared + means[y] + noise_), y

    X_train, y_train = draw(shots)
    X_test, y_test = draw(n_test)
    other = normalize(rng.normal(size=(1, d)))
    W = normalize(
        other + 0.3 * shared + text_eps * (means + rng.normal(size=(n_classes, d)) / np.sqrt(d))
    )
    return X_train, y_train, X_test, y_test, W
