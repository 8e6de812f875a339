"""Load a cohort's datalist, join its clinical table, check every path, summarise the missingness.

:func:`load_split` turns one split of the MONAI datalist (``training`` / ``validation`` / ``testing``, and the
optional ``unlabelled`` list read by the self-supervised pretraining only) into entries that
the cohort preprocessing reads: image paths made absolute (``None`` where none was given), the label as a class index,
the clinical fields joined from the CSV by patient id (a patient without a CSV row gets its clinical modalities marked
``"absent: ..."`` with the reason, not a crash), and the entry's position in the split under ``"index"``. An image
modality given as null may say why in ``<modality>_missing_reason`` (e.g. ``"clinic": null, "clinic_missing_reason":
"clinical photo not acquired"``): the reason becomes ``"absent: <that text>"`` in every report.

:func:`prepare_cohort` is the bundle's ``prepare`` stage: it loads every split, checks every image path (existence,
empty file, a readable image header) with the reason recorded, fits the clinical encoding statistics on the training
split, writes ``missingness.csv`` (per split and modality: observed / missing counts by reason) and ``patients.csv``
(per patient and modality: the reason), logging one summary line per modality and split, and writes the cohort's plan
(``plan.json``, :mod:`~monai_dymo.cohort.plan`), logging its choices and a warning for every rare class.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.transforms.clinical import ClinicalFieldStats
from monai_dymo.transforms.utils import format_reason, is_missing_path, reason_prefix

__all__ = [
    "read_datalist",
    "read_clinical_table",
    "load_split",
    "check_image_path",
    "prepare_cohort",
    "INDEX_KEY",
    "MISSING_REASON_SUFFIX",
    "UNLABELLED_SPLIT",
]

logger = logging.getLogger("monai_dymo.cohort")

INDEX_KEY = "index"
"""Entry key holding the entry's position in its split (keeps report rows in datalist order)."""

MISSING_REASON_SUFFIX = "_missing_reason"
"""Datalist key suffix: ``<modality>_missing_reason`` says why an image modality given as null is missing."""

UNLABELLED_SPLIT = "unlabelled"
"""Optional datalist list of patients without labels (same entries, no label): images the hospital has that only the
self-supervised pretraining reads (:mod:`~monai_dymo.cohort.pretraining`)."""


def read_datalist(spec: CohortSpec, path: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The datalist JSON as ``{split: [entries]}`` (``ValueError`` naming the file when it is not one)."""
    path = Path(path) if path is not None else spec.datalist
    if not path.is_file():
        raise DyMoFileNotFoundError(f"datalist not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DyMoInputError(f"datalist {path} is not valid JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise DyMoInputError(f"datalist {path} must be a JSON object with 'training' / 'validation' / 'testing' lists.")
    out = {}
    for split, entries in data.items():
        if split not in (*spec.splits(), UNLABELLED_SPLIT):
            continue
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise DyMoInputError(f"datalist {path}: '{split}' must be a list of objects.")
        out[split] = [dict(e) for e in entries]
    return out


def read_clinical_table(spec: CohortSpec) -> pd.DataFrame | None:
    """The clinical CSV indexed by patient id (string), with every declared field checked."""
    if spec.clinical_csv is None or not spec.clinical_modalities:
        return None
    path = spec.clinical_csv
    if not path.is_file():
        raise DyMoFileNotFoundError(f"clinical table not found: {path}")
    table = pd.read_csv(path, dtype={spec.patient_id: str}, keep_default_na=True)
    if spec.patient_id not in table.columns:
        raise DyMoInputError(
            f"clinical table {path} has no patient id column {spec.patient_id!r} (columns: {list(table.columns)})."
        )
    absent = [f for f in spec.clinical_fields if f not in table.columns]
    if absent:
        raise DyMoInputError(f"clinical table {path} lacks the declared field column(s) {absent} (columns: "
                             f"{list(table.columns)}).")
    ids = table[spec.patient_id].astype(str).str.strip()
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise DyMoInputError(f"clinical table {path}: patient id(s) {dup[:5]} appear in more than one row.")
    table = table.assign(**{spec.patient_id: ids}).set_index(spec.patient_id)
    return table[list(spec.clinical_fields)]


def _clinical_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def load_split(
    spec: CohortSpec,
    split: str,
    datalist: str | Path | None = None,
    clinical: pd.DataFrame | None | bool = True,
    require_labels: bool | None = None,
) -> list[dict[str, Any]]:
    """Entries of one split, ready for the cohort preprocessing (see the module docstring).

    Args:
        spec: the cohort.
        split: ``"training"``, ``"validation"``, ``"testing"`` or ``"unlabelled"`` (images without labels for
            self-supervised pretraining; any label there is ignored).
        datalist: another datalist file with the same modalities (default: the cohort's).
        clinical: the joined table (default ``True``: read ``spec.clinical_csv``; ``None``/``False``: no join).
        require_labels: every entry must have a valid label (default: True for training / validation). When False,
            labels are kept only if every entry has one.

    Raises:
        ValueError: an empty or absent split, an entry without patient id, a duplicated id, a label outside the
            declared classes; each naming the file and the patient.
    """
    source = Path(datalist) if datalist is not None else spec.datalist
    splits = read_datalist(spec, source)
    if split not in splits:
        raise DyMoInputError(f"datalist {source} has no '{split}' list (it has {sorted(splits)}).")
    entries = splits[split]
    if not entries:
        raise DyMoInputError(f"datalist {source}: the '{split}' list is empty.")
    if require_labels is None:
        require_labels = split in ("training", "validation")
    table = read_clinical_table(spec) if clinical is True else (clinical if isinstance(clinical, pd.DataFrame) else None)
    root = spec.data_root
    with_labels = split != UNLABELLED_SPLIT and (require_labels or all(e.get(spec.label) is not None for e in entries))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        pid = entry.get(spec.patient_id)
        if pid is None or str(pid).strip() == "":
            raise DyMoInputError(f"datalist {source}: '{split}' entry {i} has no {spec.patient_id!r}.")
        pid = str(pid).strip()
        if pid in seen:
            raise DyMoInputError(f"datalist {source}: patient {pid!r} appears twice in '{split}'.")
        seen.add(pid)
        item: dict[str, Any] = {DyMoKeys.PATIENT_ID: pid, INDEX_KEY: i}
        if with_labels:
            if entry.get(spec.label) is None:
                raise DyMoInputError(f"datalist {source}: patient {pid!r} in '{split}' has no label {spec.label!r}.")
            item[DyMoKeys.LABEL] = spec.label_index(entry[spec.label], pid, f"datalist {source}")
        image_reasons = {}
        for m in spec.image_modalities:
            value = entry.get(m.name)
            if is_missing_path(value):
                item[m.name] = None
                why = entry.get(m.name + MISSING_REASON_SUFFIX)
                if isinstance(why, str) and why.strip():
                    image_reasons[m.name] = format_reason(Reason.ABSENT, why.strip())
            else:
                paths = [Path(str(v)).expanduser() for v in (value if isinstance(value, (list, tuple)) else [value])]
                paths = [p if p.is_absolute() else root / p for p in paths]
                item[m.name] = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
        if spec.clinical_modalities:
            reasons = {}
            if table is not None and pid in table.index:
                row = table.loc[pid]
                for f in spec.clinical_fields:
                    item[f] = _clinical_value(row[f])
            else:
                for f in spec.clinical_fields:
                    item[f] = _clinical_value(entry.get(f)) if table is None else None
                if table is not None:
                    reason = format_reason(Reason.ABSENT, f"patient {pid} has no row in {spec.clinical_csv}")
                    reasons = {m.name: reason for m in spec.clinical_modalities}
            if reasons:
                item[DyMoKeys.REASONS] = reasons
        if image_reasons:
            item[DyMoKeys.REASONS] = {**image_reasons, **(item.get(DyMoKeys.REASONS) or {})}
        out.append(item)
    return out


def check_image_path(value: Any) -> str:
    """Reason for one image path of a datalist entry, checked without loading the voxels: ``"observed"`` when the
    file (or DICOM series folder) exists and its header reads, else why not."""
    if is_missing_path(value):
        return format_reason(Reason.ABSENT, "no file given")
    paths = [Path(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    for p in paths:
        if not p.exists():
            return format_reason(Reason.FILE_NOT_FOUND, str(p))
        if p.is_dir():
            if not any(f.is_file() for f in p.iterdir()):
                return format_reason(Reason.UNREADABLE, f"{p}: empty folder")
            continue
        if p.stat().st_size == 0:
            return format_reason(Reason.UNREADABLE, f"{p}: file is empty (0 bytes)")
        if p.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            try:
                nib.load(str(p)).header  # noqa: B018 - reading the header is the check
            except Exception as e:  # noqa: BLE001 - any nibabel failure means unreadable
                return format_reason(Reason.UNREADABLE, f"{p}: not a readable NIfTI file ({type(e).__name__}: {e})")
    return Reason.OBSERVED.value


def prepare_cohort(
    spec: CohortSpec,
    output_dir: str | Path,
    stats_file: str | Path | None = None,
    plan_file: str | Path | None = None,
) -> dict[str, Any]:
    """The ``prepare`` stage: validate every split, fit the clinical statistics, write the missingness summary and
    the plan.

    Args:
        spec: the cohort.
        output_dir: where ``missingness.csv``, ``patients.csv`` and ``cohort.json`` go.
        stats_file: the clinical statistics' file (default ``<output_dir>/clinical_stats.json``).
        plan_file: the plan's file (default: ``plan.json`` beside ``stats_file`` when given, else in ``output_dir``).

    Returns:
        ``{"stats_file", "plan_file", "missingness", "patients", "splits": {split: n}}`` (paths as strings).
    """
    from monai_dymo.cohort.plan import PLAN_FILENAME, fingerprint, imbalance_warnings, make_plan, write_plan

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = read_clinical_table(spec)
    available = read_datalist(spec)
    for required in ("training", "validation"):
        if required not in available:
            raise DyMoInputError(f"datalist {spec.datalist} has no '{required}' list (it has {sorted(available)}).")
    rows, summary = [], []
    splits: dict[str, list[dict[str, Any]]] = {}
    checked: dict[str, list[dict[str, Any]]] = {}  # the entries with every checked reason, for the fingerprint
    missing_test = {m.name: ClinicalFieldStats(sentinels=m.sentinels).is_missing for m in spec.clinical_modalities}
    for split in (*spec.splits(), UNLABELLED_SPLIT):  # the unlabelled images are checked too (the pretrain stage)
        if split not in available or (split == UNLABELLED_SPLIT and not available[split]):
            continue
        entries = load_split(spec, split, clinical=table)
        splits[split] = entries
        for e in entries:
            row = {"split": split, DyMoKeys.PATIENT_ID: e[DyMoKeys.PATIENT_ID], "label": e.get(DyMoKeys.LABEL)}
            for m in spec.image_modalities:
                preset = (e.get(DyMoKeys.REASONS) or {}).get(m.name)
                row[m.name] = preset if preset is not None and is_missing_path(e[m.name]) else check_image_path(e[m.name])
            for m in spec.clinical_modalities:
                preset = (e.get(DyMoKeys.REASONS) or {}).get(m.name)
                blanks = [f for f in m.fields if missing_test[m.name](e.get(f))]
                if preset is not None:
                    row[m.name] = preset
                elif len(blanks) == len(m.fields):
                    row[m.name] = format_reason(Reason.FIELDS_MISSING, ", ".join(m.fields))
                else:
                    row[m.name] = Reason.OBSERVED.value
                row[f"{m.name}_missing_fields"] = ";".join(blanks)
            rows.append(row)
            missing = {m.name: row[m.name] for m in spec.modalities if row[m.name] != Reason.OBSERVED.value}
            checked.setdefault(split, []).append({**e, DyMoKeys.REASONS: missing})
        for m in spec.modalities:
            counts = Counter(reason_prefix(r[m.name]).value for r in rows if r["split"] == split)
            n = len(entries)
            observed = counts.pop(Reason.OBSERVED.value, 0)
            summary.append(
                {"split": split, "modality": m.name, "kind": m.kind, "patients": n, "observed": observed,
                 "missing": n - observed, "missing_percent": round(100.0 * (n - observed) / n, 1), **counts}
            )
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
            logger.info("%s / %s (%s): %d of %d observed; missing: %s", split, m.name, m.kind, observed, n, detail)
    patients = pd.DataFrame(rows)
    missingness = pd.DataFrame(summary).fillna(0)
    patients.to_csv(out / "patients.csv", index=False)
    missingness.to_csv(out / "missingness.csv", index=False)
    result: dict[str, Any] = {
        "missingness": str(out / "missingness.csv"),
        "patients": str(out / "patients.csv"),
        "splits": {k: len(v) for k, v in splits.items()},
        "stats_file": None,
        "plan_file": None,
    }
    if spec.clinical_modalities:
        train_rows = [e for e in splits["training"] if not (e.get(DyMoKeys.REASONS) or {})]
        if not train_rows:
            raise DyMoInputError(f"clinical table {spec.clinical_csv}: no training patient has a row; cannot fit "
                                 "encodings.")
        stats = ClinicalFieldStats.fit(
            train_rows,
            continuous=[f for m in spec.clinical_modalities for f in m.continuous],
            categorical=[f for m in spec.clinical_modalities for f in m.categorical],
            sentinels=sorted({s for m in spec.clinical_modalities for s in m.sentinels}, key=str),
        )
        stats_path = Path(stats_file) if stats_file is not None else out / "clinical_stats.json"
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        stats.save(stats_path)
        result["stats_file"] = str(stats_path)
    plan = make_plan(fingerprint(spec, checked), spec.plan_overrides)
    default_dir = Path(stats_file).parent if stats_file is not None else out
    result["plan_file"] = write_plan(plan, Path(plan_file) if plan_file is not None else default_dir / PLAN_FILENAME)
    logger.info("plan written to %s:", result["plan_file"])
    for line in plan.table():
        logger.info("  %s", line)
    for line in imbalance_warnings(plan.fingerprint, plan.class_weighting):
        logger.warning("%s", line)
    (out / "cohort.json").write_text(
        json.dumps(
            {"name": spec.name, "modalities": [m.name for m in spec.modalities], "kinds": [m.kind for m in spec.modalities],
             "classes": list(spec.classes), "splits": result["splits"]},
            indent=2,
        )
    )
    return result

