"""
Quickstart: CLIP + Tip-Adapter on a folder of images
=====================================================

A ``Pipeline`` of :class:`skclip.CLIPFeaturizer` and
:class:`skclip.TipAdapterClassifier`, cross-validated on a folder with one
sub-folder per class, then used to classify new images.

The checkpoint comes from the ``SKCLIP_MODEL`` environment variable (a hub id or a
local folder; default ``openai/clip-vit-base-patch32``), the images from the first
command-line argument. Without an argument a small folder of coloured images is
generated, so the script runs anywhere::

    python examples/plot_quickstart.py [DATA_DIR]
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier


def generated_folder() -> Path:
    """Three 'classes' of noisy coloured images, 8 each."""
    root = Path(tempfile.mkdtemp(prefix="skclip-quickstart-"))
    rng = np.random.default_rng(0)
    for name, colour in {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 210)}.items():
        (root / name).mkdir()
        for i in range(8):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (96, 128, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i}.jpg")
    return root


# %%
# Find the images: data/<class>/<image>.jpg, the folder name is the label.
data = Path(sys.argv[1]) if len(sys.argv) > 1 else generated_folder()
paths = sorted(str(p) for p in data.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
labels = np.array([Path(p).parent.name for p in paths])
print(f"{len(paths)} images, classes: {sorted(set(labels))}")

# %%
# One pipeline: CLIP image embeddings, then Tip-Adapter (zero-shot CLIP from the class
# names plus a cache model of the labelled images).
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")
pipe = Pipeline(
    [
        ("clip", CLIPFeaturizer(model=model)),
        ("tip", TipAdapterClassifier(clip_model=model, alpha=1.0, beta=5.5)),
    ]
)
scores = cross_val_score(pipe, paths, labels, cv=StratifiedKFold(3, shuffle=True, random_state=0))
print(f"3-fold accuracy: {scores.mean():.3f} +/- {scores.std():.3f}")

# %%
# Fit on everything and classify images.
pipe.fit(paths, labels)
print("predictions for the first 3 images:", pipe.predict(paths[:3]))
print("probabilities:", np.round(pipe.predict_proba(paths[:1]), 3))
