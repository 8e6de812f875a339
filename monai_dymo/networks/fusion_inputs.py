"""Validation of what the fusion network is given: modality names, embedded tokens, row indices and subsets.

Each check raises a ``ValueError`` naming what differs (used by
:class:`~monai_dymo.networks.fusion.DynamicFusionTransformer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["check_modality_names", "check_tokens", "check_index", "check_subset"]


def check_modality_names(modalities: Sequence[str], mapping: Mapping[str, object], what: str) -> None:
    """``mapping`` must hold exactly the names ``modalities`` (``what`` names it in the error)."""
    names = set(mapping.keys())
    missing = [m for m in modalities if m not in names]
    unknown = sorted(str(k) for k in names - set(modalities))
    if missing or unknown:
        raise ValueError(
            f"{what} must hold exactly the modalities {list(modalities)}: missing {missing}, unknown {unknown}."
        )


def check_tokens(
    modalities: Sequence[str], num_tokens: Mapping[str, int], dim: int, tokens: Mapping[str, torch.Tensor]
) -> int:
    """Batch size ``B`` of embedded tokens ``{name: [B, n_m, dim]}`` (``n_m = num_tokens[name]``)."""
    check_modality_names(modalities, tokens, "tokens")
    first = tokens[modalities[0]]
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 0 else -1
    for m in modalities:
        t = tokens[m]
        expected = (batch, num_tokens[m], dim)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"modality '{m}': expected tokens of shape [B, n, dim] = {expected}, found {found}.")
    return batch


def check_index(
    index: torch.Tensor | None, batch: int, device: torch.device
) -> tuple[int, torch.Tensor | None]:
    """Number of rows ``R`` and the row -> sample index ``LongTensor[R]`` on ``device`` (``None``: one row per
    sample, ``R = batch``)."""
    if index is None:
        return batch, None
    if not isinstance(index, torch.Tensor) or index.ndim != 1 or index.dtype not in (torch.int32, torch.int64):
        found = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"index must be an integer tensor [R] of sample indices, found {found}.")
    index = index.to(device=device, dtype=torch.int64)
    if index.numel():
        low, high = torch.aminmax(index)
        low, high = int(low), int(high)
        if low < 0 or high >= batch:
            raise ValueError(f"index values must lie in [0, {batch}) (the tokens' batch size), found {low}..{high}.")
    return index.shape[0], index


def check_subset(subset: torch.Tensor, rows: int, num_modalities: int, device: torch.device) -> torch.Tensor:
    """Validated subset ``BoolTensor[R, M]`` on ``device`` (a ``[M]`` subset is used for every row)."""
    if not isinstance(subset, torch.Tensor) or subset.dtype != torch.bool:
        found = getattr(subset, "dtype", type(subset).__name__)
        raise ValueError(f"subset must be a bool tensor [B, {num_modalities}], found {found}.")
    if type(subset) is not torch.Tensor:  # e.g. a MetaTensor: plain tensor semantics
        subset = subset.as_subclass(torch.Tensor)
    if subset.ndim == 1 and subset.shape[0] == num_modalities:
        subset = subset.unsqueeze(0).expand(rows, -1)
    if tuple(subset.shape) != (rows, num_modalities):
        raise ValueError(f"subset must have shape [B, M] = {(rows, num_modalities)}, found {tuple(subset.shape)}.")
    subset = subset.to(device)
    empty = ~subset.any(1)
    if bool(empty.any()):
        raise ValueError(f"row {int(empty.nonzero()[0])}: empty subset (no modality selected).")
    return subset
