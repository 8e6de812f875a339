"""Per-patient DyMo selection reports: CSV / JSON / data dictionary / summary plot / HTML, and the ignite handler.

Records follow the shared per-patient record format produced by
:meth:`monai_dymo.selection.SelectionResult.to_records` (see :mod:`monai_dymo.handlers.report_records`), optionally
with ``label``, ``missing_fields`` and ``num_fields`` added by :class:`SelectionReportWriter`.

List columns of the CSV (``observed``, ``accepted``, ``<m>_rewards``, ``<group>_missing_fields``, ...) hold their
items joined by ``;`` and the word ``none`` for an empty list (so that ``pandas.read_csv`` reads them back as text,
not NaN); :func:`read_report_csv` reads the CSV back with those columns as Python lists. ``dymo_report_columns.csv``
beside the report describes every column.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys

from .._console import bar_disabled
from ..keys import DyMoKeys
from . import report_figures
from .pseudonyms import pseudonymize_id, pseudonymize_text
from .report_trust import TRUST_COLUMNS, trust_row, trust_summary
from .report_records import (
    MODALITY_STATUSES,
    accuracy_split,
    class_name,
    clinical_groups,
    is_correct,
    label_value,
    modality_decision,
    modality_status,
    names,
    patient_priority,
    plain,
    region_of_interest_text,
    report_modalities,
    report_summary,
    summary_line,
    with_class_names,
)

idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "MODALITY_STATUSES",
    "LIST_SEPARATOR",
    "EMPTY_LIST",
    "modality_status",
    "modality_decision",
    "report_modalities",
    "report_rows",
    "report_columns",
    "read_report_csv",
    "read_report",
    "report_summary",
    "summary_line",
    "write_report_csv",
    "write_report_json",
    "write_report_dictionary",
    "pseudonymize_records",
    "plot_selection_summary",
    "SelectionReportWriter",
]

#: separator of the items of a CSV list column.
LIST_SEPARATOR = ";"
#: what a CSV list column holds for an empty list (text, so that pandas does not read it as NaN).
EMPTY_LIST = "none"

_LIST_COLUMNS = ("observed", "recovered", "selected", "accepted", "rejected", "unused")

#: auto progress bar (``progress=None``) from this many patients on.
PROGRESS_MIN_PATIENTS = 1000

_label_value = label_value  # backwards-compatible private name
_plain = plain
_names = names


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
        ("probability", "float", "softmax probability of the predicted class"),
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
        for key in _LIST_COLUMNS:
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
    list_cols = [c for c in df.columns if c in _LIST_COLUMNS or c.endswith(("_rewards", "_missing_fields"))]
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
    :func:`~monai_dymo.handlers.report_records.report_summary` of the records) and the records (non-finite numbers as
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

    Reports written before the summary block (a bare JSON list of records) are read too; their summary is computed
    from the records with :func:`~monai_dymo.handlers.report_records.report_summary`."""
    with open(os.fspath(path), encoding="utf-8") as f:
        doc = json.load(f)
    if isinstance(doc, list):
        return {"summary": report_summary(doc), "patients": doc}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("patients"), list):
        raise ValueError(f"{os.fspath(path)} is not a DyMo JSON report (expected {{'summary', 'patients'}} or a list).")
    return {"summary": dict(doc.get("summary") or report_summary(doc["patients"])), "patients": doc["patients"]}


_JSON_FIELDS = (
    ("summary", "cohort figures: patients, processed, errors, labelled, correct, accuracy (%, null without labels), "
     "accuracy_by_use, used_recovered, had_rejection, modalities {modality: {observed, recovered, accepted, rejected, "
     "unused, missing}} (patients per status); margin, margin_source and refer {alpha, delta, threshold, coverage, "
     "error_not_referred, ...} (the guarantees of the run); single_modality {modality: {patients, accuracy}} (each "
     "observed modality alone, labelled patients)"),
    ("patients", "one record per patient, with the fields below"),
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
    ("refer / refer_threshold / refer_alpha / refer_delta", "the refer flag (true / false) and its rule: referred when "
     "probability < refer_threshold (null: none certified, everybody referred); <prefix>_trust.json summarises the run"),
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
        for c, d in _JSON_FIELDS:
            w.writerow(["json", c, "object", d])
    return path


def pseudonymize_records(records: Sequence[Mapping[str, Any]], key: str | bytes) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``patient_id`` replaced by its keyed pseudonym (:func:`pseudonymize_id`) and, in the
    free text (``reasons``, ``error``), the raw ids replaced and the folders of file paths removed."""
    mapping = {str(r.get("patient_id")): pseudonymize_id(r.get("patient_id"), key) for r in records}
    out = []
    for rec in records:
        r = dict(rec)
        r["patient_id"] = mapping[str(rec.get("patient_id"))]
        if r.get("reasons"):
            r["reasons"] = {m: pseudonymize_text(v, mapping) for m, v in r["reasons"].items()}
        r["error"] = pseudonymize_text(r.get("error"), mapping)
        out.append(r)
    return out


def status_counts(records: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> dict[str, list[int]]:
    """``{status: [number of patients per modality]}``."""
    counts = {s: [0] * len(modalities) for s in MODALITY_STATUSES}
    for rec in records:
        for i, m in enumerate(modalities):
            counts[modality_status(rec, m)][i] += 1
    return counts


def plot_selection_summary(
    records: Sequence[Mapping[str, Any]], modalities: Sequence[str] | None, path: str | os.PathLike
) -> str:
    """Per-modality stacked bars of the statuses (plain-language legend) and, where labels exist, the accuracy of the
    patients where DyMo accepted a recovered modality vs those where it used the observed ones only.

    Returns the path."""
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    split = accuracy_split(records)
    return report_figures.plot_selection_summary(
        status_counts(records, modalities), modalities, split or None, path, len(records)
    )


class SelectionReportWriter:
    """Ignite handler collecting DyMo selection records over an epoch and writing the report files.

    At ``EPOCH_COMPLETED`` it writes into ``output_dir``: ``<prefix>.csv`` and ``<prefix>.json`` (default
    ``dymo_report.*``), the data dictionary ``<prefix>_columns.csv``, if ``plot`` the summary chart
    ``dymo_summary.png``, and if ``html`` the page ``<prefix>.html`` with its pictures and per-patient pages in
    ``<prefix>_files/`` (see :func:`~monai_dymo.handlers.report_html.write_report_html`). Works with the batched output
    dictionary of :class:`~monai_dymo.engines.evaluator.DyMoEvaluator` and with its decollated list form.

    Added to each record when available: ``label`` (``output["label"]``, a class index or a one-hot vector), and from
    the batch's ``field_mask`` (clinical groups, see :class:`~monai_dymo.transforms.ClinicalFieldsd`)
    ``missing_fields`` ``{group: [names of the missing fields]}`` and ``num_fields``, and from its ``field_notes``
    what the table held in each missing field (``{group: "ldh = -999, age = blank"}``). Pictures: when the output holds
    the inputs the network saw (``DyMoEvaluator(keep_inputs=True)``), downsampled pictures of every modality are kept
    for the at most ``max_patient_pages`` patients that get a page (errors first, then patients with a rejected, then
    an accepted recovered modality, then the others, in order of arrival), so memory stays bounded on big cohorts.

    The report holds the datalist's patient ids and what the run computed, never image metadata (e.g. DICOM header
    values such as names or birth dates are never read). With ``pseudonymize_key`` every patient id is replaced by a
    keyed pseudonym (the first 16 hex digits of HMAC-SHA256(key, id), stable for one key; see
    :mod:`monai_dymo.handlers.pseudonyms`), raw ids inside reasons / errors are replaced too and file paths are reduced
    to their file names. In distributed runs the records of all ranks are gathered (and ordered by their datalist ``index`` when they carry
    one, see :meth:`_gather`) and only ``save_rank`` writes.

    Args:
        output_dir: directory of the report files.
        prefix: file name prefix of the CSV / JSON / HTML report.
        modalities: modality order of the per-modality columns (default: ``engine.network.modalities`` if there,
            else taken from the records).
        plot: also write the summary chart.
        summary_filename: file name of the chart.
        html: also write the HTML report.
        max_patient_pages: at most this many per-patient pages (and patients with pictures); the others are table rows.
        table_rows_per_page: patient table rows on the cohort page; the others on linked table pages.
        picture_size: longest side, in pixels, of each kept picture.
        pictures: use the inputs in the output (if any) for pictures.
        image2d_xy: 2D inputs are ``[C, x, y]`` as MONAI's ``LoadImage`` readers give a PNG / JPEG / DICOM frame
            (x = the file's columns); their pictures are transposed back to the file's own orientation. False (default)
            for ``[C, rows, columns]`` arrays (e.g. PolyMNIST). 3D volumes are drawn in radiological orientation (see
            :func:`~monai_dymo.handlers.report_figures.image_planes`).
        class_names: class names by class index (e.g. the cohort's ``classes``): the ``label_name`` /
            ``prediction_name`` of every record (default: the index as text).
        summary_extra: further blocks of the JSON ``summary`` (see
            :func:`~monai_dymo.handlers.report_records.report_summary`): a mapping, or a callable ``records -> mapping``.
        template_dir: a folder with a site's own HTML templates / ``report.css`` (any subset of the shipped files in
            ``monai_dymo/handlers/templates``), used before the shipped ones (None: the shipped templates).
        print_summary: print one summary line (:func:`~monai_dymo.handlers.report_records.summary_line`) when the
            report is written.
        clinical_fields: ``{group: [field names in layout order]}`` (``ClinicalFieldsd.layout(group)``) to name the
            missing fields (default: ``"field 1"``, ``"field 2"``, ...).
        pseudonymize_key: key of the pseudonymised ids (None: the datalist's ids).
        progress: tqdm progress bars while writing (None: from 1,000 patients on).
        output_transform: maps ``engine.state.output`` to the output dictionary (or list of per-patient dictionaries).
        batch_transform: maps ``engine.state.batch`` to the batch dictionary (or list) holding ``field_mask``.
        selection_key, label_key, inputs_key, field_mask_key, field_notes_key: keys of the records, labels, inputs,
            field masks and field notes.
        name: logger name (default: the engine's logger).
        save_rank: rank writing the files in distributed runs.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike = "./",
        prefix: str = "dymo_report",
        modalities: Sequence[str] | None = None,
        plot: bool = True,
        summary_filename: str = "dymo_summary.png",
        html: bool = True,
        max_patient_pages: int = 100,
        table_rows_per_page: int = 1000,
        picture_size: int = 128,
        pictures: bool = True,
        image2d_xy: bool = False,
        class_names: Sequence[Any] | None = None,
        summary_extra: Mapping[str, Any] | Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Any]] | None = None,
        print_summary: bool = True,
        template_dir: str | os.PathLike | None = None,
        clinical_fields: Mapping[str, Sequence[str]] | None = None,
        pseudonymize_key: str | bytes | None = None,
        progress: bool | None = None,
        output_transform: Callable = lambda x: x,
        batch_transform: Callable = lambda x: x,
        selection_key: str = DyMoKeys.SELECTION,
        label_key: str = CommonKeys.LABEL,
        inputs_key: str = DyMoKeys.INPUTS,
        field_mask_key: str = DyMoKeys.FIELD_MASK,
        field_notes_key: str = DyMoKeys.FIELD_NOTES,
        name: str | None = None,
        save_rank: int = 0,
    ) -> None:
        if max_patient_pages < 0:
            raise ValueError(f"max_patient_pages must be >= 0, got {max_patient_pages}.")
        if pseudonymize_key is not None and not pseudonymize_key:
            raise ValueError("pseudonymize_key must not be empty (None for raw ids).")
        self.output_dir = os.fspath(output_dir)
        self.prefix = prefix
        self.modalities = list(modalities) if modalities is not None else None
        self.plot = plot
        self.summary_filename = summary_filename
        self.html = html
        self.max_patient_pages = int(max_patient_pages)
        self.table_rows_per_page = int(table_rows_per_page)
        self.picture_size = int(picture_size)
        self.pictures = pictures
        self.image2d_xy = bool(image2d_xy)
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.summary_extra = summary_extra
        self.print_summary = bool(print_summary)
        self.template_dir = template_dir
        self.summary: dict[str, Any] = {}
        self.clinical_fields = {str(g): [str(f) for f in fs] for g, fs in (clinical_fields or {}).items()}
        self.pseudonymize_key = pseudonymize_key
        self.progress = progress
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.selection_key = selection_key
        self.label_key = label_key
        self.inputs_key = inputs_key
        self.field_mask_key = field_mask_key
        self.field_notes_key = field_notes_key
        self.save_rank = save_rank
        self._name = name
        self.logger = logging.getLogger(name)
        self.records: list[dict[str, Any]] = []
        self.paths: dict[str, str] = {}
        self._picture_heap: list[tuple[tuple[int, int], int, dict[str, Any]]] = []
        self._seq = 0

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if self.modalities is None:
            net = getattr(engine, "network", None)
            net = getattr(net, "module", net) if net is not None and not hasattr(net, "modalities") else net
            if net is not None and hasattr(net, "modalities"):
                self.modalities = [str(m) for m in net.modalities]
        if not engine.has_event_handler(self._started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self._finalize, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._finalize)

    def _started(self, _engine: Engine) -> None:
        self.records = []
        self._picture_heap = []
        self._seq = 0

    # ------------------------------------------------------------------ collecting
    def _split(self, output: Any) -> tuple[list[Mapping[str, Any]], list[Any], list[Any]]:
        """``(records, labels, inputs)`` per patient from one iteration's output."""
        if isinstance(output, Mapping):
            if self.selection_key not in output:
                raise ValueError(f"engine output has no {self.selection_key!r} records (keys: {sorted(output)}).")
            records = list(output[self.selection_key])
            labels = output.get(self.label_key)
            if labels is None:
                labels = [None] * len(records)
            elif isinstance(labels, torch.Tensor) and labels.ndim == 0:
                labels = [labels] * len(records)
            if len(labels) != len(records):
                raise ValueError(f"{len(labels)} labels for {len(records)} selection records.")
            inputs = output.get(self.inputs_key)
            if isinstance(inputs, Mapping):
                per = [{m: v[b] for m, v in inputs.items()} for b in range(len(records))]
            else:
                per = [None] * len(records)
            return records, list(labels), per
        if isinstance(output, Sequence):
            items = [o for o in output if isinstance(o, Mapping)]
            if len(items) != len(output) or any(self.selection_key not in o for o in items):
                raise ValueError(f"every decollated output item needs a {self.selection_key!r} record.")
            return (
                [o[self.selection_key] for o in items],
                [o.get(self.label_key) for o in items],
                [o.get(self.inputs_key) for o in items],
            )
        raise ValueError(f"cannot read selection records from output of type {type(output).__name__}.")

    def _field_notes(self, batch: Any, n: int) -> list[Mapping[str, str] | None]:
        """Per-patient ``{group: note}`` from the batch (batched dict of lists or decollated list), or Nones."""
        if isinstance(batch, Mapping):
            notes = batch.get(self.field_notes_key)
            if not isinstance(notes, Mapping) or not notes:
                return [None] * n
            lists = {g: v for g, v in notes.items() if isinstance(v, Sequence) and not isinstance(v, str)}
            return [{str(g): str(v[b]) for g, v in lists.items() if len(v) == n} for b in range(n)]
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
            notes_l = [d.get(self.field_notes_key) if isinstance(d, Mapping) else None for d in batch]
            if len(notes_l) == n:
                return notes_l
        return [None] * n

    @staticmethod
    def _roi_guides(batch: Any, n: int) -> list[str | None]:
        """Per-patient ``roi_guide`` from the batch (batched list or decollated list of dicts), or Nones."""
        key = str(DyMoKeys.ROI_GUIDE)
        if isinstance(batch, Mapping):
            guides = batch.get(key)
            if isinstance(guides, Sequence) and not isinstance(guides, str) and len(guides) == n:
                return [str(g) for g in guides]
        elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) == n:
            return [str(d[key]) if isinstance(d, Mapping) and d.get(key) else None for d in batch]
        return [None] * n

    def _field_masks(self, batch: Any, n: int) -> list[Mapping[str, Any] | None]:
        """Per-patient ``{group: BoolTensor[F]}`` from the batch (batched dict or decollated list), or Nones."""
        if isinstance(batch, Mapping):
            masks = batch.get(self.field_mask_key)
            if not isinstance(masks, Mapping) or not masks:
                return [None] * n
            out: list[Mapping[str, Any] | None] = []
            for b in range(n):
                out.append({g: v[b] for g, v in masks.items() if isinstance(v, torch.Tensor) and v.ndim == 2})
            return out
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
            masks_l = [d.get(self.field_mask_key) if isinstance(d, Mapping) else None for d in batch]
            if len(masks_l) == n:
                return masks_l
        return [None] * n

    def _missing_fields(self, rec: Mapping[str, Any], masks: Mapping[str, Any]) -> tuple[dict, dict]:
        missing, sizes = {}, {}
        for group, mask in masks.items():
            flags = [bool(v) for v in torch.as_tensor(mask).reshape(-1).tolist()]
            fields = self.clinical_fields.get(str(group))
            if fields is None:
                fields = [f"field {i + 1}" for i in range(len(flags))]
            elif len(fields) != len(flags):
                raise ValueError(
                    f"patient {rec.get('patient_id')!r}, clinical group {group!r}: field mask has {len(flags)} "
                    f"fields, clinical_fields names {len(fields)}: {fields}."
                )
            missing[str(group)] = [f for f, ok in zip(fields, flags) if not ok]
            sizes[str(group)] = len(flags)
        return missing, sizes

    def collect(self, output: Any, batch: Any = None) -> list[dict[str, Any]]:
        """Records (with ``label`` and clinical field gaps added when known) from one iteration's output / batch."""
        return [rec for rec, _ in self._collect(output, batch)]

    def _collect(self, output: Any, batch: Any) -> list[tuple[dict[str, Any], Any]]:
        records, labels, inputs = self._split(output)
        masks = self._field_masks(batch, len(records)) if batch is not None else [None] * len(records)
        notes = self._field_notes(batch, len(records)) if batch is not None else [None] * len(records)
        guides = self._roi_guides(batch, len(records))
        out = []
        for rec, label, x, mask, note, guide in zip(records, labels, inputs, masks, notes, guides):
            rec = dict(rec)
            if label is not None and rec.get("label") is None:
                rec["label"] = label_value(label)
            if mask and rec.get("missing_fields") is None:
                rec["missing_fields"], rec["num_fields"] = self._missing_fields(rec, mask)
            if note and rec.get("field_notes") is None:
                rec["field_notes"] = {str(g): str(v) for g, v in note.items()}
            if guide and rec.get("roi_guide") is None:
                rec["roi_guide"] = guide
            out.append((rec, x))
        return out

    def _keep_pictures(self, rec: dict[str, Any], x: Mapping[str, Any] | None) -> None:
        """Keep downsampled pictures of ``rec``'s inputs if it ranks among the ``max_patient_pages`` first patients."""
        seq, self._seq = self._seq, self._seq + 1
        if not self.pictures or not isinstance(x, Mapping) or self.max_patient_pages == 0 or rec.get("error"):
            return
        key = (patient_priority(rec), -seq)
        if len(self._picture_heap) >= self.max_patient_pages:
            if key <= self._picture_heap[0][0]:
                return
            _, _, evicted = heapq.heappop(self._picture_heap)
            evicted.pop("_pictures", None)
        pics = {}
        for m, v in x.items():
            if isinstance(v, torch.Tensor):
                planes = report_figures.image_planes(v, self.picture_size, image2d_xy=self.image2d_xy)
                if planes is not None:
                    pics[str(m)] = planes
        if pics:
            rec["_pictures"] = pics
            heapq.heappush(self._picture_heap, (key, seq, rec))

    def __call__(self, engine: Engine) -> None:
        batch = self.batch_transform(engine.state.batch) if engine.state.batch is not None else None
        for rec, x in self._collect(self.output_transform(engine.state.output), batch):
            self._keep_pictures(rec, x)
            self.records.append(rec)

    def _gather(self) -> list[dict[str, Any]]:
        """Records of every rank (ignite ``idist.all_gather`` of objects; this rank's in a single process).

        When every record carries its datalist ``"index"`` (see :class:`~monai_dymo.engines.evaluator.DyMoEvaluator`)
        they are sorted by it and a duplicated index (e.g. samples repeated by a padding ``DistributedSampler``) is
        kept once, so the merged report has one row per datalist entry, in datalist order; otherwise the ranks'
        records are concatenated in rank order.
        """
        records = list(self.records)
        if idist.get_world_size() > 1:
            gathered = idist.all_gather(records)
            records = [r for part in gathered for r in part]
        key = str(DyMoKeys.INDEX)
        if not records or any(r.get(key) is None for r in records):
            return records
        merged: dict[int, dict[str, Any]] = {}
        for rec in records:
            merged.setdefault(int(rec[key]), rec)
        return [merged[i] for i in sorted(merged)]

    def write(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Write the report files for ``records`` (default: those collected) and return their paths."""
        records = self.records if records is None else list(records)
        progress = self.progress if self.progress is not None else len(records) >= PROGRESS_MIN_PATIENTS
        if self.pseudonymize_key is not None:
            records = pseudonymize_records(records, self.pseudonymize_key)
        records = with_class_names(records, self.class_names)
        modalities = self.modalities if self.modalities is not None else report_modalities(records)
        groups = clinical_groups(records)
        extra = dict((self.summary_extra(records) if callable(self.summary_extra) else self.summary_extra) or {})
        trust = trust_summary(records)
        if trust is not None:  # the margin in force and the refer rule of this run in the summary block too
            extra = {**trust, **extra}
        alone = single_modality_summary(records, modalities)
        if alone is not None:
            extra = {"single_modality": alone, **extra}
        self.summary = report_summary(records, modalities, extra=extra)
        base = os.path.join(self.output_dir, self.prefix)
        paths = {
            "csv": write_report_csv(records, base + ".csv", modalities, groups, progress=progress),
            "json": write_report_json(records, base + ".json", progress=progress, summary=self.summary),
            "columns": write_report_dictionary(base + "_columns.csv", modalities, groups),
        }
        if trust is not None:  # the same, alone (see report_trust)
            paths["trust"] = os.path.join(self.output_dir, self.prefix + "_trust.json")
            with open(paths["trust"], "w", encoding="utf-8") as f:
                json.dump(plain(trust), f, indent=1, allow_nan=False)
        if self.plot:
            png = os.path.join(self.output_dir, self.summary_filename)
            paths["png"] = plot_selection_summary(records, modalities, png)
        if self.html:
            from .report_html import write_report_html

            paths["html"] = write_report_html(
                records,
                base + ".html",
                modalities,
                summary_png=paths.get("png"),
                files={k: paths[k] for k in ("csv", "json", "columns", "trust") if k in paths},
                max_patient_pages=self.max_patient_pages,
                table_rows_per_page=self.table_rows_per_page,
                progress=progress,
                pseudonymised=self.pseudonymize_key is not None,
                summary=self.summary,
                template_dir=self.template_dir,
            )
        self.paths = paths
        return paths

    def _finalize(self, _engine: Engine) -> None:
        world = idist.get_world_size()
        if self.save_rank >= world:
            raise ValueError("target save rank is greater than the distributed group size.")
        records = self._gather()
        if idist.get_rank() == self.save_rank:
            paths = self.write(records)
            n_err = sum(r.get("error") is not None for r in records)
            self.logger.info(
                f"DyMo selection report for {len(records)} patients ({n_err} with errors): {', '.join(paths.values())}"
            )
            if self.print_summary:
                print(summary_line(self.summary, paths.get("html") or paths["csv"]), flush=True)
