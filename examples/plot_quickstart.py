"""
Quickstart: CLIP + Tip-Adapter on a folder of images
=====================================================

A ``Pipeline`` of :class:`skclip.CLIPFeaturizer` and
:class:`skclip.TipAdapterClassifier`, cross-validated on a folder with one
sub-folder per class, then used to classify new images.

The checkpoint comes from the ``SKCLIP_MODEL`` environment variable (a hub id or a
local folder; default ``openai/clip-vit-base-patch32``), the images from the first
command-line argument. Without an argument a small folder of coloured images is
generated (``examples/_data.py``), so the script runs anywhere::

    python examples/plot_quickstart.py [DATA_DIR]
"""

import os
import sys

import numpy as np
from _data import make_folder
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip.datasets import load_image_folder


# %%
# Find the images: data/<class>/<image>.jpg, the folder name is the label.
data = load_image_folder(sys.argv[1] if len(sys.argv) > 1 else make_folder())
paths, labels = data.filenames, data.labels  # labels: the folder names, used in the prompts
print(f"{len(paths)} images, classes: {data.target_names.tolist()}")

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
