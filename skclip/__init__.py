"""skclip: few-shot image classification with CLIP, the scikit-learn way.

Public API: :class:`CLIPFeaturizer` turns images into CLIP embeddings;
:class:`TipAdapterClassifier` is the Tip-Adapter few-shot classifier on top of them;
:class:`TipAdapterClassifierCV` chooses its alpha and beta by cross-validation;
:class:`GDAClassifier`, :class:`APEClassifier` and :class:`ProKeRClassifier` (with
:class:`GDAClassifierCV`, :class:`APEClassifierCV` and :class:`ProKeRClassifierCV`)
are more training-free heads; :class:`CLAPClassifier` and
:class:`LinearProbePPClassifier` train a linear probe anchored at the text weights.
"""

from .encoding.cache import CacheDirWarning
from ._images import ImageLoadError, ImageLoadWarning
from .backbones.loading import CheckpointMismatchError
from ._version import __version__
from .ape import APEClassifier
from .clap import CLAPClassifier
from .featurizer import CLIPFeaturizer
from .gda import GDAClassifier
from .heads._base import ZeroFeaturesWarning
from .linear_probe_pp import LinearProbePPClassifier
from .model_selection import (
    APEClassifierCV,
    GDAClassifierCV,
    ProKeRClassifierCV,
    TipAdapterClassifierCV,
)
from .proker import ProKeRClassifier
from .tip_adapter import TipAdapterClassifier

__all__ = [
    "APEClassifier",
    "APEClassifierCV",
    "CLAPClassifier",
    "CLIPFeaturizer",
    "CacheDirWarning",
    "CheckpointMismatchError",
    "GDAClassifier",
    "GDAClassifierCV",
    "ImageLoadError",
    "ImageLoadWarning",
    "LinearProbePPClassifier",
    "ProKeRClassifier",
    "ProKeRClassifierCV",
    "TipAdapterClassifier",
    "TipAdapterClassifierCV",
    "ZeroFeaturesWarning",
    "__version__",
]
