"""
Knowing when the model is unsure: calibrated probabilities and prediction sets
==============================================================================

A few-shot classifier is sometimes wrong; on an inspection line "not sure: dent or
scratch?" is more useful than a confident wrong answer. This example

1. fits Tip-Adapter on a few labelled images per class,
2. fits a *temperature* on half of a separate set of calibration images, so that its
   probabilities match how often it is right (expected calibration error before/after),
3. turns the probabilities into *prediction sets* with MAPIE's split conformal
   classifier (a guarantee on average over classes) and skclip's
   :class:`~skclip.conformal.MondrianConformalClassifier` (a guarantee for every
   class), on the other half of the calibration images,
4. draws the coverage and the mean set size against the confidence level asked for.

Needs MAPIE (``pip install 'skclip[conformal]'``). Model: ``SKCLIP_MODEL`` (hub id or
local folder). Data: the first argument, or a generated folder::

    python examples/plot_conformal_sets.py [DATA_DIR]
"""

import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from _data import make_folder
from mapie.classification import SplitConformalClassifier
from sklearn.frozen import FrozenEstimator

from skclip import CLIPFeaturizer, TipAdapterClassifierCV
from skclip.calibration import TemperatureScaledClassifier, expected_calibration_error
from skclip.conformal import MondrianConformalClassifier, coverage_score
from skclip.datasets import load_image_folder

data = load_image_folder(
    sys.argv[1] if len(sys.argv) > 1 else make_folder(n_per_class=60, noise=60, mix=0.8)
)
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")

# %%
# Per class: 8 labelled images to learn from, 24 calibration images (12 to fit the
# temperature, 12 to conformalize: Mondrian at 0.9 needs at least 9 per class), the
# rest to test on. The split is random within each class.
rng = np.random.default_rng(0)
parts = {"train": [], "temperature": [], "conformal": [], "test": []}
for label in np.unique(data.labels):
    idx = rng.permutation(np.flatnonzero(data.labels == label))
    for name, (lo, hi) in zip(parts, [(0, 8), (8, 20), (20, 32), (32, len(idx))]):
        parts[name].append(idx[lo:hi])
parts = {name: np.concatenate(idx) for name, idx in parts.items()}
X = CLIPFeaturizer(model=model).transform(data.filenames)
y = data.labels

# %%
# Calibration: the head's logits carry CLIP's scale of 100, so its probabilities are
# often 0 or 1. The temperature divides them by ``T``; the predictions do not change.
head = TipAdapterClassifierCV(clip_model=model, cv=4).fit(X[parts["train"]], y[parts["train"]])
t_idx, c_idx, test = parts["temperature"], parts["conformal"], parts["test"]
scaled = TemperatureScaledClassifier(FrozenEstimator(head)).fit(X[t_idx], y[t_idx])
print(f"test accuracy {head.score(X[test], y[test]):.3f}, temperature {scaled.temperature_:.2f}")
for name, clf in [("raw", head), ("temperature-scaled", scaled)]:
    ece = expected_calibration_error(y[test], clf.predict_proba(X[test]), labels=clf.classes_)
    print(f"  {name}: expected calibration error {ece:.3f}")

# %%
# Prediction sets for a range of confidence levels, in one call each. MAPIE's sets
# cover the true class for about that share of all test images; Mondrian's for that
# share of the images of *each* class (its threshold is per class).
levels = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
mapie = SplitConformalClassifier(scaled, confidence_level=levels, conformity_score="lac")
mondrian = MondrianConformalClassifier(scaled, confidence_level=levels)
results = {}
for name, conformal in [("MAPIE split (marginal)", mapie), ("Mondrian (per class)", mondrian)]:
    _, sets = conformal.conformalize(X[c_idx], y[c_idx]).predict_set(X[test])
    coverage = coverage_score(y[test], sets, labels=scaled.classes_)
    worst = np.nanmin(coverage_score(y[test], sets, labels=scaled.classes_, by_class=True), axis=0)
    results[name] = coverage, worst, sets.sum(axis=1).mean(axis=0)
    print(
        f"{name} at 0.9: coverage {coverage[5]:.3f} (worst class {worst[5]:.3f}), "
        f"mean set size {results[name][2][5]:.2f}"
    )

# %%
# Left: coverage against the level asked for (the diagonal is the promise; with few
# calibration images the realised coverage of one split scatters around it). Right:
# what the promise costs, in classes per set.
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
left.plot([0.5, 1], [0.5, 1], color="grey", lw=1, ls="--", label="asked for")
for name, (coverage, worst, size) in results.items():
    (line,) = left.plot(levels, coverage, marker="o", label=f"{name}: all images")
    left.plot(
        levels, worst, marker="x", ls=":", color=line.get_color(), label=f"{name}: worst class"
    )
    right.plot(coverage, size, marker="o", color=line.get_color(), label=name)
left.set(xlabel="confidence level", ylabel="empirical coverage", title="Coverage")
right.set(
    xlabel="empirical coverage", ylabel="mean set size (classes)", title="Set size vs coverage"
)
left.legend(fontsize="small")
right.legend(fontsize="small")
plt.show()
