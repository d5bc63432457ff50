"""
Tuning alpha and beta: GridSearchCV vs TipAdapterClassifierCV
==============================================================

Two ways to choose Tip-Adapter's ``alpha`` and ``beta`` on training data only:
``GridSearchCV`` over a Pipeline (works with any scikit-learn tool; the embedding
cache makes it encode each image once), and :class:`skclip.TipAdapterClassifierCV`,
which scores the whole grid per fold at once. Both give the same scores.

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: the first argument, or a
generated folder::

    python examples/plot_gridsearch_vs_cv.py [DATA_DIR]
"""

import os
import sys
import time

import numpy as np
from _data import make_folder
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip.datasets import load_image_folder

data = load_image_folder(sys.argv[1] if len(sys.argv) > 1 else make_folder())
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")
alphas, betas = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0], [1.0, 3.0, 5.5, 8.0]
cv = StratifiedKFold(3, shuffle=True, random_state=0)

# %%
# GridSearchCV over the whole pipeline. The featurizer's cache means each image is
# encoded once, not once per candidate and fold.
pipe = Pipeline(
    [("clip", CLIPFeaturizer(model=model)), ("tip", TipAdapterClassifier(clip_model=model))]
)
t0 = time.perf_counter()
search = GridSearchCV(pipe, {"tip__alpha": alphas, "tip__beta": betas}, cv=cv)
search.fit(data.filenames, data.labels)
print(
    f"GridSearchCV: best {search.best_params_}, accuracy {search.best_score_:.3f} "
    f"({time.perf_counter() - t0:.1f} s, cache {CLIPFeaturizer.cache_info()})"
)

# %%
# TipAdapterClassifierCV on the same (cached) embeddings: one pass per fold.
X = CLIPFeaturizer(model=model).transform(data.filenames)
t0 = time.perf_counter()
tip_cv = TipAdapterClassifierCV(alphas=alphas, betas=betas, cv=cv, clip_model=model)
tip_cv.fit(X, data.labels)
print(
    f"TipAdapterClassifierCV: alpha={tip_cv.alpha_} beta={tip_cv.beta_}, accuracy "
    f"{tip_cv.best_score_:.3f} ({time.perf_counter() - t0:.2f} s)"
)
same = np.allclose(tip_cv.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])
print(f"same mean scores for every candidate: {same}")
