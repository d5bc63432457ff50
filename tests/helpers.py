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


#: Three CLIP-like tasks of growing size for Tip-Adapter-F
#: (``clip_statistics_task(**TASKS[name])``).
#: Same-class image cosines ~0.76, other-class ~0.5-0.6, image-text ~0.2-0.25 with the true
#: class a few hundredths above the rest; zero-shot accuracy ~0.5-0.7.
TIPF_TASKS = {
    "10 classes": dict(
        n_classes=10, n_test=30, group=5, cc=0.85, c2=0.05, r=6, e2=0.03, text_err=1.2
    ),
    "100 classes": dict(n_classes=100, n_test=10),
    "500 classes": dict(n_classes=500, n_test=4, d=256, modes=3),
}


def clip_statistics_task(
    n_classes=10,
    shots=16,
    n_test=20,
    d=512,
    modes=4,
    group=10,
    cc=0.9,
    a2=0.5,
    b2=0.25,
    c2=0.04,
    h2=0.17,
    r=8,
    e2=0.04,
    text_err=0.9,
    tw=0.12,
    seed=0,
):
    """A synthetic few-shot task calibrated to CLIP's statistics.

    Returns ``(X_train, y_train, X_test, y_test, W)`` (float32, rows L2-normalized). An
    image feature is the normalized sum of a direction all images share (weight ``a2``
    of the squared norm), its class direction (``b2``; classes come in groups of
    ``group`` whose directions have cosine ``cc``: fine-grained neighbours), one of
    ``modes`` class-specific modes (``c2``), a nuisance drawn from an ``r``-dimensional
    subspace shared by all classes (``h2``: background, light) and isotropic noise
    (``e2``). Text weights mostly point elsewhere (image-text cosines ~0.2-0.25), with a
    small part (``tw``) towards a noisy copy of the class direction (``text_err``), so
    zero-shot is right only some of the time. The task (directions, text, test set) is
    fixed by ``seed``; the training set also depends on ``shots``.
    """
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(seed)

    def unit(*shape):
        return normalize(rng.standard_normal(shape).reshape(-1, shape[-1])).reshape(shape)

    shared = unit(d)
    n_groups = max(1, n_classes // group)
    group_of = rng.permutation(np.arange(n_classes) % n_groups)
    groups = unit(n_groups, d)[group_of]
    centers = normalize(np.sqrt(cc) * groups + np.sqrt(1 - cc) * unit(n_classes, d))
    mode_dirs = unit(n_classes, modes, d)
    nuisance = unit(r, d)
    a, b, c, h, e = np.sqrt([a2, b2, c2, h2, e2])

    def draw(n):
        y = np.repeat(np.arange(n_classes), n)
        mode = rng.integers(modes, size=len(y))
        nuis = normalize(rng.standard_normal((len(y), r))) @ nuisance
        x = a * shared + b * centers[y] + c * mode_dirs[y, mode] + h * nuis + e * unit(len(y), d)
        return normalize(x).astype(np.float32), y

    text_dir = normalize(centers + text_err * unit(n_classes, d))
    W = normalize(np.sqrt(1 - 0.09 - tw**2) * unit(d) + 0.3 * shared + tw * text_dir)
    X_test, y_test = draw(n_test)
    rng = np.random.default_rng([seed, shots])
    X_train, y_train = draw(shots)
    return X_train, y_train, X_test, y_test, W.astype(np.float32)
