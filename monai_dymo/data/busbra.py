"""BUS-BRA (Gómez-Flores et al., Medical Physics) as a cohort of the cohort DyMo bundle.

A breast ultrasound collection: 1,875 grayscale images of 1,064 biopsy-proven lesions (one patient, one lesion), benign
or malignant, from four scanners. Most lesions were captured as a dual-panel screen holding two views of the lesion; the
release cuts it into ``bus_<case>-l.png`` and ``bus_<case>-r.png`` (the left and right panels, ``Side`` left / right);
the others have one image ``bus_<case>-s.png`` (``Side`` single). :func:`build_busbra` reads an unpacked ``BUSBRA``
folder (``Images/``, ``bus_data.csv``, ``5-fold-cv.csv``) and writes, without copying any image:

- ``datalist.json``: a MONAI datalist, one entry per lesion: ``patient_id`` (``bus_<case>``), ``view1`` (the left panel,
  or the only image), ``view2`` (the right panel; ``null`` with ``view2_missing_reason`` for a single-view lesion),
  ``label`` (:data:`CLASSES`) and ``histology`` (the label's source, for auditing; never read as an input);
- ``clinical.csv``: ``patient_id`` and :data:`INPUT_FIELDS` (the scanner and probe, known before the diagnosis). The
  release has no demographic field. The pathology, histology and BI-RADS category (:data:`OUTCOME_COLUMNS`: the
  radiologist's reading of these images, a target of the release's paper) are never inputs;
- ``busbra.yaml``: the cohort file (grayscale ``image2d`` modalities ``view1`` and ``view2``, ``channels: 1``, and the
  clinical group ``acquisition``), with ``work_dir`` / ``model_dir`` under ``--out``;
- ``manifest.json``: counts per split, class, histology, scanner and BI-RADS, the missing views with their reasons.

The split keeps every image of a lesion in one list. By default the test list is fold ``fold`` of the release's
``5-fold-cv.csv`` (its ``kFold`` column, assigned per lesion); the other lesions go to training / validation by a seeded
draw stratified by class and view count (3 : 1, so about 60 / 20 / 20 overall); the release's own train / validation
columns are per image (the two panels of a lesion may fall apart) and are not used. ``fold=None`` draws all three lists
(60 / 20 / 20, same strata).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from monai_dymo.data.cohort_files import image_size, require_paths, write_cohort_files, write_manifest
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = [
    "CLASSES",
    "INPUT_FIELDS",
    "OUTCOME_COLUMNS",
    "MODALITIES",
    "SPLIT_FRACTIONS",
    "stratified_split",
    "build_busbra",
]

CLASSES = ("benign", "malignant")
"""Pathology classes (class index = position)."""

INPUT_FIELDS = ("device",)
"""Inputs known before the diagnosis (categorical): the release's ``Device`` column (scanner and probe band)."""

OUTCOME_COLUMNS = ("Pathology", "Histology", "BIRADS")
"""Columns of ``bus_data.csv`` that are outcomes of the diagnosis or readings of the images: never inputs."""

MODALITIES = ("view1", "view2", "acquisition")
"""Modality names of the cohort file, in the networks' order."""

SPLIT_FRACTIONS = {"training": 0.6, "validation": 0.2, "testing": 0.2}
"""Fractions of the seeded draw (with an official test fold: training / validation 3 : 1 of the rest)."""

_ID = re.compile(r"^bus_(\d+)-([lrs])$")
_PANEL = {"l": "view1", "r": "view2", "s": "view1"}


def stratified_split(
    strata: dict[str, Any], fractions: dict[str, float], seed: int = 0
) -> dict[str, list[str]]:
    """Seeded split of ids stratified by their stratum: ``{split: sorted ids}``.

    Within each stratum (ids sorted, then permuted with ``numpy.random.default_rng(seed)``) every split but the first
    gets ``round(n * fraction)`` ids, the first the rest.
    """
    import numpy as np

    total = sum(fractions.values())
    if not fractions or total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {fractions}.")
    names = list(fractions)
    out: dict[str, list[str]] = {s: [] for s in names}
    rng = np.random.default_rng(seed)
    by_stratum: dict[Any, list[str]] = {}
    for pid, key in strata.items():
        by_stratum.setdefault(key, []).append(pid)
    for key in sorted(by_stratum, key=str):
        ids = sorted(by_stratum[key])
        order = [ids[i] for i in rng.permutation(len(ids))]
        start = 0
        counts = {s: int(round(len(ids) * fractions[s] / total)) for s in names[1:]}
        first = len(ids) - sum(counts.values())
        if first < 0:  # rounding took more than the stratum holds: trim the last splits
            for s in reversed(names[1:]):
                cut = min(counts[s], -first)
                counts[s] -= cut
                first += cut
        for s, n in ((names[0], first), *counts.items()):
            out[s].extend(order[start : start + n])
            start += n
    return {s: sorted(v) for s, v in out.items()}


def _single_reason(image_id: str) -> str:
    return f"single-view acquisition: the release has one image of this lesion ({image_id}), no dual-panel pair"


def build_busbra(
    source: str | os.PathLike,
    out: str | os.PathLike,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    fold: int | None = 1,
    name: str = "busbra",
    work_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the BUS-BRA cohort files (see the module docstring) from a ``BUSBRA`` folder.

    Args:
        source: the ``BUSBRA`` folder (``Images/``, ``bus_data.csv``; ``5-fold-cv.csv`` when ``fold`` is given).
        size: image size after preprocessing (rows, columns), or one integer for a square.
        seed: seed of the training / validation (and, without ``fold``, testing) draw.
        fold: the release's 5-fold CV fold (1-5) used as the test list; ``None``: a seeded 60 / 20 / 20 split.
        out, name, work_dir, model_dir: see :func:`~monai_dymo.data.cohort_files.write_cohort_files`.

    Returns:
        ``{"datalist", "clinical_csv", "cohort_file", "manifest"}`` paths plus ``"summary"``.

    Raises:
        FileNotFoundError: a missing release file or image, naming it.
        ValueError: a malformed image id, a lesion whose rows disagree (pathology, histology, scanner, fold), a
            pathology outside :data:`CLASSES`, a lesion with both a single image and panels, a fold outside 1-5.
    """
    import pandas as pd

    src = Path(source).expanduser().resolve()
    images = src / "Images"
    meta_file = src / "bus_data.csv"
    folds_file = src / "5-fold-cv.csv"
    require_paths([images, meta_file] + ([folds_file] if fold is not None else []), "busbra",
                  "--source must be the BUSBRA folder")
    if fold is not None and not 1 <= int(fold) <= 5:
        raise DyMoInputError(f"busbra: fold must be 1-5 (or None for a seeded split), got {fold}.")
    meta = pd.read_csv(meta_file)
    required = {"ID", "Case", "Pathology", "Histology", "BIRADS", "Device"}
    absent = sorted(required - set(meta.columns))
    if absent:
        raise DyMoInputError(f"busbra: {meta_file} lacks column(s) {absent}.")
    rows, cols = image_size(size)

    cases: dict[str, dict[str, Any]] = {}
    for _, r in meta.iterrows():
        image_id = str(r["ID"]).strip()
        m = _ID.match(image_id)
        if m is None:
            raise DyMoInputError(f"busbra: {meta_file}: image id {image_id!r} is not of the form bus_<case>-l|r|s.")
        case, panel = int(m.group(1)), m.group(2)
        if int(r["Case"]) != case:
            raise DyMoInputError(f"busbra: {meta_file}: {image_id} has Case {r['Case']}, not {case}.")
        if not (images / f"{image_id}.png").is_file():
            raise DyMoFileNotFoundError(f"busbra: {image_id}: image {images / (image_id + '.png')} not found.")
        pathology = str(r["Pathology"]).strip().lower()
        if pathology not in CLASSES:
            raise DyMoInputError(f"busbra: {meta_file}: {image_id}: pathology {r['Pathology']!r} is not one of "
                                 f"{list(CLASSES)}.")
        pid = f"bus_{case:04d}"
        c = cases.setdefault(pid, {"panels": {}, "pathology": pathology, "histology": str(r["Histology"]).strip(),
                                   "device": str(r["Device"]).strip(), "birads": r["BIRADS"]})
        for key, value in (("pathology", pathology), ("histology", str(r["Histology"]).strip()),
                           ("device", str(r["Device"]).strip())):
            if c[key] != value:
                raise DyMoInputError(f"busbra: {meta_file}: {pid}: {key} differs between its images ({c[key]!r} vs "
                                     f"{value!r}).")
        if panel in c["panels"]:
            raise DyMoInputError(f"busbra: {meta_file}: {pid}: image {image_id} listed twice.")
        c["panels"][panel] = image_id
    for pid, c in cases.items():
        if "s" in c["panels"] and len(c["panels"]) > 1:
            raise DyMoInputError(f"busbra: {meta_file}: {pid} has both a single image and dual-panel images: "
                                 f"{sorted(c['panels'])}.")

    single = {pid: "s" in c["panels"] or len(c["panels"]) == 1 for pid, c in cases.items()}
    strata = {pid: (c["pathology"], single[pid]) for pid, c in cases.items()}
    if fold is None:
        split_of = {pid: s for s, ids in stratified_split(strata, SPLIT_FRACTIONS, seed).items() for pid in ids}
        split_note = (f"seeded draw (seed {seed}) stratified by class and view count: "
                      f"{', '.join(f'{s} {f:.0%}' for s, f in SPLIT_FRACTIONS.items())}")
    else:
        folds = pd.read_csv(folds_file)
        if "ID" not in folds.columns or "kFold" not in folds.columns:
            raise DyMoInputError(f"busbra: {folds_file} lacks the ID / kFold columns.")
        fold_of: dict[str, int] = {}
        for image_id, k in zip(folds["ID"].astype(str).str.strip(), folds["kFold"].astype(int)):
            m = _ID.match(image_id)
            if m is None:
                raise DyMoInputError(f"busbra: {folds_file}: image id {image_id!r} is not of the form "
                                     "bus_<case>-l|r|s.")
            pid = f"bus_{int(m.group(1)):04d}"
            if fold_of.setdefault(pid, k) != k:
                raise DyMoInputError(f"busbra: {folds_file}: the images of {pid} are in folds {fold_of[pid]} and {k}.")
        unknown = sorted(set(cases) - set(fold_of))
        if unknown:
            raise DyMoInputError(f"busbra: {folds_file} has no fold for {unknown[:5]}.")
        test = {pid for pid in cases if fold_of[pid] == int(fold)}
        rest = {pid: key for pid, key in strata.items() if pid not in test}
        fr = {"training": SPLIT_FRACTIONS["training"], "validation": SPLIT_FRACTIONS["validation"]}
        split_of = {pid: s for s, ids in stratified_split(rest, fr, seed).items() for pid in ids}
        split_of.update({pid: "testing" for pid in test})
        split_note = (f"testing: fold {fold} of the release's 5-fold-cv.csv (per lesion); training / validation: "
                      f"seeded draw (seed {seed}) of the other lesions, 3 : 1, stratified by class and view count")

    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLIT_FRACTIONS}
    clinical, missing = [], []
    for pid in sorted(cases):
        c = cases[pid]
        entry: dict[str, Any] = {"patient_id": pid, "view1": None, "view2": None}
        for panel, image_id in c["panels"].items():
            entry[_PANEL[panel]] = f"{image_id}.png"
        for m in ("view1", "view2"):
            if entry[m] is None:
                if "s" in c["panels"]:
                    reason = _single_reason(c["panels"]["s"])
                else:
                    side = "left" if m == "view1" else "right"
                    reason = f"the {side} panel of this dual-panel lesion is not in the release"
                entry[f"{m}_missing_reason"] = reason
                missing.append({"patient_id": pid, "split": split_of[pid], "modality": m, "reason": reason})
        entry["label"] = c["pathology"]
        entry["histology"] = c["histology"]
        datalist[split_of[pid]].append(entry)
        clinical.append({"patient_id": pid, "device": c["device"]})

    files = write_cohort_files(
        out, name, datalist, clinical, INPUT_FIELDS, images, CLASSES,
        pictures=("view1", "view2"), channels=1, spatial_size=(rows, cols), clinical_group="acquisition",
        header=(
            "# BUS-BRA cohort for bundles/cohort_dymo, written by `python -m monai_dymo.data busbra`.\n"
            "# Inputs: the two ultrasound views of the lesion (view2 absent for single-view lesions) and the scanner;\n"
            "# pathology, histology and BI-RADS are outcomes, never inputs. Split: " + split_note + ".\n"
            "# work_dir / model_dir keep the cache, reports and weights trained on these images outside the bundle.\n"
        ),
        work_dir=work_dir,
        model_dir=model_dir,
    )

    def per_split(key: Any) -> dict[str, dict[str, int]]:
        return {s: dict(sorted(Counter(str(key(e)) for e in v).items())) for s, v in datalist.items()}

    summary = {
        "cases": {s: len(v) for s, v in datalist.items()},
        "images": {s: sum((e["view1"] is not None) + (e["view2"] is not None) for e in v) for s, v in datalist.items()},
        "classes": per_split(lambda e: e["label"]),
        "missing": {m: {s: sum(1 for x in missing if x["split"] == s and x["modality"] == m) for s in datalist}
                    for m in ("view1", "view2")},
    }
    audit = {
        "histology": dict(sorted(Counter(c["histology"] for c in cases.values()).items())),
        "device": per_split(lambda e: cases[e["patient_id"]]["device"]),
        "birads_by_class": {k: dict(sorted(Counter(str(c["birads"]) for c in cases.values()
                                                   if c["pathology"] == k).items())) for k in CLASSES},
    }
    record = {
        "source": str(src), "classes": list(CLASSES), "inputs": list(INPUT_FIELDS),
        "outcomes_not_inputs": list(OUTCOME_COLUMNS), "image_size": [rows, cols], "split": split_note,
        "fold": fold, "seed": seed, "summary": summary, "audit": audit, "missing_views": missing,
    }
    return write_manifest(files, record, summary)
