"""Private imports from scikit-learn, and differences between library versions, in one place.

scikit-learn's parameter validation (``sklearn.utils._param_validation``) is private
API: when it moves, only this module changes. The rest of skclip imports these names
from here, never from ``sklearn.utils._*``.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from sklearn.utils._param_validation import (
    HasMethods,
    Hidden,
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_params,
)
from sklearn.utils._set_output import _get_output_config as get_output_config

__all__ = [
    "HasMethods",
    "Hidden",
    "Interval",
    "InvalidParameterError",
    "Options",
    "PositiveInt",
    "StrOptions",
    "get_output_config",
    "pooled_embeddings",
    "validate_params",
]


class PositiveInt(Interval):
    """``Interval(Integral, 1, None, closed="left")`` whose error says "a positive integer".

    Examples
    --------
    >>> PositiveInt().is_satisfied_by(3), PositiveInt().is_satisfied_by(0), str(PositiveInt())
    (True, False, 'a positive integer')
    """

    def __init__(self) -> None:
        super().__init__(Integral, 1, None, closed="left")

    def __str__(self) -> str:
        return "a positive integer"


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The embeddings returned by ``get_text_features`` / ``get_image_features``.

    transformers 4 returns them as a Tensor; transformers 5 returns an output object
    whose ``pooler_output`` holds them.

    Examples
    --------
    >>> import torch
    >>> pooled_embeddings(torch.ones(1, 2))
    tensor([[1., 1.]])
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output
