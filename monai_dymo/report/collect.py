"""Report records from an evaluation engine's output and batch, without ignite.

An iteration's output is the batched dictionary of :class:`~monai_dymo.engines.evaluator.DyMoEvaluator` (``{selection
key: [B records], "label": Tensor[B] or [B, C], inputs key: {modality: Tensor[B, ...]}}``) or its decollated list of
per-patient dictionaries. The batch (batched dictionary or decollated list) may add each patient's clinical field mask,
field notes and region-of-interest guide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai.utils.enums import CommonKeys

from ..keys import DyMoKeys
from .records import label_value

__all__ = ["OutputKeys", "records_and_inputs", "in_datalist_order"]


@dataclass(frozen=True)
class OutputKeys:
    """Where the report finds its data in an engine output / batch.

    Attributes:
        selection: the per-patient selection records (output).
        label: the labels, class indices or one-hot vectors (output).
        inputs: ``{modality: Tensor[B, ...]}`` the inputs the network saw, for pictures (output).
        field_mask: ``{group: BoolTensor[B, F]}`` the clinical fields present (batch).
        field_notes: ``{group: [B notes]}`` what the table held in each missing field (batch).
    """

    selection: str = DyMoKeys.SELECTION
    label: str = CommonKeys.LABEL
    inputs: str = DyMoKeys.INPUTS
    field_mask: str = DyMoKeys.FIELD_MASK
    field_notes: str = DyMoKeys.FIELD_NOTES


def _is_list(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def _split_output(output: Any, keys: OutputKeys) -> tuple[list[Mapping[str, Any]], list[Any], list[Any]]:
    """``(records, labels, inputs)``, one entry per patient, from one iteration's output."""
    if isinstance(output, Mapping):
        if keys.selection not in output:
            raise ValueError(f"engine output has no {keys.selection!r} records (keys: {sorted(output)}).")
        records = list(output[keys.selection])
        labels = output.get(keys.label)
        if labels is None:
            labels = [None] * len(records)
        elif isinstance(labels, torch.Tensor) and labels.ndim == 0:
            labels = [labels] * len(records)
        if len(labels) != len(records):
            raise ValueError(f"{len(labels)} labels for {len(records)} selection records.")
        inputs = output.get(keys.inputs)
        if isinstance(inputs, Mapping):
            per_patient = [{m: v[b] for m, v in inputs.items()} for b in range(len(records))]
        else:
            per_patient = [None] * len(records)
        return records, list(labels), per_patient
    if _is_list(output):
        items = [o for o in output if isinstance(o, Mapping)]
        if len(items) != len(output) or any(keys.selection not in o for o in items):
            raise ValueError(f"every decollated output item needs a {keys.selection!r} record.")
        return (
            [o[keys.selection] for o in items],
            [o.get(keys.label) for o in items],
            [o.get(keys.inputs) for o in items],
        )
    raise ValueError(f"cannot read selection records from output of type {type(output).__name__}.")


def _per_patient(batch: Any, key: str, n: int) -> list[Any] | None:
    """``batch[key]`` of each of the ``n`` patients of a decollated batch (a list of dicts), or None."""
    if _is_list(batch):
        values = [d.get(key) if isinstance(d, Mapping) else None for d in batch]
        if len(values) == n:
            return values
    return None


def _field_masks(batch: Any, key: str, n: int) -> list[Mapping[str, Any] | None]:
    """Per-patient ``{group: BoolTensor[F]}``, or Nones."""
    if isinstance(batch, Mapping):
        masks = batch.get(key)
        if not isinstance(masks, Mapping) or not masks:
            return [None] * n
        return [{g: v[b] for g, v in masks.items() if isinstance(v, torch.Tensor) and v.ndim == 2} for b in range(n)]
    return _per_patient(batch, key, n) or [None] * n


def _field_notes(batch: Any, key: str, n: int) -> list[Mapping[str, str] | None]:
    """Per-patient ``{group: note}``, or Nones."""
    if isinstance(batch, Mapping):
        notes = batch.get(key)
        if not isinstance(notes, Mapping) or not notes:
            return [None] * n
        lists = {g: v for g, v in notes.items() if _is_list(v)}
        return [{str(g): str(v[b]) for g, v in lists.items() if len(v) == n} for b in range(n)]
    return _per_patient(batch, key, n) or [None] * n


def _roi_guides(batch: Any, n: int) -> list[str | None]:
    """Per-patient ``roi_guide``, or Nones."""
    key = str(DyMoKeys.ROI_GUIDE)
    if isinstance(batch, Mapping):
        guides = batch.get(key)
        if _is_list(guides) and len(guides) == n:
            return [str(g) for g in guides]
    elif _is_list(batch) and len(batch) == n:
        return [str(d[key]) if isinstance(d, Mapping) and d.get(key) else None for d in batch]
    return [None] * n


def _missing_fields(
    record: Mapping[str, Any], masks: Mapping[str, Any], clinical_fields: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``({group: [missing field names]}, {group: number of fields})`` from one patient's field masks."""
    missing, sizes = {}, {}
    for group, mask in masks.items():
        flags = [bool(v) for v in torch.as_tensor(mask).reshape(-1).tolist()]
        fields = clinical_fields.get(str(group))
        if fields is None:
            fields = [f"field {i + 1}" for i in range(len(flags))]
        elif len(fields) != len(flags):
            raise ValueError(
                f"patient {record.get('patient_id')!r}, clinical group {group!r}: field mask has {len(flags)} "
                f"fields, clinical_fields names {len(fields)}: {list(fields)}."
            )
        missing[str(group)] = [f for f, ok in zip(fields, flags) if not ok]
        sizes[str(group)] = len(flags)
    return missing, sizes


def records_and_inputs(
    output: Any,
    batch: Any = None,
    keys: OutputKeys | None = None,
    clinical_fields: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[dict[str, Any], Mapping[str, Any] | None]]:
    """``[(record, inputs)]`` per patient of one iteration.

    Each record is a copy of the output's, with what is known added where it does not carry it yet: ``label`` (a
    class index), from the batch's field masks ``missing_fields`` (``{group: [names of the missing fields]}``) and
    ``num_fields``, ``field_notes`` (``{group: "ldh = -999, age = blank"}``) and ``roi_guide``. ``inputs`` is the
    patient's ``{modality: Tensor[C, *spatial]}`` when the output holds the inputs, else None.

    Args:
        output: the iteration's output (batched dictionary or decollated list).
        batch: the iteration's batch (batched dictionary or decollated list), or None.
        keys: where the data is (default :class:`OutputKeys`).
        clinical_fields: ``{group: [field names in layout order]}`` to name the missing fields (default: ``"field
            1"``, ``"field 2"``, ...).
    """
    keys = keys or OutputKeys()
    clinical_fields = clinical_fields or {}
    records, labels, inputs = _split_output(output, keys)
    n = len(records)
    masks = _field_masks(batch, keys.field_mask, n) if batch is not None else [None] * n
    notes = _field_notes(batch, keys.field_notes, n) if batch is not None else [None] * n
    guides = _roi_guides(batch, n)
    out = []
    for rec, label, x, mask, note, guide in zip(records, labels, inputs, masks, notes, guides):
        rec = dict(rec)
        if label is not None and rec.get("label") is None:
            rec["label"] = label_value(label)
        if mask and rec.get("missing_fields") is None:
            rec["missing_fields"], rec["num_fields"] = _missing_fields(rec, mask, clinical_fields)
        if note and rec.get("field_notes") is None:
            rec["field_notes"] = {str(g): str(v) for g, v in note.items()}
        if guide and rec.get("roi_guide") is None:
            rec["roi_guide"] = guide
        out.append((rec, x))
    return out


def in_datalist_order(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records sorted by their datalist ``index``, a repeated index (e.g. samples repeated by a padding
    ``DistributedSampler``) kept once; unchanged when some record carries no index."""
    key = str(DyMoKeys.INDEX)
    if not records or any(r.get(key) is None for r in records):
        return list(records)
    merged: dict[int, dict[str, Any]] = {}
    for rec in records:
        merged.setdefault(int(rec[key]), rec)
    return [merged[i] for i in sorted(merged)]
