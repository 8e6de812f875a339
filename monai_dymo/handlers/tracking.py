"""Experiment tracking (``python -m monai.bundle run ... --tracking mlflow``) for the DyMo trainers.

MONAI's default tracking settings append an ``MLFlowHandler`` to ``train#handlers`` whose loss transform is
``from_engine(["loss"], first=True)``: it expects the decollated list of per-sample dicts of MONAI's own trainers.
The DyMo trainers keep ``engine.state.output`` one dict (their rows are (subset, sample) pairs or whole-batch loss
terms, not patients), for which that transform returns a tuple that MLflow cannot log. :func:`adapt_tracking_handlers`
points such handlers at :func:`scalar_loss`, which reads both forms; the training configs call it in ``initialize``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai.handlers import MLFlowHandler

__all__ = ["scalar_loss", "adapt_tracking_handlers"]


def scalar_loss(output: Any) -> float | None:
    """The scalar ``loss`` of a trainer output: a dict (DyMo trainers) or a decollated list of dicts (MONAI)."""
    if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        output = output[0]
    if not isinstance(output, Mapping) or output.get("loss") is None:
        return None
    loss = output["loss"]
    return float(loss.detach().item()) if isinstance(loss, torch.Tensor) else float(loss)


def adapt_tracking_handlers(handlers: Sequence | None) -> Sequence | None:
    """Make every ``MLFlowHandler`` in a trainer's ``handlers`` log :func:`scalar_loss`; other handlers are untouched.
    Returns ``handlers`` (None stays None)."""
    for handler in handlers or ():
        if isinstance(handler, MLFlowHandler):
            handler.output_transform = scalar_loss
    return handlers
