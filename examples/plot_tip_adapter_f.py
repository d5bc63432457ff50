"""
Tip-Adapter-F: fine-tuning the cache keys
=========================================

Training-free Tip-Adapter against Tip-Adapter-F on a few-shot split (K images per
class to learn from, the rest to test on). Tip-F trains the cache keys at its defaults:
300 AdamW steps at ``lr=1e-3`` whatever the data size, keys kept normalized, each
training image scored without its own key; with 20 or more images per class it would
also keep the best epoch on a held-out part of the *training* images, never on the test
images. The cache keys are built from augmented views (``augment``), the recipe of the
Tip-Adapter paper.

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: the first argument, or a
generated folder::

    python examples/plot_tip_adapter_f.py [DATA_DIR]
"""

import os
import sys

from _data import make_folder

from skclip import CLIPFeaturizer, TipAdapterClassifier
from skclip.datasets import load_image_folder
from skclip.model_selection import few_shot_split

data = load_image_folder(
    sys.argv[1] if len(sys.argv) > 1 else make_folder(n_per_class=16, noise=60)
)
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")
train, test = few_shot_split(data.labels, shots=8, random_state=0)

# %%
# Keys: the mean of 4 augmented views of each training image; queries: the clean view.
featurizer = CLIPFeaturizer(model=model, augment=4, random_state=0)
X_train = featurizer.fit_transform(data.filenames[train])
X_test = featurizer.transform(data.filenames[test])
y_train, y_test = data.labels[train], data.labels[test]

# %%
# Training-free, then fine-tuned at the defaults (with 8 images per class an epoch is a
# single optimizer step, so ``epochs="auto"`` runs 300 of them).
common = dict(clip_model=model, alpha=1.0, beta=5.5, random_state=0)
free = TipAdapterClassifier(**common).fit(X_train, y_train)
tuned = TipAdapterClassifier(fine_tune=True, **common).fit(X_train, y_train)
print(f"Tip-Adapter   accuracy: {free.score(X_test, y_test):.3f}")
print(
    f"Tip-Adapter-F accuracy: {tuned.score(X_test, y_test):.3f} ({len(tuned.loss_curve_)} "
    f"epochs, loss {tuned.loss_curve_[0]:.3f} -> {tuned.loss_curve_[-1]:.3f})"
)
