"""
Choosing alpha and beta: a heat map of the cross-validated scores
=================================================================

:class:`skclip.TipAdapterClassifierCV` scores every (``alpha``, ``beta``) pair of its
grid by cross-validation on the training images and keeps the best. Its
``cv_results_`` (laid out as ``GridSearchCV.cv_results_``) show how flat or sharp
that choice is: here as a heat map of the mean accuracy over the folds.

``alpha`` weighs the cache model of the labelled images against zero-shot CLIP
(``alpha=0`` *is* zero-shot CLIP); ``beta`` sets how sharply a query's affinity to
each cached image decays.

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: the first argument, or a
generated folder::

    python examples/plot_alpha_beta_heatmap.py [DATA_DIR]
"""

import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from _data import make_folder
from sklearn.model_selection import StratifiedKFold

from skclip import CLIPFeaturizer, TipAdapterClassifierCV
from skclip.datasets import load_image_folder

data = load_image_folder(sys.argv[1] if len(sys.argv) > 1 else make_folder(noise=60))
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")

# %%
# Encode the images once, then score the default grid (10 alphas x 10 betas) with
# 4-fold cross-validation. Each fold scores the whole grid in one pass.
X = CLIPFeaturizer(model=model).transform(data.filenames)
cv = StratifiedKFold(4, shuffle=True, random_state=0)
clf = TipAdapterClassifierCV(clip_model=model, cv=cv).fit(X, data.labels)
print(
    f"chosen alpha={clf.alpha_:.3g}, beta={clf.beta_:.3g}: "
    f"cross-validated accuracy {clf.best_score_:.3f}"
)

# %%
# Put the mean test score of every candidate on an alpha x beta grid.
results = clf.cv_results_
alpha = np.asarray(results["param_alpha"], dtype=float)
beta = np.asarray(results["param_beta"], dtype=float)
alphas, betas = np.unique(alpha), np.unique(beta)
scores = np.full((len(alphas), len(betas)), np.nan)
scores[np.searchsorted(alphas, alpha), np.searchsorted(betas, beta)] = results["mean_test_score"]

fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
image = ax.imshow(scores, origin="lower", cmap="viridis", aspect="auto")
ax.set_xticks(range(len(betas)), [f"{b:.2g}" for b in betas], rotation=45)
ax.set_yticks(range(len(alphas)), [f"{a:.2g}" for a in alphas])
ax.set_xlabel("beta (sharpness of the cache affinities)")
ax.set_ylabel("alpha (cache weight; 0 = zero-shot CLIP)")
chosen = np.searchsorted(betas, clf.beta_), np.searchsorted(alphas, clf.alpha_)
ax.plot(
    *chosen,
    marker="*",
    markersize=14,
    color="red",
    linestyle="none",
    label=f"chosen: alpha={clf.alpha_:.2g}, beta={clf.beta_:.2g}",
)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
fig.colorbar(image, ax=ax, label="mean cross-validated accuracy")
ax.set_title("TipAdapterClassifierCV: accuracy over the grid")
plt.show()

# %%
# The bottom row (``alpha=0``) does not depend on ``beta``: it is zero-shot CLIP, the
# baseline every other cell has to beat.
print(f"zero-shot CLIP (alpha=0) accuracy: {np.nanmax(scores[alphas == 0]):.3f}")
