"""Similarity of projections to class prototypes: the one definition the prototype loss and the quality score share.

Cosine: ``z · P_cᵀ / τ`` (``z`` L2-normalised by the network); Euclidean: ``-‖z - P_c‖² / τ`` (squared distance).
This module imports only torch, so every layer may use it.
"""

from __future__ import annotations

import torch

__all__ = ["METRICS", "check_metric", "prototype_logits"]

METRICS = ("cosine", "euclidean")
"""Names of the projection metrics."""


def check_metric(metric: str) -> str:
    """``metric`` lower-cased; ``ValueError`` when it is not one of :data:`METRICS`."""
    name = str(metric).lower()
    if name not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {name!r}.")
    return name


def prototype_logits(
    z: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1, metric: str = "cosine"
) -> torch.Tensor:
    """``z [N, D]``, ``prototypes [C, D]`` -> ``[N, C]`` in ``z``'s dtype: ``z · Pᵀ / τ`` (cosine) or
    ``-‖z - P_c‖² / τ`` (Euclidean)."""
    if z.ndim != 2 or prototypes.ndim != 2 or z.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected z [N, D] and prototypes [C, D] of the same D, "
            f"found {tuple(z.shape)} and {tuple(prototypes.shape)}."
        )
    protos = prototypes.to(device=z.device, dtype=z.dtype)
    if check_metric(metric) == "cosine":
        return z @ protos.t() / temperature
    return -((z[:, None, :] - protos[None]) ** 2).sum(-1) / temperature
