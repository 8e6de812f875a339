"""Common interface of monai_dymo recovery networks.

A recovery network ``R`` is called as ``R(inputs, present)`` where

- ``inputs`` maps modality name -> ``Tensor[B, *shape_m]``. A modality that is missing for some patients may hold
  any placeholder (zeros, typically) in those rows; a modality missing for *every* patient of the batch may also be
  left out of ``inputs`` (its shape then comes from the network's configuration);
- ``present`` is ``BoolTensor[B, M]`` (modality order = ``R.modalities``), True = observed.

It returns a dict with every configured modality: observed rows are the input values, bit for bit (a modality
observed for every patient is returned as the very same tensor object), missing rows are generated from the observed
modalities of the same patient. Everything is batched over patients with different missing patterns; subclasses
only loop over modalities.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["UNKNOWN_CODE", "RecoveryNetwork", "check_recovery_inputs", "merge_recovered", "missing_rows"]

UNKNOWN_CODE = -1
"""Categorical code of a category unseen in training (present, value unknown): clinical recovery treats it as missing."""


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _first_index(mask: torch.Tensor) -> int:
    """Index of the first True entry of a 1D bool tensor (0 when none)."""
    idx = torch.nonzero(mask, as_tuple=False)
    return int(idx[0, 0]) if idx.numel() else 0


def missing_rows(present: torch.Tensor, index: int) -> torch.Tensor:
    """Row indices ``LongTensor[n]`` of the patients for which modality ``index`` is missing."""
    return torch.nonzero(~present[:, index], as_tuple=False).flatten()


def check_recovery_inputs(
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    modalities: Sequence[str],
    shapes: Mapping[str, Sequence[int]],
    strict: bool = True,
    allow_nonfinite: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Validate a recovery call and return ``(tensors, present)``.

    Args:
        inputs: modality name -> ``Tensor[B, *shape]``.
        present: ``BoolTensor[B, M]`` (0/1 integer tensors are accepted and converted).
        modalities: configured modality names (order of the columns of ``present``).
        shapes: configured per-patient shape of each modality (without the batch dimension).
        strict: raise on keys of ``inputs`` that are not configured modalities; when False they are ignored.
        allow_nonfinite: modalities whose observed rows may hold NaN (clinical fields missing inside an observed
            group); any other observed modality with a non-finite value is rejected.

    Returns:
        ``tensors`` (the configured modalities found in ``inputs``, same objects) and ``present`` as a bool tensor.

    Raises:
        ValueError: unknown modality names, malformed ``present``, a patient with no observed modality, an observed
            modality missing from ``inputs``, a shape that differs from the configured one, or non-finite values.
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(f"recovery inputs must be a mapping of modality name -> tensor, got {type(inputs).__name__}.")
    unknown = [k for k in inputs if k not in modalities]
    if unknown and strict:
        raise ValueError(f"unknown modality name(s) {unknown}; this recovery network knows {list(modalities)}.")
    if not isinstance(present, torch.Tensor):
        present = torch.as_tensor(present)
    if present.dtype != torch.bool:
        if present.is_floating_point() or present.is_complex() or not bool(((present == 0) | (present == 1)).all()):
            raise ValueError(f"`present` must be a bool (or 0/1 integer) tensor [B, M], got dtype {present.dtype}.")
        present = present.bool()
    num_mod = len(modalities)
    if present.ndim != 2 or present.shape[1] != num_mod:
        raise ValueError(
            f"`present` must have shape [B, {num_mod}] (modalities {list(modalities)}), "
            f"found {_shape_str(present.shape)}."
        )
    batch = present.shape[0]
    none_observed = ~present.any(dim=1)
    if bool(none_observed.any()):
        bad = torch.nonzero(none_observed, as_tuple=False).flatten().tolist()
        raise ValueError(
            f"patient index {bad[0]} has no observed modality (all of {list(modalities)} missing); nothing to recover "
            f"from. Patients without any observed modality in this batch: {bad}."
        )
    tensors: dict[str, torch.Tensor] = {}
    for m, name in enumerate(modalities):
        expected = tuple(int(s) for s in shapes[name])
        col = present[:, m]
        if name not in inputs or inputs[name] is None:
            if bool(col.any()):
                i = _first_index(col)
                raise ValueError(
                    f"patient index {i}, modality '{name}': marked observed in `present` but absent from the inputs "
                    f"(expected a tensor of shape {_shape_str((batch, *expected))})."
                )
            continue
        x = inputs[name]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"modality '{name}': expected a torch.Tensor, got {type(x).__name__}.")
        found = tuple(x.shape)
        if len(found) == 0 or found[0] != batch:
            raise ValueError(
                f"modality '{name}': batch size mismatch, `present` has {batch} patients but the tensor has shape "
                f"{_shape_str(found)} (expected {_shape_str((batch, *expected))})."
            )
        if found[1:] != expected:
            i = _first_index(col)
            raise ValueError(
                f"patient index {i}, modality '{name}': expected shape {_shape_str(expected)} per patient "
                f"({_shape_str((batch, *expected))} for the batch), found {_shape_str(found[1:])} "
                f"({_shape_str(found)} for the batch)."
            )
        if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise ValueError(f"modality '{name}': expected a real-valued tensor, got dtype {x.dtype}.")
        if name not in allow_nonfinite and x.is_floating_point() and bool(col.any()):
            finite = torch.isfinite(x.reshape(batch, -1)).all(dim=1).to(col.device)
            bad_rows = col & ~finite
            if bool(bad_rows.any()):
                raise ValueError(
                    f"patient index {_first_index(bad_rows)}, modality '{name}': observed data contain NaN/inf values."
                )
        tensors[name] = x
    return tensors, present


def merge_recovered(
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    generated: Mapping[str, torch.Tensor],
    modalities: Sequence[str],
    shapes: Mapping[str, Sequence[int]],
    default_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Combine observed inputs with generated rows.

    Args:
        inputs: validated inputs (see :func:`check_recovery_inputs`).
        present: ``BoolTensor[B, M]``.
        generated: modality name -> ``Tensor[n_missing, *shape]`` for every modality with missing rows, rows in the
            order of :func:`missing_rows`.
        modalities: configured modality names.
        shapes: configured per-patient shapes.
        default_dtype: dtype of a modality that is absent from ``inputs`` (otherwise the input's dtype is kept).

    Returns:
        name -> ``Tensor[B, *shape]``; observed rows are the input values unchanged, and a modality without missing rows
        is returned as the input object itself.
    """
    out: dict[str, torch.Tensor] = {}
    batch = present.shape[0]
    for m, name in enumerate(modalities):
        rows = missing_rows(present, m)
        x = inputs.get(name)
        if rows.numel() == 0:
            out[name] = x  # type: ignore[assignment]
            continue
        gen = generated[name]
        expected = (int(rows.numel()), *(int(s) for s in shapes[name]))
        if tuple(gen.shape) != expected:
            raise RuntimeError(
                f"modality '{name}': generated rows have shape {_shape_str(gen.shape)}, "
                f"expected {_shape_str(expected)}."
            )
        if x is None:
            res = torch.zeros((batch, *shapes[name]), dtype=default_dtype, device=present.device)
        else:
            res = x.clone()
        res[rows.to(res.device)] = gen.to(device=res.device, dtype=res.dtype)
        out[name] = res
    return out


class RecoveryNetwork(nn.Module):
    """Base class: validation and merging around a subclass's :meth:`generate`.

    Args:
        modalities: modality names, the column order of ``present``.
        shapes: modality name -> per-patient shape (e.g. ``(3, 28, 28)``, ``(1, 64, 64, 64)`` or ``(F,)``).
    """

    #: modalities whose observed rows may contain NaN (field-level missingness of clinical vectors).
    nan_tolerant: tuple[str, ...] = ()

    def __init__(self, modalities: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        if isinstance(modalities, str) or len(modalities) == 0:
            raise ValueError(f"`modalities` must be a non-empty sequence of names, got {modalities!r}.")
        names = tuple(str(m) for m in modalities)
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {list(names)}.")
        missing = [m for m in names if m not in shapes]
        if missing:
            raise ValueError(f"no shape configured for modality(ies) {missing}.")
        extra = [k for k in shapes if k not in names]
        if extra:
            raise ValueError(f"shapes given for unknown modality(ies) {extra}; modalities are {list(names)}.")
        self.modalities: tuple[str, ...] = names
        self.modality_shapes: dict[str, tuple[int, ...]] = {m: tuple(int(s) for s in shapes[m]) for m in names}

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @abstractmethod
    def generate(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generate the missing rows.

        Args:
            inputs: validated inputs (modalities missing for the whole batch may be absent).
            present: ``BoolTensor[B, M]``, every row with at least one True.

        Returns:
            name -> ``Tensor[n_missing_m, *shape_m]`` for every modality with at least one missing row, rows ordered as
            :func:`missing_rows`.
        """

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        present: torch.Tensor,
        strict: bool = True,
        elbo: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Recover the missing modalities, or (``elbo=True``) compute the training loss.

        Args:
            inputs: modality name -> ``Tensor[B, *shape]`` (zero placeholders or absent for missing modalities).
            present: ``BoolTensor[B, M]``.
            strict: if False, keys of ``inputs`` that are not modalities (e.g. a whole batch dict) are ignored.
            elbo: return ``self.elbo(inputs, present, generator=generator)`` (the loss terms) instead: training goes
                through ``forward`` so that a ``DistributedDataParallel`` wrapper synchronises the gradients.
            generator: RNG of the ELBO's random draws (``elbo=True`` only).

        Returns:
            name -> ``Tensor[B, *shape]`` for every modality, observed rows unchanged; with ``elbo=True`` the dict of
            loss terms of the subclass's ``elbo``.
        """
        if elbo:
            loss = getattr(self, "elbo", None)
            if not callable(loss):
                raise ValueError(f"{type(self).__name__} has no `elbo(inputs, present)`: it cannot be trained so.")
            return loss(inputs, present, generator=generator)
        tensors, present_b = check_recovery_inputs(
            inputs, present, self.modalities, self.modality_shapes, strict=strict, allow_nonfinite=self.nan_tolerant
        )
        generated = self.generate(tensors, present_b)
        return merge_recovered(tensors, present_b, generated, self.modalities, self.modality_shapes)
