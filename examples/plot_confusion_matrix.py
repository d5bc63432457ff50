"""
Which classes get confused: confusion matrices
==============================================

Accuracy says how often a classifier is wrong; a confusion matrix says *which* classes
it mixes up. On a few-shot split (a few labelled images per class to learn from, the
rest to test on), compare the confusions of zero-shot CLIP, which knows only the class
names, with those left after Tip-Adapter has seen the labelled images, drawn with
scikit-learn's ``ConfusionMatrixDisplay``.

Model: ``SKCLIP_MODEL`` (hub id or local folder). Data: the first argument, or a
generated folder::

    python examples/plot_confusion_matrix.py [DATA_DIR]
"""

import os
import sys

import matplotlib.pyplot as plt
from _data import make_folder
from sklearn.metrics import ConfusionMatrixDisplay, classification_report

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV
from skclip.datasets import load_image_folder
from skclip.model_selection import few_shot_split

data = load_image_folder(sys.argv[1] if len(sys.argv) > 1 else make_folder(noise=60))
model = os.environ.get("SKCLIP_MODEL", "openai/clip-vit-base-patch32")

# %%
# Six labelled images per class to learn from, every other image to test on. The
# images are encoded once; both classifiers work on the embeddings.
train, test = few_shot_split(data.labels, shots=6, random_state=0)
X = CLIPFeaturizer(model=model).transform(data.filenames)
X_train, X_test = X[train], X[test]
y_train, y_test = data.labels[train], data.labels[test]

# %%
# Zero-shot CLIP is Tip-Adapter with ``alpha=0``: the labelled images are not used.
# Tip-Adapter chooses ``alpha`` and ``beta`` by 3-fold cross-validation on the
# labelled images only.
tip = "Tip-Adapter (alpha, beta by CV)"
classifiers = {
    "zero-shot CLIP": TipAdapterClassifier(alpha=0.0, clip_model=model),
    tip: TipAdapterClassifierCV(clip_model=model, cv=3),
}
predictions = {}
for name, clf in classifiers.items():
    predictions[name] = clf.fit(X_train, y_train).predict(X_test)
    print(f"{name}: test accuracy {clf.score(X_test, y_test):.3f}")
print(f"{tip}, per class:")
print(classification_report(y_test, predictions[tip], zero_division=0))

# %%
# Rows are the true classes, columns the predicted ones; each row is normalized to 1,
# so the diagonal holds the recall of every class. A zero-shot model that puts most
# images in one column has learnt little from the class names alone.
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
for ax, (name, y_pred) in zip(axes, predictions.items()):
    ConfusionMatrixDisplay.from_predictions(
        y_test,
        y_pred,
        labels=classifiers[name].classes_,
        normalize="true",
        values_format=".2f",
        cmap="Blues",
        colorbar=False,
        ax=ax,
    )
    ax.set_title(name)
fig.suptitle("Confusions on the test images (rows: true class, normalized)")
plt.show()
