"""skclip: few-shot image classification with CLIP, the scikit-learn way.

Public API: :class:`CLIPFeaturizer` turns images into CLIP embeddings;
:class:`TipAdapterClassifier` is the Tip-Adapter few-shot classifier on top of them;
:class:`TipAdapterClassifierCV` chooses its alpha and beta by cross-validation;
:class:`GDAClassifier`, :class:`APEClassifier` and :class:`ProKeRClassifier` (with
:class:`GDAClassifierCV`, :class:`APEClassifierCV` and :class:`ProKeRClassifierCV`)
are more training-free heads; :class:`CLAPClassifier` and
:class:`LinearProbePPClassifier` train a linear probe anchored at the text weights.

The names are imported when first used (PEP 562), so that ``import skclip`` and the
``skclip`` command's ``--help`` do not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what the names are, for type checkers; at run time see _WHERE
    from ._images import ImageLoadError, ImageLoadWarning
    from .ape import APEClassifier
    from .backbones.loading import CheckpointMismatchError
    from .clap import CLAPClassifier
    from .encoding.cache import CacheDirWarning
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

#: The module that defines each public name.
_WHERE = {
    "APEClassifier": ".ape",
    "APEClassifierCV": ".model_selection",
    "CLAPClassifier": ".clap",
    "CLIPFeaturizer": ".featurizer",
    "CacheDirWarning": ".encoding.cache",
    "CheckpointMismatchError": ".backbones.loading",
    "GDAClassifier": ".gda",
    "GDAClassifierCV": ".model_selection",
    "ImageLoadError": "._images",
    "ImageLoadWarning": "._images",
    "LinearProbePPClassifier": ".linear_probe_pp",
    "ProKeRClassifier": ".proker",
    "ProKeRClassifierCV": ".model_selection",
    "TipAdapterClassifier": ".tip_adapter",
    "TipAdapterClassifierCV": ".model_selection",
    "ZeroFeaturesWarning": ".heads._base",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name on first use (``skclip.CLIPFeaturizer``, ``from skclip import
    CLIPFeaturizer``) and keep it in the module's namespace."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
