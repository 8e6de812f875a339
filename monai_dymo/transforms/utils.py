"""Shared helpers of the modality transforms: reason strings, placeholders, the presence vector and datalist checks.

The per-sample bookkeeping follows one rule: the reasons dictionary (``sample["modality_reasons"]``, modality name ->
reason string) is the source of truth, and the presence vector (``sample["present"]``, ``BoolTensor[M]``) is derived
from it (True exactly where the reason is ``"observed"``). Every transform that changes a reason calls
:func:`update_presence`, which also writes the per-patient error flag (``""`` when at least one modality is observed
or some modality is still pending, ``"no modality observed: ..."`` otherwise) so that the inferer can report the
patient instead of crashing on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.data.meta_tensor import MetaTensor
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.presence import attach_modality_names

__all__ = [
    "PLACEHOLDER_META_KEY",
    "REASON_META_KEY",
    "format_reason",
    "reason_prefix",
    "is_observed",
    "is_missing_path",
    "make_placeholder",
    "resized_placeholder",
    "placeholder_like",
    "is_placeholder",
    "get_patient_id",
    "resolve_modality_order",
    "update_presence",
    "check_datalist",
]

logger = logging.getLogger("monai_dymo.transforms")

PLACEHOLDER_META_KEY = "dymo_placeholder"
"""Meta key of every modality ``MetaTensor``: True for a placeholder (zeros standing for a missing modality)."""
REASON_META_KEY = "dymo_reason"
"""Meta key of every modality ``MetaTensor``: the reason string of that modality."""


def format_reason(reason: Reason | str, details: str | None = None) -> str:
    """Reason string ``"<prefix>"`` or ``"<prefix>: <details>"`` with a :class:`~monai_dymo.keys.Reason` prefix."""
    prefix = Reason(reason).value
    return f"{prefix}: {details}" if details else prefix


def reason_prefix(reason: str) -> Reason:
    """The :class:`~monai_dymo.keys.Reason` a reason string starts with (``ValueError`` for a foreign string)."""
    head = str(reason).split(":", 1)[0].strip()
    try:
        return Reason(head)
    except ValueError as e:
        known = [r.value for r in Reason]
        raise ValueError(f"not a monai_dymo reason string: {reason!r} (known prefixes: {known})") from e


def is_observed(reason: str | None) -> bool:
    """True when ``reason`` says the modality is observed."""
    return reason is not None and str(reason) == Reason.OBSERVED.value


def is_missing_path(value: Any) -> bool:
    """True for a value meaning "no file given": None, NaN (a blank CSV cell), an empty/blank string or sequence."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, (str, Path)):
        return str(value).strip() == ""
    if isinstance(value, (list, tuple)):
        return len(value) == 0 or all(is_missing_path(v) for v in value)
    return False


def make_placeholder(
    shape: Sequence[int],
    reason: str,
    affine: torch.Tensor | np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    filename: str = "",
) -> MetaTensor:
    """Zeros of ``shape`` (channel first, e.g. ``[C, H, W, D]``) as a ``MetaTensor`` marked as a placeholder.

    The meta dict holds only keys that every loaded modality also has (``affine``, ``filename_or_obj``,
    :data:`PLACEHOLDER_META_KEY`, :data:`REASON_META_KEY`), so that MONAI's collation (which keeps the meta keys
    common to a batch) works across patients with different missing patterns.
    """
    meta = {"filename_or_obj": str(filename), PLACEHOLDER_META_KEY: True, REASON_META_KEY: str(reason)}
    out = MetaTensor(torch.zeros(tuple(int(s) for s in shape), dtype=dtype), meta=meta)
    if affine is not None:
        out.affine = torch.as_tensor(affine, dtype=torch.float64).clone()
    return out


def resized_placeholder(
    img: torch.Tensor, size: Sequence[int], affine: torch.Tensor | np.ndarray | None = None
) -> MetaTensor:
    """A placeholder of spatial ``size`` (``[C, *size]``) in place of the placeholder ``img``, keeping its channels, dtype
    and missingness reason, with ``affine`` (none: identity)."""
    reason = img.meta.get(REASON_META_KEY, "") if isinstance(img, MetaTensor) else ""
    return make_placeholder((img.shape[0], *size), reason, affine=affine, dtype=img.dtype)


def placeholder_like(img: torch.Tensor, reason: str, fill_value: float = 0.0) -> MetaTensor:
    """``fill_value`` (zeros; NaN for clinical fields) with the shape, dtype and meta (affine, ...) of ``img``, marked as
    a placeholder with ``reason``."""
    meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
    meta[PLACEHOLDER_META_KEY] = True
    meta[REASON_META_KEY] = str(reason)
    meta.setdefault("filename_or_obj", "")
    out = MetaTensor(torch.full_like(torch.as_tensor(img), fill_value), meta=meta)
    if isinstance(img, MetaTensor):
        out.affine = img.affine.clone()
    return out


def is_placeholder(img: Any) -> bool:
    """True for a tensor built by :func:`make_placeholder` / :func:`placeholder_like`."""
    return isinstance(img, MetaTensor) and bool(img.meta.get(PLACEHOLDER_META_KEY, False))


def get_patient_id(data: Mapping[Hashable, Any], patient_id_key: str | None = DyMoKeys.PATIENT_ID) -> str:
    """Patient identifier of a sample for messages: ``data[patient_id_key]``, else ``data["index"]``, else ``"?"``."""
    if patient_id_key is not None and patient_id_key in data:
        return str(data[patient_id_key])
    if "index" in data:
        return f"index {data['index']}"
    return "?"


def resolve_modality_order(
    keys: Sequence[Hashable], modalities: Sequence[Hashable] | None, owner: str
) -> tuple[str, ...] | None:
    """Validate a transform's ``keys`` against the configured modality order (``None`` = order of the reasons dict).

    Raises:
        ValueError: a key that is not one of ``modalities`` (unknown modality key) or duplicated names.
    """
    if modalities is None:
        return None
    order = tuple(str(m) for m in modalities)
    if len(set(order)) != len(order):
        raise ValueError(f"{owner}: duplicated modality names in modalities={list(order)}.")
    unknown = [str(k) for k in keys if str(k) not in order]
    if unknown:
        raise ValueError(f"{owner}: unknown modality key(s) {unknown}; configured modalities are {list(order)}.")
    return order


def update_presence(
    data: dict,
    reasons: Mapping[str, str],
    modalities: Sequence[str] | None,
    present_key: str = DyMoKeys.PRESENT,
    reasons_key: str = DyMoKeys.REASONS,
    error_key: str | None = DyMoKeys.ERROR,
) -> dict:
    """Write ``reasons`` and the derived presence vector (and error flag) into ``data`` (in place; returns ``data``).

    Args:
        data: the sample dictionary.
        reasons: modality name -> reason string (a new dict; never mutate the caller's).
        modalities: order of ``data[present_key]``; ``None`` uses the order of ``reasons`` (the order in which the
            pipeline's transforms first registered the modalities). The mask is a bool ``MetaTensor`` that carries
            this order (:mod:`monai_dymo.presence`), so consumers align it by name.
        present_key, reasons_key: output keys.
        error_key: key of the error flag, ``None`` to skip it. ``""`` unless every modality has a reason and none is
            observed, then ``"no modality observed: name=<reason prefix>, ..."``.
    """
    order = list(reasons) if modalities is None else list(modalities)
    data[reasons_key] = dict(reasons)
    present = torch.tensor([is_observed(reasons.get(m)) for m in order], dtype=torch.bool)
    data[present_key] = attach_modality_names(present, order)  # the names travel with the mask
    if error_key is not None:
        pending = any(m not in reasons for m in order)
        if order and not pending and not bool(data[present_key].any()):
            summary = ", ".join(f"{m}={reason_prefix(reasons[m]).value}" for m in order)
            data[error_key] = f"no modality observed: {summary}"
        else:
            data[error_key] = ""
    return data


def check_datalist(
    datalist: Sequence[Mapping[str, Any]],
    modalities: Sequence[str],
    required: Sequence[str] = (),
    clinical_fields: Sequence[str] = (),
    check_files: bool = True,
    base_dir: str | Path | None = None,
    patient_id_key: str = DyMoKeys.PATIENT_ID,
) -> dict[str, int]:
    """Check a datalist against the configuration before training or inference; returns ``{modality: n_available}``.

    Individual missing files are fine (the loader marks them missing); what is checked is the configuration:

    - every configured modality key occurs in at least one entry (otherwise it is an unknown / misspelt key);
    - every ``required`` modality is available (non-empty path, and existing file or folder if ``check_files``) for
      at least one patient;
    - every clinical field is a key of every entry (a field not in the table).

    Raises:
        ValueError: naming the patient (first entry for dataset-wide problems) and the key.
    """
    if len(datalist) == 0:
        raise ValueError("check_datalist: the datalist is empty.")
    unknown_required = [r for r in required if r not in modalities]
    if unknown_required:
        raise ValueError(
            f"check_datalist: required modality {unknown_required} not among modalities {list(modalities)}."
        )
    first_id = get_patient_id(datalist[0], patient_id_key)
    counts: dict[str, int] = {}
    for m in modalities:
        if not any(m in entry for entry in datalist):
            raise ValueError(
                f"check_datalist: modality key {m!r} is in no datalist entry (unknown modality key?); "
                f"patient {first_id!r} has keys {sorted(map(str, datalist[0].keys()))}."
            )
        n = 0
        for entry in datalist:
            value = entry.get(m)
            if is_missing_path(value):
                continue
            if check_files and isinstance(value, (str, Path)):
                path = Path(value)
                if base_dir is not None and not path.is_absolute():
                    path = Path(base_dir) / path
                if not path.exists():
                    continue
            n += 1
        counts[m] = n
    for r in required:
        if counts[r] == 0:
            raise ValueError(
                f"check_datalist: required modality {r!r} is missing for every patient "
                f"(e.g. patient {first_id!r}: {datalist[0].get(r)!r})."
            )
    for i, entry in enumerate(datalist):
        for f in clinical_fields:
            if f not in entry:
                pid = get_patient_id(entry, patient_id_key)
                pid = f"index {i}" if pid == "?" else pid
                raise ValueError(f"check_datalist: clinical field {f!r} is not in the table for patient {pid!r}.")
    return counts
