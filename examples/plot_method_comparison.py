"""
Which method for my images? Comparing heads under one cross-validation
======================================================================

On a folder of labelled images, compare, under the *same* outer cross-validation
folds and on the same CLIP embeddings:

- zero-shot CLIP (:class:`skclip.TipAdapterClassifier` with ``alpha=0``: the class
  names only),
- Tip-Adapter with ``alpha`` and ``beta`` chosen by :class:`skclip.TipAdapterClassifierCV`,
- GDA (:class:`skclip.GDAClassifier`: class means and a shared covariance, blended
  with zero-shot CLIP), its ``alpha`` chosen by ``GridSearchCV``,
- APE (:class:`skclip.APEClassifier`: a cache model on the most discriminative feature
  channels), its ``alpha`` and ``beta`` chosen by ``GridSearchCV``,
- a linear probe, the standard CLIP baseline: ``LogisticRegression`` on the
  embeddings, its ``C`` chosen by ``GridSearchCV``.

Every hyperparameter is chosen by an *inner* cross-validation on each outer training
part only, so the outer test scores are honest estimates for each method as a whole
(nested cross-validation). From the shell, ``skclip evaluate DATA_DIR`` runs this kind
of comparison (see :doc:`/cli`).

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: the first argument, or a
generated folder::

    python examples/plot_method_comparison.py [DATA_DIR]
"""

import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from _data import make_folder
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from skclip import (
    APEClassifier,
    CLIPFeaturizer,
    GDAClassifier,
    TipAdapterClassifier,
    TipAdapterClassifierCV,
)
from skclip.datasets import load_image_folder

data = load_image_folder(sys.argv[1] if len(sys.argv) > 1 else make_folder())
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")

# %%
# Encode every image once; all methods work on the embeddings.
X, y = CLIPFeaturizer(model=model).transform(data.filenames), data.labels
outer = StratifiedKFold(4, shuffle=True, random_state=0)
inner = StratifiedKFold(3, shuffle=True, random_state=0)

# %%
# The methods, each with its own inner search where it has hyperparameters. The
# grids are small for speed; GDA's best ``alpha`` grows with the number of training
# images, hence its wide grid (the authors search 1e-4 to 100).
METHODS = {
    "zero-shot CLIP": TipAdapterClassifier(alpha=0.0, clip_model=model),
    "Tip-Adapter (alpha, beta by CV)": TipAdapterClassifierCV(clip_model=model, cv=inner),
    "GDA (alpha by CV)": GridSearchCV(
        GDAClassifier(clip_model=model), {"alpha": np.logspace(-4, 2, 7)}, cv=inner
    ),
    "APE (alpha, beta by CV)": GridSearchCV(
        APEClassifier(clip_model=model),
        {"alpha": [0.5, 1, 2, 4], "beta": [0.5, 1, 2, 5]},
        cv=inner,
    ),
    "linear probe (C by CV)": GridSearchCV(
        LogisticRegression(max_iter=1000), {"C": np.logspace(-2, 4, 7)}, cv=inner
    ),
}

scores = {name: cross_val_score(method, X, y, cv=outer) for name, method in METHODS.items()}
for name, s in scores.items():
    print(f"{name}: accuracy {s.mean():.3f} +/- {s.std():.3f}")

# %%
# Each dot is one outer test fold; the bar is the mean. Folds are shared, so a
# method that wins on every fold wins more convincingly than the means alone say.
fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
names = list(scores)
for i, name in enumerate(names):
    ax.barh(i, scores[name].mean(), color="lightsteelblue")
    ax.plot(scores[name], np.full(len(scores[name]), i), "o", color="navy", alpha=0.7)
ax.set_yticks(range(len(names)), [name.replace(" (", "\n(") for name in names])
ax.invert_yaxis()
ax.set_xlim(0, 1.02)
ax.set_xlabel(f"accuracy on the {outer.get_n_splits()} outer test folds (bar: mean)")
ax.set_title("Same outer folds, hyperparameters by inner CV")
plt.show()
