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

from ..transforms.lesion_crop import FOREGROUND_GUIDE

__all__ = [
    "MODALITY_STATUSES",
    "modality_status",
    "modality_decision",
    "report_modalities",
    "clinical_groups",
    "patient_priority",
    "accuracy_split",
    "format_reward",
    "class_name",
    "with_class_names",
    "report_summary",
    "summary_line",
    "region_of_interest_text",
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


def class_name(index: Any, classes: Sequence[Any] | None = None) -> str | None:
    """The class name of a class index (``classes[index]``); the index as text when there are no (or too few) names,
    ``None`` for no index (no label, or a patient that was not processed)."""
    index = label_value(index)
    if index is None:
        return None
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    if classes is not None and 0 <= i < len(classes) and float(index) == i:
        return str(classes[i])
    return str(index)


def with_class_names(
    records: Sequence[Mapping[str, Any]], classes: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``label_name`` and ``prediction_name`` (see :func:`class_name`) beside ``label`` and
    ``prediction``, and ``alone_names`` beside ``alone`` (each observed modality alone); a name a record already
    carries is kept."""
    out = []
    for rec in records:
        r = dict(rec)
        if r.get("label_name") is None:
            r["label_name"] = class_name(r.get("label"), classes)
        if r.get("prediction_name") is None:
            r["prediction_name"] = None if r.get("error") else class_name(r.get("prediction"), classes)
        if r.get("alone") and r.get("alone_names") is None:
            r["alone_names"] = {m: class_name(c, classes) for m, c in r["alone"].items()}
        out.append(r)
    return out


#: the per-modality counts of :func:`report_summary`.
SUMMARY_COUNTS = ("observed", "recovered", "accepted", "rejected", "unused", "missing")


def report_summary(
    records: Sequence[Mapping[str, Any]],
    modalities: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The cohort figures of a report (the JSON's ``summary`` block, the printed summary line and the HTML cards).

    Returns ``{"patients", "processed", "errors", "labelled", "correct", "accuracy" (% of the labelled, processed
    patients; ``None`` without labels), "accuracy_by_use" ({"accepted something" / "observed only": %}),
    "used_recovered", "had_rejection", "modalities": {modality: {"observed", "recovered", "accepted", "rejected",
    "unused", "missing"}}}`` followed by the items of ``extra`` (blocks added by other code, e.g. a referral summary;
    an ``extra`` key never replaces one of the keys above).
    """
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    n = len(records)
    n_err = sum(bool(r.get("error")) for r in records)
    split = {g: (c, k) for g, c, k in accuracy_split(records)}
    correct, labelled = split.get("all", (0, 0))
    counts = {m: dict.fromkeys(SUMMARY_COUNTS, 0) for m in modalities}
    for rec in records:
        for m in modalities:
            s = modality_status(rec, m)
            counts[m][s] += 1
            if s in ("accepted", "rejected", "unused"):
                counts[m]["recovered"] += 1
    summary: dict[str, Any] = {
        "patients": n,
        "processed": n - n_err,
        "errors": n_err,
        "labelled": labelled,
        "correct": correct if labelled else None,
        "accuracy": round(100.0 * correct / labelled, 2) if labelled else None,
        "accuracy_by_use": {
            g: round(100.0 * c / k, 2) if k else None for g, (c, k) in split.items() if g != "all"
        },
        "used_recovered": sum(bool(r.get("accepted")) and not r.get("error") for r in records),
        "had_rejection": sum(bool(r.get("rejected")) and not r.get("error") for r in records),
        "modalities": counts,
    }
    for k, v in (extra or {}).items():
        if k in summary:
            raise ValueError(f"summary block {k!r} would replace a figure of the report summary.")
        summary[str(k)] = v
    return summary


def summary_line(summary: Mapping[str, Any], where: str | None = None) -> str:
    """One line of the cohort figures of :func:`report_summary` (printed at the end of an inference / evaluate run)."""
    parts = [f"{summary['patients']} patients"]
    if summary.get("errors"):
        parts[0] += f" ({summary['errors']} not processed)"
    if summary.get("accuracy") is not None:
        parts.append(f"accuracy {summary['accuracy']:.2f} % ({summary['correct']} of {summary['labelled']} labelled)")
    else:
        parts.append("no labels (no accuracy)")
    mods = summary.get("modalities") or {}
    if mods:
        parts.append(
            "per modality observed / accepted / rejected: "
            + ", ".join(f"{m} {c['observed']}/{c['accepted']}/{c['rejected']}" for m, c in mods.items())
        )
    line = "DyMo summary: " + "; ".join(parts)
    return line + (f"; report: {where}" if where else "")


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


def region_of_interest_text(guide: str | None) -> str | None:
    """The ``region_of_interest`` column in words, from the record's ``roi_guide`` (None: no region of interest)."""
    if not guide:
        return None
    if guide == FOREGROUND_GUIDE:
        return "centre of the scanned volume: no guide sequence observed, the lesion was not located"
    return f"around the lesion found in {guide}"
