"""Fixtures for tests/ (the tiny CLIP checkpoint comes from the root conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A small generated image set: 3 classes x 6 JPEGs of varying size, as (paths, labels).

    Classes differ by colour, so even a random tiny CLIP separates them reasonably.
    """
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    colours = {"red_apple": (200, 30, 30), "green-leaf": (30, 180, 40), "blue sky": (30, 60, 210)}
    paths, labels = [], []
    for name, colour in colours.items():
        (root / name).mkdir()
        for i in range(6):
            w, h = int(rng.integers(36, 80)), int(rng.integers(36, 80))
            arr = np.clip(
                np.array(colour)[None, None] + rng.normal(0, 25, (h, w, 3)), 0, 255
            ).astype(np.uint8)
            path = root / name / f"img{i}.jpg"
            Image.fromarray(arr).save(path, quality=90)
            paths.append(str(path))
            labels.append(name)
    return paths, np.array(labels)
