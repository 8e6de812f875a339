"""The data layout and likelihood of one modality of the MoPoE recovery network (see :class:`ModalitySpec`).

A clinical vector ``[B, F]`` holds continuous fields and categorical class indices; NaN marks a missing field and
``-1`` an unknown category. The decoder's raw output of a vector is its continuous means followed by one block of
logits per categorical field.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from monai_dymo.networks.recovery.base import UNKNOWN_CODE
from monai_dymo.networks.recovery.modality_spec import ModalitySpec

__all__ = ["observed_fields", "encoder_input", "output_to_mean", "negative_log_likelihood"]


def observed_fields(spec: ModalitySpec, x: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[B, F]``: field present (not NaN, and for a categorical field not the unknown code ``-1``)."""
    observed = ~torch.isnan(x)
    for idx in spec.categorical_fields:
        observed[:, idx] &= x[:, idx] != UNKNOWN_CODE
    return observed


def encoder_input(spec: ModalitySpec, x: torch.Tensor) -> torch.Tensor:
    """What the modality's encoder reads: an image as it is; a vector ``[B, F]`` as its continuous fields (0 where
    missing), one-hot categorical fields (zeros where missing) and the observed-field indicators ``[B, F]``."""
    if spec.is_image:
        return x
    observed = observed_fields(spec, x)
    values = torch.where(observed, x, torch.zeros_like(x))
    parts = []
    cont = spec.continuous_fields
    if cont:
        parts.append(values[:, cont])
    for idx in spec.categorical_fields:
        k = spec.categorical[idx]
        cls_idx = values[:, idx].round().long().clamp(0, k - 1)
        parts.append(F.one_hot(cls_idx, k).to(x.dtype) * observed[:, idx : idx + 1].to(x.dtype))
    parts.append(observed.to(x.dtype))
    return torch.cat(parts, dim=1)


def output_to_mean(spec: ModalitySpec, out: torch.Tensor) -> torch.Tensor:
    """Turn a raw decoder output into a recovered modality ``[n, *shape]`` (categorical fields -> arg-max class)."""
    if spec.is_image:
        return out
    res = out.new_zeros(out.shape[0], spec.shape[0])
    cont = spec.continuous_fields
    n_cont = len(cont)
    if cont:
        res[:, cont] = out[:, :n_cont]
    off = n_cont
    for idx in spec.categorical_fields:
        k = spec.categorical[idx]
        res[:, idx] = out[:, off : off + k].argmax(dim=1).to(out.dtype)
        off += k
    return res


def negative_log_likelihood(
    spec: ModalitySpec, out: torch.Tensor, target: torch.Tensor, name: str = ""
) -> torch.Tensor:
    """``-log p(x_m | z)`` per row ``[n]`` of the raw decoder output ``out`` (NaN fields of vectors are left out;
    ``name`` names the modality in errors)."""
    target = convert_to_tensor(target, track_meta=False, wrap_sequence=True).to(device=out.device, dtype=out.dtype)
    scale = spec.scale
    if spec.is_image:
        diff = (target - out).flatten(1)
        if spec.likelihood == "laplace":
            return (diff.abs() / scale).sum(1) + diff.shape[1] * math.log(2.0 * scale)
        return 0.5 * (diff / scale).pow(2).sum(1) + diff.shape[1] * (math.log(scale) + 0.5 * math.log(2 * math.pi))
    observed = observed_fields(spec, target)
    nll = out.new_zeros(out.shape[0])
    cont = spec.continuous_fields
    n_cont = len(cont)
    if cont:
        obs_c = observed[:, cont].to(out.dtype)
        diff = torch.nan_to_num(target[:, cont]) - out[:, :n_cont]
        per = 0.5 * (diff / scale).pow(2) + math.log(scale) + 0.5 * math.log(2 * math.pi)
        nll = nll + (per * obs_c).sum(1)
    off = n_cont
    for idx in spec.categorical_fields:
        k = spec.categorical[idx]
        obs = observed[:, idx]
        val = torch.where(obs, target[:, idx], torch.zeros_like(target[:, idx]))
        cls_idx = val.round().long()
        bad = obs & ((cls_idx < 0) | (cls_idx >= k) | (val != val.round()))
        if bool(bad.any()):
            i = int(torch.nonzero(bad, as_tuple=False)[0, 0])
            raise ValueError(
                f"row {i}, modality '{name}', categorical field {idx}: expected an integer class in [0, {k - 1}], "
                f"found {float(target[i, idx])}."
            )
        ce = F.cross_entropy(out[:, off : off + k], cls_idx.clamp(0, k - 1), reduction="none")
        nll = nll + ce * obs.to(out.dtype)
        off += k
    return nll
