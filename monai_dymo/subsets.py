"""Modality subsets as integer bitmasks.

A subset ``S`` of ``M`` modalities is identified by its code ``sum(2**m for m in S)``; per-subset statistics are tensors
with ``2**M`` rows indexed by that code (row 0, the empty subset, is unused).
"""

from __future__ import annotations

import torch

__all__ = [
    "mask_to_code",
    "code_to_mask",
    "all_subset_codes",
    "all_subset_masks",
    "subset_size",
    "sample_subsets",
]


def _weights(num_modalities: int, device: torch.device | str | None = None) -> torch.Tensor:
    if not 1 <= num_modalities <= 62:
        raise ValueError(f"num_modalities must be in [1, 62], got {num_modalities}.")
    return torch.pow(2, torch.arange(num_modalities, device=device, dtype=torch.int64))


def mask_to_code(mask: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[..., M]`` -> ``LongTensor[...]`` subset codes."""
    if mask.dtype != torch.bool:
        raise ValueError(f"subset mask must be a bool tensor, got dtype {mask.dtype}.")
    return (mask.to(torch.int64) * _weights(mask.shape[-1], mask.device)).sum(-1)


def code_to_mask(codes: torch.Tensor | int, num_modalities: int) -> torch.Tensor:
    """``LongTensor[...]`` (or an int) subset codes -> ``BoolTensor[..., M]``."""
    codes_t = torch.as_tensor(codes, dtype=torch.int64)
    if (codes_t < 0).any() or (codes_t >= 2**num_modalities).any():
        raise ValueError(f"subset codes must be in [0, {2**num_modalities - 1}] for {num_modalities} modalities.")
    return (codes_t.unsqueeze(-1) & _weights(num_modalities, codes_t.device)) != 0


def all_subset_codes(num_modalities: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Codes of the ``2**M - 1`` non-empty subsets, ``LongTensor[2**M - 1]`` in increasing order."""
    _weights(num_modalities)
    return torch.arange(1, 2**num_modalities, device=device, dtype=torch.int64)


def all_subset_masks(num_modalities: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Masks of the ``2**M - 1`` non-empty subsets, ``BoolTensor[2**M - 1, M]`` (row ``i`` has code ``i + 1``)."""
    return code_to_mask(all_subset_codes(num_modalities, device), num_modalities)


def subset_size(mask_or_codes: torch.Tensor, num_modalities: int | None = None) -> torch.Tensor:
    """Number of modalities in each subset; accepts a ``BoolTensor[..., M]`` mask or codes with ``num_modalities``."""
    if mask_or_codes.dtype == torch.bool:
        return mask_or_codes.sum(-1)
    if num_modalities is None:
        raise ValueError("num_modalities is required when passing subset codes.")
    return code_to_mask(mask_or_codes, num_modalities).sum(-1)


def sample_subsets(
    num_subsets: int,
    num_modalities: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``K`` distinct non-empty subsets uniformly, ``BoolTensor[K, M]`` (method section 2)."""
    total = 2**num_modalities - 1
    if not 1 <= num_subsets <= total:
        raise ValueError(f"num_subsets must be in [1, {total}] for {num_modalities} modalities, got {num_subsets}.")
    perm = torch.randperm(total, generator=generator)[:num_subsets] + 1
    return code_to_mask(perm, num_modalities).to(device)
