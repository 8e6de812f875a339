"""The presence mask carries its modality names, so that no consumer can read it in the wrong order.

The transforms write ``sample["present"]`` as a bool ``MetaTensor[M]`` whose meta dict holds the modality names in
column order under :data:`PRESENT_NAMES_META_KEY` (a comma-joined string, so that MONAI's collation keeps it as one
string per patient and ``decollate_batch`` gives it back). Every consumer (the inferer, the evaluator, the trainers,
the calibration, :func:`~monai_dymo.selection.select_modalities`) calls :func:`align_present` with the modality order
it works in: the columns are reordered by name, and a mask for other modalities is a ``ValueError`` naming both
orders. A plain tensor without names is taken as already in the consumer's order (tensors built by hand).

:func:`keep_one_observed` is the one "drop, but keep at least one observed modality" rule of simulated missingness
(pattern files, the simulating transform, held-out drops).

This module imports only NumPy, torch and MONAI's ``MetaTensor``; every layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from monai.data import MetaTensor

__all__ = [
    "PRESENT_NAMES_META_KEY",
    "attach_modality_names",
    "present_modality_names",
    "align_present",
    "keep_one_observed",
]

PRESENT_NAMES_META_KEY = "dymo_modalities"
"""Meta key of the presence ``MetaTensor``: the modality names of its columns, joined by commas."""


def attach_modality_names(present: torch.Tensor, modalities: Sequence[str]) -> MetaTensor:
    """``present`` (``[M]`` or ``[B, M]``) as a ``MetaTensor`` whose meta names its columns ``modalities``."""
    names = [str(m) for m in modalities]
    if any("," in n for n in names):
        raise ValueError(f"modality names must not contain commas, got {names}.")
    if present.shape[-1] != len(names):
        raise ValueError(f"presence mask has {present.shape[-1]} columns for {len(names)} modality names {names}.")
    plain = present.as_tensor() if isinstance(present, MetaTensor) else torch.as_tensor(present)
    return MetaTensor(plain, meta={PRESENT_NAMES_META_KEY: ",".join(names)})


def present_modality_names(present: Any) -> tuple[str, ...] | None:
    """Column names carried by a presence mask (one sample or a collated batch); ``None`` when it carries none.

    Raises:
        ValueError: a collated batch whose patients' masks name different modality orders.
    """
    meta = getattr(present, "meta", None) if isinstance(present, MetaTensor) else None
    if not meta or PRESENT_NAMES_META_KEY not in meta:
        return None
    value = meta[PRESENT_NAMES_META_KEY]
    if isinstance(value, (list, tuple)):  # collated: one string per patient
        distinct = sorted({str(v) for v in value})
        if len(distinct) > 1:
            raise ValueError(
                f"the presence masks of this batch name different modality orders {distinct}; every patient must be "
                "prepared by the same transforms."
            )
        if not distinct:
            return None
        value = distinct[0]
    return tuple(str(value).split(",")) if str(value) else ()


def align_present(present: torch.Tensor, modalities: Sequence[str], owner: str) -> torch.Tensor:
    """Plain ``BoolTensor[..., M]`` of ``present`` with its columns in the order of ``modalities``.

    Args:
        present: presence mask ``[M]`` or ``[B, M]``; a ``MetaTensor`` carrying names is reordered by name, anything
            else is taken as already in ``modalities`` order.
        modalities: the consumer's modality order (e.g. ``network.modalities``).
        owner: who asks, named in errors (e.g. ``"DyMoInferer"``).

    Raises:
        ValueError: the mask names other modalities than ``modalities`` (both orders are named).
    """
    order = tuple(str(m) for m in modalities)
    names = present_modality_names(present)
    plain = present.as_tensor() if isinstance(present, MetaTensor) else torch.as_tensor(present)
    if names is None or names == order:
        return plain
    if sorted(names) != sorted(order) or len(set(names)) != len(names):
        raise ValueError(
            f"{owner}: the presence mask is for modalities {list(names)} (in that order), but {owner} works on "
            f"{list(order)}; the transforms' `modalities` and the network's must name the same modalities."
        )
    index = torch.tensor([names.index(m) for m in order], device=plain.device)
    return plain.index_select(plain.ndim - 1, index)


def keep_one_observed(
    observed: Any, drop: Any, priority: Any | Callable[[np.ndarray], np.ndarray]
) -> Any:
    """``drop`` (bool ``[..., M]``, True = hide that observed modality) where every row that would be left with
    nothing observed keeps its observed modality of largest ``priority``.

    Args:
        observed: bool ``[..., M]`` observed modalities (rows with none are left as they are).
        drop: bool ``[..., M]`` modalities to hide.
        priority: scores ``[..., M]`` (e.g. the uniform draws that decided the drops, so the kept one is uniform
            among the dropped), or a function of just the rows that need one (their ``observed`` as bool
            ``ndarray[R, M]`` -> scores ``[R, M]``), so that a random choice is drawn only when it is needed.

    Returns:
        A new mask of ``drop``'s kind (NumPy array, or tensor on ``drop``'s device).
    """
    as_tensor = isinstance(drop, torch.Tensor)
    obs = np.asarray(observed.cpu() if isinstance(observed, torch.Tensor) else observed, dtype=bool)
    out = np.array(drop.cpu() if as_tensor else drop, dtype=bool)  # a copy
    shape, M = out.shape, out.shape[-1]
    obs2, out2 = obs.reshape(-1, M), out.reshape(-1, M)
    rows = np.flatnonzero(obs2.any(1) & ~(obs2 & ~out2).any(1))
    if rows.size:
        if callable(priority):
            score = np.asarray(priority(obs2[rows]), dtype=float)
        else:
            score = np.asarray(priority.cpu() if isinstance(priority, torch.Tensor) else priority).reshape(-1, M)[rows]
        out2[rows, np.where(obs2[rows], score, -np.inf).argmax(1)] = False
    out = out2.reshape(shape)
    return torch.from_numpy(out).to(drop.device) if as_tensor else out
