"""
Domain shift: train on one folder, test on another
==================================================

Images at deployment rarely look like the labelled ones (another camera, lighting,
season). Fit on one folder, evaluate on a second with the same classes, here made
darker. The same from the shell: ``skclip evaluate TRAIN_DIR --test-dir TEST_DIR``.

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: two folder arguments, or two
generated folders::

    python examples/plot_domain_shift.py [TRAIN_DIR TEST_DIR]
"""

import os
import sys

from _data import make_folder
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip.datasets import load_image_folder

if len(sys.argv) > 2:
    source, target = load_image_folder(sys.argv[1]), load_image_folder(sys.argv[2])
else:
    source = load_image_folder(make_folder(seed=0))
    target = load_image_folder(make_folder(seed=1, shift=60))  # a darker "camera"
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")

for name, classifier in {
    "zero-shot CLIP": TipAdapterClassifier(alpha=0.0, clip_model=model),
    "Tip-Adapter (alpha, beta by CV)": TipAdapterClassifierCV(clip_model=model, cv=3),
}.items():
    pipe = Pipeline([("clip", CLIPFeaturizer(model=model)), ("tip", classifier)])
    pipe.fit(source.filenames, source.labels)
    print(
        f"{name}: accuracy on the source domain (training images) "
        f"{pipe.score(source.filenames, source.labels):.3f}, "
        f"on the shifted domain {pipe.score(target.filenames, target.labels):.3f}"
    )
