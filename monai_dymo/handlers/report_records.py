"""Reading DyMo selection records for the reports: per-modality status and decision, cohort statistics.

Records follow the shared per-patient record format of
:meth:`monai_dymo.selection.SelectionResult.to_records` (``patient_id``, ``observed``, ``recovered``, ``selected``,
``accepted``, ``rejected``, ``unused``, ``quality``, ``log_ics``, ``ics``, ``prediction``, ``probability``, ``steps``,
``reasons``, ``error``, ``rewards``, ``trajectory``), optionally with ``label``, ``missing_fields`` and ``num_fields``
added by :class:`~monai_dymo.handlers.SelectionReportWriter`. Keys starting with ``_`` are private to the writer (e.g.
``_pictures``) and never written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "MODALITY_STATUSES",
    "modality_status",
    "modality_decision",
    "report_modalities",
    "clinical_groups",
    "patient_priority",
    "accuracy_split",
    "format_reward",
]

#: per-modality status values of the report, in plotting order: ``observed`` (measured), ``accepted`` / ``rejected`` /
#: ``unused`` (recovered, then accepted / rejected / neither by the selection), ``missing`` (the patient could not be
#: processed, e.g. nothing observed).
MODALITY_STATUSES = ("observed", "accepted", "rejected", "unused", "missing")


def names(entries: Iterable[Any]) -> list[str]:
    """Modality names of a record list (entries are names or ``{"modality": ...}`` dicts)."""
    return [e["modality"] if isinstance(e, Mapping) else str(e) for e in entries or []]


def modality_status(record: Mapping[str, Any], modality: str) -> str:
    """One of :data:`MODALITY_STATUSES`: ``missing`` = neither observed nor a candidate (e.g. a failed patient)."""
    if modality in names(record.get("observed")):
        return "observed"
    if modality in names(record.get("accepted")):
        return "accepted"
    if modality in names(record.get("rejected")):
        return "rejected"
    if modality in names(record.get("unused")):
        return "unused"
    return "missing"


def report_modalities(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modality names in order, taken from the records' ``reasons`` (all modalities, in order) or name lists."""
    out: list[str] = []
    seen: set[str] = set()
    keys = ("observed", "recovered", "selected", "unused", "accepted", "rejected")
    for rec in records:
        for name in list(rec.get("reasons") or {}) + [n for key in keys for n in names(rec.get(key))]:
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def clinical_groups(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Clinical groups with field-level information (``missing_fields``) in any record, in order of appearance."""
    out: list[str] = []
    for rec in records:
        for g in rec.get("missing_fields") or {}:
            if g not in out:
                out.append(g)
    return out


def format_reward(r: float | None) -> str:
    """A reward for people: signed, 4 significant digits (``"n/a"`` when unknown)."""
    return "n/a" if r is None or not math.isfinite(r) else f"{r:+.4g}"


def _entry(record: Mapping[str, Any], key: str, modality: str) -> Mapping[str, Any] | None:
    for e in record.get(key) or []:
        if isinstance(e, Mapping) and e.get("modality") == modality:
            return e
    return None


def modality_decision(record: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """What happened to one modality of one patient, and why.

    Returns ``{"status", "step", "reward", "rewards", "why"}``: ``step`` / ``reward`` of the decision (acceptance,
    rejection, or for ``unused`` the last round it was scored), ``rewards`` the reward at every round it was a
    candidate, ``why`` a plain-language sentence (for a recovered modality: each earlier round where its reward was
    positive but another candidate's was larger, then the decision: accepted as the largest positive reward, rejected
    for a reward < 0, or not used because no reward was > 0 when the selection stopped).
    """
    status = modality_status(record, modality)
    rewards = list((record.get("rewards") or {}).get(modality) or [])
    out: dict[str, Any] = {"status": status, "step": None, "reward": None, "rewards": rewards, "why": ""}
    if status == "observed":
        out["why"] = "observed: used as given"
        return out
    if status == "missing":
        err = record.get("error")
        out["why"] = f"not usable: the patient was not processed ({err})" if err else "not in the selection record"
        return out
    entry = _entry(record, status, modality) if status in ("accepted", "rejected") else None
    step = entry.get("step") if entry is not None else (len(rewards) - 1 if rewards else None)
    reward = entry.get("reward") if entry is not None else (rewards[-1] if rewards else None)
    if reward is None and step is not None and 0 <= step < len(rewards):
        reward = rewards[step]
    out["step"], out["reward"] = step, reward
    best_at = {a.get("step"): a for a in record.get("accepted") or [] if isinstance(a, Mapping)}
    parts = []
    last = step if step is not None else len(rewards)
    for k, r in enumerate(rewards[:last]):
        if r is None:
            continue
        best = best_at.get(k)
        if best is not None and best.get("modality") != modality:
            parts.append(
                f"step {k}: reward {format_reward(r)}, "
                + ("positive but " if r > 0 else "")
                + f"not the best candidate ({best['modality']} {format_reward(best.get('reward'))} was accepted)"
            )
    if status == "accepted":
        parts.append(f"accepted at step {step}: reward {format_reward(reward)} > 0, the largest of the candidates")
    elif status == "rejected":
        parts.append(
            f"rejected at step {step}: reward {format_reward(reward)} < 0 "
            "(adding it lowered the calibrated confidence)"
        )
    else:
        if step is not None:
            parts.append(
                f"not used: at step {step} its reward was {format_reward(reward)} (not > 0) and no candidate had a "
                "positive reward, so the selection stopped"
            )
        else:
            parts.append("not used: no candidate had a positive reward when the selection stopped")
    out["why"] = "; ".join(parts)
    return out


def patient_priority(record: Mapping[str, Any]) -> int:
    """Which patients get their own report page first: 3 = error, 2 = a recovered modality rejected, 1 = one accepted,
    0 = observed only."""
    if record.get("error"):
        return 3
    if record.get("rejected"):
        return 2
    if record.get("accepted"):
        return 1
    return 0


def label_value(label: Any) -> Any:
    """Class index from a label given as an int, a scalar tensor or a one-hot / probability vector."""
    if label is None:
        return None
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu()
        if type(label) is not torch.Tensor:
            label = label.as_subclass(torch.Tensor)
        if label.numel() == 1:
            v = label.item()
            return int(v) if float(v).is_integer() else v
        return int(label.reshape(-1).argmax())
    if isinstance(label, float) and label.is_integer():
        return int(label)
    return plain(label)


def is_correct(record: Mapping[str, Any]) -> bool | None:
    """Whether the prediction equals the label (``None`` without a label or a prediction)."""
    label, pred = label_value(record.get("label")), record.get("prediction")
    if label is None or pred is None or record.get("error"):
        return None
    try:
        return int(pred) == int(label)
    except (TypeError, ValueError):
        return str(pred) == str(label)


def accuracy_split(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
    """``[(group, correct, total)]`` over the labelled, processed patients: all of them, those where DyMo accepted at
    least one recovered modality, those where it used the observed modalities only (nothing missing, or every
    recovery declined). Empty when no patient has a label."""
    groups = {"all": [0, 0], "accepted something": [0, 0], "observed only": [0, 0]}
    for rec in records:
        ok = is_correct(rec)
        if ok is None:
            continue
        for g in ("all", "accepted something" if rec.get("accepted") else "observed only"):
            groups[g][0] += int(ok)
            groups[g][1] += 1
    if groups["all"][1] == 0:
        return []
    return [(g, c, n) for g, (c, n) in groups.items()]


def plain(v: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars -> Python, non-finite floats -> None, private ``_`` keys dropped."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        if type(v) is not torch.Tensor:
            v = v.as_subclass(torch.Tensor)
        v = v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)) and type(v).__module__ == "numpy":
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v
