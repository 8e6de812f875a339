"""Cohort figures of a DyMo report: per-modality counts, accuracy split, the summary block and its one-line form."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .records import MODALITY_STATUSES, is_correct, label_value, modality_status, report_modalities

__all__ = [
    "SUMMARY_COUNTS",
    "accuracy_split",
    "status_counts",
    "single_modality_summary",
    "report_summary",
    "summary_line",
]

#: the per-modality counts of :func:`report_summary`.
SUMMARY_COUNTS = ("observed", "recovered", "accepted", "rejected", "unused", "missing")


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


def status_counts(records: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> dict[str, list[int]]:
    """``{status: [number of patients per modality]}`` for every status of
    :data:`~monai_dymo.report.records.MODALITY_STATUSES`."""
    counts = {s: [0] * len(modalities) for s in MODALITY_STATUSES}
    for rec in records:
        for i, m in enumerate(modalities):
            counts[modality_status(rec, m)][i] += 1
    return counts


def single_modality_summary(
    records: Sequence[Mapping[str, Any]], modalities: Sequence[str]
) -> dict[str, dict[str, Any]] | None:
    """``{modality: {"patients": labelled patients with it observed, "accuracy": % or None}}`` of the records'
    ``alone`` predictions (each observed modality alone); None when the records carry none or have no labels."""
    if not any(r.get("alone") for r in records):
        return None
    out: dict[str, dict[str, Any]] = {}
    labelled = False
    for m in modalities:
        judged = []
        for r in records:
            pred = (r.get("alone") or {}).get(m)
            label = label_value(r.get("label"))
            if pred is None or label is None:
                continue
            judged.append(int(pred) == int(label))
        labelled = labelled or bool(judged)
        out[m] = {"patients": len(judged), "accuracy": round(100.0 * sum(judged) / len(judged), 2) if judged else None}
    return out if labelled else None


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
        "accuracy_by_use": {g: round(100.0 * c / k, 2) if k else None for g, (c, k) in split.items() if g != "all"},
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
        dymo = (summary.get("metrics") or {}).get("dymo") or {}
        if dymo.get("num_patients"):
            ci = (dymo.get("ci95") or {}).get("balanced_accuracy")
            parts.append(f"balanced accuracy {100 * dymo['balanced_accuracy']:.1f} %"
                         + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
                         + f", chance (majority class) {100 * dymo['chance']:.1f} %")
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
