"""The report's tables: the CSV (one row per patient), the JSON (summary block + records), the data dictionary.

List columns of the CSV (``observed``, ``accepted``, ``<m>_rewards``, ``<group>_missing_fields``, ...) hold their
items joined by ``;`` and the word ``none`` for an empty list (so that ``pandas.read_csv`` reads them back as text,
not NaN); :func:`read_report_csv` reads the CSV back with those columns as Python lists. The data dictionary
(:func:`write_report_dictionary`, ``dymo_report_columns.csv`` beside the report) describes every column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from .._console import bar_disabled
from .records import (
    class_name,
    clinical_groups,
    is_correct,
    label_value,
    modality_decision,
    names,
    plain,
    region_of_interest_text,
    report_modalities,
)
from .summary import report_summary
from .trust import TRUST_COLUMNS, trust_row

__all__ = [
    "LIST_SEPARATOR",
    "EMPTY_LIST",
    "LIST_COLUMNS",
    "report_columns",
    "report_rows",
    "write_report_csv",
    "read_report_csv",
    "write_report_json",
    "read_report",
    "write_report_dictionary",
]

#: separator of the items of a CSV list column.
LIST_SEPARATOR = ";"
#: what a CSV list column holds for an empty list (text, so that pandas does not read it as NaN).
EMPTY_LIST = "none"
#: the per-patient list columns (besides ``<m>_rewards`` and ``<group>_missing_fields``).
LIST_COLUMNS = ("observed", "recovered", "selected", "accepted", "rejected", "unused")


def _join(items: Sequence[Any]) -> str:
    return LIST_SEPARATOR.join(str(i) for i in items) if items else EMPTY_LIST


def _fmt_float(v: Any) -> str:
    return "" if v is None else format(float(v), ".6g")


def report_columns(modalities: Sequence[str], groups: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """``[(column, type, description)]`` of the CSV report for these modalities and clinical groups (the data
    dictionary; ``type`` is ``int`` / ``float`` / ``text`` / ``list``)."""
    lst = f"list: items joined by '{LIST_SEPARATOR}', '{EMPTY_LIST}' when empty"
    cols = [
        ("patient_id", "text", "patient id from the datalist (or its pseudonym when the report is pseudonymised: "
         "16 hex digits of HMAC-SHA256 with the user's key); never a DICOM header value"),
        ("label", "int", "true class index, when the data had labels (blank otherwise)"),
        ("label_name", "text", "name of the true class (the cohort's classes; the index as text without names)"),
        ("prediction", "int", "predicted class index on the modalities DyMo used (blank if the patient was not "
         "processed)"),
        ("prediction_name", "text", "name of the predicted class"),
        ("probability", "float", "calibrated probability of the predicted class: softmax(logits / T), T the "
         "probability temperature fitted with the calibration on labelled held-out patients (1: the raw softmax)"),
        ("correct", "int", "1 if prediction == label, 0 if not, blank without a label"),
        ("quality", "float", "quality q of the final set: the largest class probability of the projection against "
         "the class prototypes (0-1, higher = more confident)"),
        ("ics", "float", "in-class Gaussian score p of the final set: how typical the projection is of the predicted "
         "class for this modality subset, from calibration (0-1, low = unusual)"),
        ("log_ics", "float", "natural log of ics (kept finite when ics underflows)"),
        ("steps", "int", "number of recovered modalities accepted (selection rounds that added one)"),
        ("calibration_fallback", "int", "1 if some score of the patient used calibration statistics pooled from "
         "smaller modality sets (too few training patients had that exact set), 0 if not"),
        ("used_recovered", "int", "1 if at least one recovered modality was accepted, 0 if only observed ones were "
         "used, blank if not processed"),
        ("observed", lst, "modalities measured for this patient"),
        ("recovered", lst, "missing modalities the recovery network filled in (the candidates)"),
        ("selected", lst, "modalities the prediction used: observed + accepted"),
        ("accepted", lst, "recovered modalities accepted, in order of acceptance"),
        ("rejected", lst, "recovered modalities rejected (reward < 0)"),
        ("unused", lst, "recovered modalities neither accepted nor rejected (no positive reward when selection "
         "stopped)"),
    ]
    for m in modalities:
        cols += [
            (f"{m}_status", "text", f"{m}: observed / accepted / rejected / unused (recovered, neither) / missing "
             "(patient not processed)"),
            (f"{m}_reason", "text", f"{m}: why it was present or missing in the data (e.g. 'file not found: ...')"),
            (f"{m}_reward", "float", f"{m}: reward at the step it was decided (accepted / rejected / last scored); "
             "reward = q(S + m) * G - q(S), G <= 1 the calibration factor; blank if observed"),
            (f"{m}_rewards", lst, f"{m}: its reward at every selection step it was a candidate (step 0 first)"),
            (f"{m}_decision", "text", f"{m}: why it was used or not, in words (reward > 0 and the best candidate: "
             "accepted; reward < 0: rejected; positive but another candidate better: kept for the next step)"),
            (f"{m}_alone", "text", f"{m}: the class the fusion network gives from this modality ALONE where it was "
             "observed (blank where missing; never used for the prediction): an encoder whose column is no better "
             "than chance has learnt nothing its modality could add"),
        ]
    for g in groups:
        cols += [
            (f"{g}_missing_fields", lst, f"clinical group {g}: fields that were blank or held a missing-value "
             "sentinel (e.g. -999, 'NA')"),
            (f"{g}_num_missing_fields", "int", f"clinical group {g}: how many of its fields were missing"),
            (f"{g}_missing_values", "text", f"clinical group {g}: what the table held in each missing field, "
             "'field = blank' for an empty cell, else the missing-value code written there (e.g. 'ldh = -999')"),
        ]
    cols.append(("region_of_interest", "text", "where the 3D volumes were read, when the cohort crops them to a region "
                 "of interest: around the lesion found (without labels) in a guide sequence, or around the centre of "
                 "the brain when no guide sequence was observed (the lesion may then lie outside what was read); "
                 "blank without a region of interest"))
    cols += TRUST_COLUMNS
    cols.append(("error", "text", "why the patient could not be processed at all (blank if processed)"))
    return cols


def report_rows(
    records: Sequence[Mapping[str, Any]],
    modalities: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV report as ``(columns, rows)``; one row per record (records with an ``error`` included)."""
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    groups = list(groups) if groups is not None else clinical_groups(records)
    columns = [c for c, _, _ in report_columns(modalities, groups)]
    rows = []
    for rec in tqdm(records, desc="report rows", disable=bar_disabled(progress), leave=False):
        label = label_value(rec.get("label"))
        ok = is_correct(rec)
        failed = bool(rec.get("error"))
        row: dict[str, Any] = {
            "patient_id": rec.get("patient_id"),
            "label": label,
            "label_name": rec["label_name"] if rec.get("label_name") is not None else class_name(label),
            "prediction": rec.get("prediction"),
            "prediction_name": (
                rec["prediction_name"] if rec.get("prediction_name") is not None
                else None if failed else class_name(rec.get("prediction"))
            ),
            "probability": rec.get("probability"),
            "correct": "" if ok is None else int(ok),
            "quality": rec.get("quality"),
            "ics": rec.get("ics"),
            "log_ics": rec.get("log_ics"),
            "steps": rec.get("steps"),
            "calibration_fallback": int(bool(rec.get("calibration_fallback"))),
            "used_recovered": "" if failed else int(bool(rec.get("accepted"))),
        }
        for key in LIST_COLUMNS:
            row[key] = _join(names(rec.get(key)))
        reasons = rec.get("reasons") or {}
        for m in modalities:
            d = modality_decision(rec, m)
            row[f"{m}_status"] = d["status"]
            row[f"{m}_reason"] = reasons.get(m)
            row[f"{m}_reward"] = d["reward"]
            row[f"{m}_rewards"] = _join([_fmt_float(r) if r is not None else "n/a" for r in d["rewards"]])
            row[f"{m}_decision"] = d["why"]
            alone = (rec.get("alone_names") or rec.get("alone") or {}).get(m)
            row[f"{m}_alone"] = None if alone is None else str(alone)
        missing_fields = rec.get("missing_fields") or {}
        for g in groups:
            fields = missing_fields.get(g)
            row[f"{g}_missing_fields"] = "" if fields is None else _join(fields)
            row[f"{g}_num_missing_fields"] = "" if fields is None else len(fields)
            row[f"{g}_missing_values"] = (rec.get("field_notes") or {}).get(g)
        row["region_of_interest"] = region_of_interest_text(rec.get("roi_guide"))
        row.update(trust_row(rec))
        row["error"] = rec.get("error")
        rows.append({k: ("" if v is None else plain(v)) for k, v in row.items()})
    return columns, rows


def write_report_csv(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    modalities: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = False,
) -> str:
    """Write one CSV row per patient (see :func:`report_columns` for the columns); returns the path."""
    columns, rows = report_rows(records, modalities, groups, progress=progress)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_report_csv(path: str | os.PathLike) -> Any:
    """Read a CSV report with pandas, list columns as Python lists (``none`` -> ``[]``)."""
    import pandas as pd

    df = pd.read_csv(path)
    list_cols = [c for c in df.columns if c in LIST_COLUMNS or c.endswith(("_rewards", "_missing_fields"))]
    for c in list_cols:
        df[c] = df[c].map(
            lambda v: [] if not isinstance(v, str) or v == EMPTY_LIST else v.split(LIST_SEPARATOR)
        )
    return df


def write_report_json(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    progress: bool = False,
    summary: Mapping[str, Any] | None = None,
) -> str:
    """Write ``{"summary": {...}, "patients": [...]}``: the cohort figures (``summary``, default
    :func:`~monai_dymo.report.summary.report_summary` of the records) and the records (non-finite numbers as
    ``null``), each with ``decisions``: ``{modality: {"status", "step", "reward", "rewards", "why"}}`` (see
    :func:`modality_decision`). Returns the path; :func:`read_report` reads it back."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    modalities = report_modalities(records)
    out = []
    for rec in tqdm(records, desc="report json", disable=bar_disabled(progress), leave=False):
        item = plain(rec)
        item["decisions"] = plain({m: modality_decision(rec, m) for m in modalities})
        out.append(item)
    doc = {"summary": plain(dict(summary) if summary is not None else report_summary(records, modalities)),
           "patients": out}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    return path


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON report as ``{"summary": {...}, "patients": [records]}``.

    A bare JSON list of records (a report without the summary block) is read too; its summary is then computed from
    the records with :func:`~monai_dymo.report.summary.report_summary`."""
    with open(os.fspath(path), encoding="utf-8") as f:
        doc = json.load(f)
    if isinstance(doc, list):
        return {"summary": report_summary(doc), "patients": doc}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("patients"), list):
        raise ValueError(f"{os.fspath(path)} is not a DyMo JSON report (expected {{'summary', 'patients'}} or a list).")
    return {"summary": dict(doc.get("summary") or report_summary(doc["patients"])), "patients": doc["patients"]}


#: ``(field, description)`` of the JSON report beyond the CSV columns, for the data dictionary.
JSON_FIELDS = (
    ("summary", "cohort figures: patients, processed, errors, labelled, correct, accuracy (%, null without labels), "
     "accuracy_by_use, used_recovered, had_rejection, modalities {modality: {observed, recovered, accepted, rejected, "
     "unused, missing}} (patients per status); margin, margin_source, probability_temperature and refer {alpha, "
     "delta, guarantee, per_class, threshold (null under a per-class rule), thresholds (per-class rule: {predicted "
     "class: threshold}), coverage, error_not_referred, ...} (the guarantees of the run); single_modality {modality: "
     "{patients, accuracy}} (each observed modality alone, labelled patients); with labels, metrics {dymo: {accuracy, "
     "balanced_accuracy, per_class {class: {sensitivity, precision, f1, support, auroc}}, macro_f1, auroc, "
     "confusion_matrix, chance (majority-class rate), ci95 {accuracy, balanced_accuracy, auroc}, ...}}, ece (top-label "
     "expected calibration error of the calibrated probabilities, 10 bins) and reliability [{lo, hi, count, "
     "confidence, accuracy}]"),
    ("patients", "one record per patient, with the fields below"),
    ("probabilities", "[calibrated probability of each class, by class index] (null when not processed)"),
    ("alone / alone_names", "{modality: class index / name from that modality alone, null where missing}: what each "
     "encoder reads (never used for the prediction)"),
    ("rewards", "{modality: [reward at step 0, 1, ...]} of every recovered modality, up to its decision"),
    ("trajectory", "[{step, added, quality, log_ics, ics}]: scores of the observed set (step 0, added = null) and "
     "after each accepted modality"),
    ("accepted / rejected", "[{modality, step, reward}] in order"),
    ("reasons", "{modality: why it was present or missing in the data}"),
    ("missing_fields / num_fields", "{clinical group: [missing field names]} / {group: number of fields}"),
    ("field_notes", "{clinical group: 'field = blank' or 'field = <missing-value code>' for each missing field}"),
    ("roi_guide", "what placed the region of interest the 3D volumes were cropped to: a guide sequence's name, or "
     "'foreground' (the centre of the scanned volume: no guide observed); absent without a region of interest"),
    ("decisions", "{modality: {status, step, reward, rewards, why}}: the CSV's per-modality columns"),
    ("refer / refer_threshold / refer_alpha / refer_delta / refer_guarantee / refer_per_class", "the refer flag "
     "(true / false) and its rule: referred when probability < refer_threshold, the threshold that applied to the "
     "patient (its predicted class's under a per-class rule; null: none certified, everybody referred, or no "
     "prediction); refer_guarantee 'pac' (high probability) or 'expected' (in expectation); <prefix>_trust.json "
     "summarises the run"),
    ("probability_temperature", "the temperature T of the calibrated probabilities softmax(logits / T)"),
)


def write_report_dictionary(
    path: str | os.PathLike, modalities: Sequence[str], groups: Sequence[str] = ()
) -> str:
    """Write the data dictionary (``file, column, type, description``) of the CSV and JSON reports; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "column", "type", "description"])
        for c, t, d in report_columns(modalities, groups):
            w.writerow(["csv", c, t, d])
        w.writerow(["json", "(every csv column above)", "", "same values; lists as JSON arrays, missing as null"])
        for c, d in JSON_FIELDS:
            w.writerow(["json", c, "object", d])
    return path
