"""The ``fuse`` callable that selection, calibration and the ensemble work on, and how it is called.

``fuse(tokens, subset) -> (logits [R, C], projection [R, D])``: ``tokens`` ``{modality: [B, ...]}``, ``subset``
``BoolTensor [R, M]``; a ``fuse`` that also takes ``index`` (``LongTensor [R]``, row -> patient of the tokens) fuses
rows of patients without copying their tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch

__all__ = ["FuseFn", "takes_index"]

FuseFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def takes_index(fuse: Callable) -> bool:
    """Whether ``fuse`` accepts an ``index`` keyword (row -> patient index into the tokens)."""
    try:
        param = inspect.signature(fuse).parameters.get("index")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
