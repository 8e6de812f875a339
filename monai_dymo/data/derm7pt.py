"""derm7pt (Kawahara et al., IEEE JBHI 2018) as a cohort of the cohort DyMo bundle.

The 7-point criteria evaluation database: 1,011 skin lesions, each with a clinical photograph, a dermoscopic photograph
and patient metadata, and the official train / validation / test split (``meta/{train,valid,test}_indexes.csv``, row
positions in ``meta/meta.csv``). :func:`build_derm7pt` reads an unpacked ``release_v0`` folder (``images/``,
``meta/meta.csv``, the three index files) and writes, without copying any image:

- ``datalist.json``: a MONAI datalist (``training`` / ``validation`` / ``testing`` = the official split), one entry per
  case: ``patient_id`` (``case_<case_num>``), ``clinic`` and ``derm`` (image paths relative to ``images/``), ``label``
  (one of :data:`CLASSES`), ``diagnosis`` (the release's diagnosis, for auditing; never read as an input). A case whose
  clinical photo is missing (the release's ``notes`` column: "Clinical missing and replaced with derm", "Replaced
  clinic ... with derm ...": the release put the dermoscopic photo in its place) has ``"clinic": null`` and
  ``clinic_missing_reason`` with that note, so every report says why;
- ``clinical.csv``: ``patient_id`` and the metadata known before the diagnosis, :data:`INPUT_FIELDS` (sex, location,
  elevation); the 7-point criteria and score, the management decision, the diagnosis and the level of diagnostic
  difficulty (:data:`OUTCOME_COLUMNS`) are outcomes of the diagnosis and are never inputs;
- ``derm7pt.yaml``: the cohort file (two RGB ``image2d`` modalities ``clinic`` and ``derm``, ``channels: 3``, and the
  clinical group ``metadata``), plus ``work_dir`` / ``model_dir`` under ``--out`` so that the bundle's cache, reports
  and weights trained on these images stay outside the bundle (the release may not be redistributed);
- ``manifest.json``: counts per split, class and diagnosis, and the missing clinical photos.

The 5 diagnosis classes group the release's 20 diagnosis strings as the paper does (:data:`DIAGNOSIS_GROUPS`): BCC,
NEV (every nevus), MEL (every melanoma), MISC (dermatofibroma, lentigo, melanosis, vascular lesion, miscellaneous), SK.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from monai_dymo.data.cohort_files import image_size, require_paths, write_cohort_files, write_manifest
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = [
    "CLASSES",
    "DIAGNOSIS_GROUPS",
    "INPUT_FIELDS",
    "OUTCOME_COLUMNS",
    "MODALITIES",
    "SPLIT_FILES",
    "diagnosis_class",
    "build_derm7pt",
]

CLASSES = ("BCC", "NEV", "MEL", "MISC", "SK")
"""The paper's 5 diagnosis classes, in its order (class index = position)."""

DIAGNOSIS_GROUPS: dict[str, tuple[str, ...]] = {
    "BCC": ("basal cell carcinoma",),
    "NEV": (
        "nevus",
        "blue nevus",
        "clark nevus",
        "combined nevus",
        "congenital nevus",
        "dermal nevus",
        "recurrent nevus",
        "reed or spitz nevus",
    ),
    "MEL": (
        "melanoma",
        "melanoma (in situ)",
        "melanoma (less than 0.76 mm)",
        "melanoma (0.76 to 1.5 mm)",
        "melanoma (more than 1.5 mm)",
        "melanoma metastasis",
    ),
    "MISC": ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
    "SK": ("seborrheic keratosis",),
}
"""Release diagnosis strings of every class (the grouping of Kawahara et al.'s ``derm7pt`` code)."""

INPUT_FIELDS = ("sex", "location", "elevation")
"""Metadata known before the diagnosis: the clinical inputs (categorical)."""

OUTCOME_COLUMNS = (
    "diagnosis",
    "seven_point_score",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "level_of_diagnostic_difficulty",
    "management",
)
"""Columns of ``meta.csv`` that are outcomes of the diagnosis: never inputs."""

MODALITIES = ("clinic", "derm", "metadata")
"""Modality names of the cohort file, in the networks' order."""

SPLIT_FILES = {"training": "train_indexes.csv", "validation": "valid_indexes.csv", "testing": "test_indexes.csv"}
"""The official split: datalist list -> index file under ``meta/`` (0-based row positions in ``meta.csv``)."""

_LOOKUP = {name: cls for cls, names in DIAGNOSIS_GROUPS.items() for name in names}


def diagnosis_class(diagnosis: str, where: str = "derm7pt") -> str:
    """The 5-class label of a release diagnosis string (case and surrounding blanks ignored).

    Raises:
        DyMoInputError: a diagnosis the grouping does not know, naming it after ``where`` (file and case).
    """
    key = " ".join(str(diagnosis).strip().lower().split())
    if key not in _LOOKUP:
        raise DyMoInputError(f"{where}: unknown diagnosis {diagnosis!r}; known: {sorted(_LOOKUP)}.")
    return _LOOKUP[key]


def _missing_clinic_reason(note: str) -> str:
    return f"clinical photo missing in the release (meta.csv notes: {note.strip()})"


def build_derm7pt(
    source: str | os.PathLike,
    out: str | os.PathLike,
    size: int | tuple[int, int] = 128,
    name: str = "derm7pt",
    work_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the derm7pt cohort files (see the module docstring) from a ``release_v0`` folder.

    Args:
        source: the ``release_v0`` folder (``images/``, ``meta/meta.csv``, ``meta/*_indexes.csv``).
        size: image size after preprocessing (rows, columns), or one integer for a square.
        out, name, work_dir, model_dir: see :func:`~monai_dymo.data.cohort_files.write_cohort_files`.

    Returns:
        ``{"datalist", "clinical_csv", "cohort_file", "manifest"}`` paths plus ``"summary"``.

    Raises:
        FileNotFoundError: a missing release file or image, naming it.
        ValueError: an unknown diagnosis, a split index outside ``meta.csv``, a case in two splits.
    """
    import pandas as pd

    src = Path(source).expanduser().resolve()
    images = src / "images"
    meta_file = src / "meta" / "meta.csv"
    require_paths((images, meta_file, *(src / "meta" / f for f in SPLIT_FILES.values())), "derm7pt",
                  "--source must be the release_v0 folder")
    meta = pd.read_csv(meta_file)
    required = {"case_num", "clinic", "derm", "notes", *INPUT_FIELDS, "diagnosis"}
    absent = sorted(required - set(meta.columns))
    if absent:
        raise DyMoInputError(f"derm7pt: {meta_file} lacks column(s) {absent}.")
    rows, cols = image_size(size)

    split_of: dict[int, str] = {}
    for split, fname in SPLIT_FILES.items():
        idx = pd.read_csv(src / "meta" / fname).iloc[:, 0].astype(int).tolist()
        for i in idx:
            if not 0 <= i < len(meta):
                raise DyMoInputError(f"derm7pt: {fname} lists row {i}, outside meta.csv's {len(meta)} rows.")
            if i in split_of:
                raise DyMoInputError(f"derm7pt: row {i} is in both {split_of[i]} and {split}.")
            split_of[i] = split

    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLIT_FILES}
    clinical = []
    missing_clinic = []
    for i in sorted(split_of):
        r = meta.iloc[i]
        pid = f"case_{int(r['case_num']):04d}"
        entry: dict[str, Any] = {"patient_id": pid}
        for m in ("clinic", "derm"):
            rel = str(r[m]).strip()
            if not (images / rel).is_file():
                raise DyMoFileNotFoundError(f"derm7pt: {pid} ({m}): image {images / rel} not found.")
            entry[m] = rel
        note = r["notes"]
        if isinstance(note, str) and note.strip():
            entry["clinic"] = None
            entry["clinic_missing_reason"] = _missing_clinic_reason(note)
            missing_clinic.append({"patient_id": pid, "split": split_of[i], "notes": note.strip()})
        entry["label"] = diagnosis_class(r["diagnosis"], where=f"derm7pt: {meta_file}: {pid}")
        entry["diagnosis"] = str(r["diagnosis"])
        datalist[split_of[i]].append(entry)
        clinical.append({"patient_id": pid, **{f: r[f] for f in INPUT_FIELDS}})

    files = write_cohort_files(
        out, name, datalist, clinical, INPUT_FIELDS, images, CLASSES,
        pictures=("clinic", "derm"), channels=3, spatial_size=(rows, cols), clinical_group="metadata",
        header=(
            "# derm7pt cohort for bundles/cohort_dymo, written by `python -m monai_dymo.data derm7pt`.\n"
            "# Inputs: clinical photo, dermoscopic photo (RGB) and the metadata known before diagnosis (sex, location,\n"
            "# elevation); the 7-point criteria, management, diagnosis and difficulty are outcomes, never inputs.\n"
            "# work_dir / model_dir keep the cache, reports and weights trained on these images outside the bundle.\n"
        ),
        work_dir=work_dir,
        model_dir=model_dir,
    )
    summary = {
        "cases": {s: len(v) for s, v in datalist.items()},
        "classes": {s: dict(sorted(Counter(e["label"] for e in v).items())) for s, v in datalist.items()},
        "diagnoses": dict(sorted(Counter(e["diagnosis"] for v in datalist.values() for e in v).items())),
        "missing_clinic": {s: sum(1 for m in missing_clinic if m["split"] == s) for s in datalist},
    }
    record = {
        "source": str(src), "classes": list(CLASSES), "groups": {k: list(v) for k, v in DIAGNOSIS_GROUPS.items()},
        "inputs": list(INPUT_FIELDS), "outcomes_not_inputs": list(OUTCOME_COLUMNS), "image_size": [rows, cols],
        "summary": summary, "missing_clinic_photos": missing_clinic,
    }
    return write_manifest(files, record, summary)
