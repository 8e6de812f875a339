"""Synthetic brain MRI + clinical cohort with natural missingness, generated offline from four real brains.

Every patient is made from one of the real skull-stripped, co-registered brains in
``../shared/data/brain_mri_samples/<case>/{t1,t1c,t2,flair}.nii.gz`` (240x240x155, 1 mm):

1. **Source preparation** (once per process, cached): each sequence is reoriented to RAS, block-averaged to 2 mm
   (then to ``2 f`` mm, ``f = max(1, floor(spacing / 2))``) and divided by its brain median. The real tumour of the
   source (found as the largest FLAIR-hyperintense component, grown by the left-right asymmetry of all four
   sequences) is replaced by the mirrored contralateral hemisphere, so that the only lesion a patient shows is the
   synthetic one. Sources are assigned so that every class uses all sources equally often; the source never carries
   the class.
2. **Anatomy**: a random left-right flip, rotation (up to 8 degrees per axis), anisotropic scaling (0.9-1.1), shift
   (up to 5 mm) and a smooth elastic displacement (5^3 control grid, about 3 mm), applied to the four sequences, the
   brain mask and the depth map (distance to the brain surface) in one trilinear resampling onto the stored grid
   (``size``^3 voxels over a ``fov_mm`` cube centred on the brain; 96^3 at 2.25 mm by default).
3. **Lesion**: one or more irregular blobs with a core, a rim and an oedema shell; the class (see :data:`CLASSES`)
   sets, independently given the class, one attribute per sequence with overlapping class-conditional probabilities
   (:data:`ATTRIBUTE_TABLES`): T1c enhancement (none / ring / solid), FLAIR oedema extent (small / medium / large),
   T2 lesion signal (hypo / iso / hyper), T1 lesion signal (hypo / iso / haemorrhagic bright spots), plus weakly
   informative shared geometry (number of blobs, radius, depth below the brain surface) and clinical fields (age, sex,
   KPS, LDH) drawn from overlapping class-conditional distributions. No single sequence nor the clinical table
   identifies the class; together they do (see ``benchmarks/bench_brain_cohort_signal.py``).
4. **Re-contrasting** per sequence: gamma (0.8-1.25), a smooth multiplicative bias field (about +-12 %), a scanner
   scale factor, Gaussian noise (1-3 % of the brain median); stored as int16 NIfTI with a RAS affine whose origin is
   the brain centre.
5. **Natural missingness** (independent of the class): each sequence absent (``null`` in the datalist) for 20-26 % of
   patients, never all four sequences and the clinical row together; a few corrupt files (zero bytes, random bytes,
   truncated gzip); a few sequences stored as DICOM series folders (axial slices, LPS geometry tags, readable by
   MONAI's ``PydicomReader``); blank clinical cells, sentinel values (``ldh = -999``, ``sex = "unknown"``), a few
   all-blank clinical rows and a few patients missing from ``clinical.csv`` entirely.

Outputs in ``output_dir``: ``images/<pid>/<seq>.nii.gz`` (or ``images/<pid>/<seq>/`` DICOM folders),
``datalist.json`` (MONAI's ``training`` / ``validation`` / ``testing`` lists; per entry ``patient_id``, one relative path
or ``null`` per sequence, ``label`` int), ``clinical.csv`` (``patient_id,age,sex,kps,ldh``, rows shuffled),
``classes.json``, ``manifest.json`` (everything injected, per patient: source, attributes, lesion geometry, corrupt
files, DICOM folders, clinical status) and ``README.md``.

Cost of the default cohort (360 patients, 96^3; ``python -m monai_dymo.data brain-cohort``, one thread pinned to one
core): 87 s of CPU time (user + sys; 4 min 13 s wall on a shared, oversubscribed 2-core machine), 239 MB on disk.

API: :func:`generate_brain_cohort` writes the cohort; :func:`iter_cohort_patients` yields the same patients in memory
(before missingness); :func:`plan_missingness` draws the missingness alone; :func:`synthesize_patient` makes one patient
from one :class:`BrainSource` (:func:`load_brain_sources`); :func:`write_dicom_series` writes an axial MR series. They
live in :mod:`~monai_dymo.data.brain_design` (the classes and their distributions), :mod:`.brain_sources`,
:mod:`.brain_synthesis`, :mod:`.brain_missingness` and :mod:`.volume_files`, and are importable from here.

All randomness comes from :class:`numpy.random.SeedSequence` streams of ``seed``: the design (class, source, split),
each patient's anatomy / lesion / clinical values, the missingness, and the DICOM choice are independent streams, so
turning DICOM export off gives the same voxels in NIfTI form. Nothing here runs a model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.data.brain_design import _BLOBS_P, _CLINICAL, _RADIUS_MM  # noqa: F401 - read by benchmarks
from monai_dymo.data.brain_design import (
    _ABSENT_P,
    ATTRIBUTE_TABLES,
    CLASSES,
    CLINICAL_FIELDS,
    DEFAULT_FOV_MM,
    SEQUENCES,
)
from monai_dymo.data.brain_missingness import plan_missingness
from monai_dymo.data.brain_sources import BrainSource, find_brain_samples, load_brain_sources
from monai_dymo.data.brain_synthesis import cohort_affine, synthesize_patient
from monai_dymo.data.volume_files import save_nifti_gz, write_dicom_series

__all__ = [
    "SEQUENCES",
    "CLASSES",
    "CLINICAL_FIELDS",
    "ATTRIBUTE_TABLES",
    "DEFAULT_FOV_MM",
    "BrainSource",
    "find_brain_samples",
    "load_brain_sources",
    "cohort_affine",
    "synthesize_patient",
    "write_dicom_series",
    "iter_cohort_patients",
    "plan_missingness",
    "generate_brain_cohort",
]


def _design(num_patients: int, num_sources: int, split_fractions: Sequence[float], seed: int):
    """Balanced classes, sources balanced within each class, class-stratified splits."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    labels = np.arange(num_patients) % len(CLASSES)
    labels = labels[rng.permutation(num_patients)]
    sources = np.zeros(num_patients, dtype=np.int64)
    splits = np.empty(num_patients, dtype=object)
    names = ("training", "validation", "testing")
    fr = np.asarray(split_fractions, dtype=np.float64)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        sources[idx] = (np.arange(idx.size) + int(rng.integers(num_sources))) % num_sources
        order = rng.permutation(idx)
        exact = fr / fr.sum() * idx.size
        counts = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - counts), kind="stable")[: idx.size - counts.sum()]:
            counts[j] += 1  # largest remainders
        for j in range(len(counts)):  # every split gets each class when the class has enough patients
            if counts[j] == 0 and fr[j] > 0 and idx.size >= int((fr > 0).sum()):
                counts[j] += 1
                counts[int(np.argmax(counts))] -= 1
        start = 0
        for name, n in zip(names, counts):
            splits[order[start:start + n]] = name
            start += n
    return labels, sources, splits


def iter_cohort_patients(
    num_patients: int = 360,
    size: int = 96,
    seed: int = 0,
    source_dir: str | os.PathLike | None = None,
    fov_mm: float = DEFAULT_FOV_MM,
    split_fractions: Sequence[float] = (4, 1, 1),
) -> Iterator[tuple[str, int, str, np.ndarray, dict[str, Any]]]:
    """The cohort's patients in memory, before any missingness: ``(patient_id, label, split, volumes, record)``.

    ``volumes`` is int16 ``[4, size, size, size]`` (see :func:`synthesize_patient`); the voxels are exactly those that
    :func:`generate_brain_cohort` writes with the same arguments.
    """
    sources = load_brain_sources(source_dir, fov_mm / size)
    labels, src_idx, splits = _design(num_patients, len(sources), split_fractions, seed)
    for i in range(num_patients):
        prng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
        arr, rec = synthesize_patient(sources[src_idx[i]], int(labels[i]), prng, size=size, fov_mm=fov_mm)
        yield _patient_id(i), int(labels[i]), str(splits[i]), arr, rec


def _patient_id(i: int) -> str:
    return f"BC{i + 1:04d}"


def generate_brain_cohort(
    output_dir: str | os.PathLike = "outputs/brain_cohort",
    source_dir: str | os.PathLike | None = None,
    num_patients: int = 360,
    size: int = 96,
    seed: int = 0,
    fov_mm: float = DEFAULT_FOV_MM,
    split_fractions: Sequence[float] = (4, 1, 1),
    absent_rates: Mapping[str, float] | None = None,
    num_corrupt: int | None = None,
    num_dicom: int | None = None,
    num_missing_clinical: int | None = None,
    num_blank_clinical: int | None = None,
    blank_field_rate: float = 0.06,
    sentinel_rate: float = 0.03,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate the synthetic brain MRI + clinical cohort (see the module docstring) into ``output_dir``.

    Args:
        output_dir: output folder (created; must be empty or absent unless ``overwrite``).
        source_dir: folder of real cases ``<case>/{t1,t1c,t2,flair}.nii.gz`` (see :func:`find_brain_samples`).
        num_patients: patients (at least 3); classes balanced, splits ``split_fractions`` (default 4:1:1) per class.
        size: stored grid ``size^3`` over a ``fov_mm`` cube (96 -> 2.25 mm voxels).
        seed: master seed; same arguments and seed give byte-identical NIfTI files, CSV and JSON.
        absent_rates: per sequence probability of being absent (default t1 .22, t1c .26, t2 .20, flair .24).
        num_corrupt: corrupt sequence files per kind (zero-byte, random bytes, truncated gzip); default 1 % of patients
            (at least 1).
        num_dicom: sequences stored as DICOM series folders (default 3 % of patients, at least 1; 0 = none).
        num_missing_clinical: patients left out of ``clinical.csv`` (default 3 %, at least 1).
        num_blank_clinical: patients whose clinical row is all blank (default 0.5 %, at least 1).
        blank_field_rate: probability of each clinical cell being blank.
        sentinel_rate: probability of ``ldh = -999`` and, separately, of ``sex = "unknown"``.
        overwrite: remove an existing non-empty ``output_dir`` first.
        progress: print one line per 50 patients.

    Returns:
        ``{"root", "datalist", "clinical", "classes", "manifest", "readme"}`` paths.
    """
    start = time.perf_counter()
    if num_patients < len(CLASSES):
        raise ValueError(f"num_patients must be at least {len(CLASSES)}, got {num_patients}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    rates = dict(_ABSENT_P if absent_rates is None else absent_rates)
    unknown = set(rates) - set(SEQUENCES)
    if unknown or any(not 0 <= float(r) < 1 for r in rates.values()):
        raise ValueError(f"absent_rates: keys must be in {SEQUENCES} and values in [0, 1), got {dict(rates)}")
    source_folder = find_brain_samples(source_dir)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty (use overwrite=True / --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    spacing = fov_mm / size
    sources = load_brain_sources(source_folder, spacing)
    affine = cohort_affine(size, fov_mm)
    n = num_patients
    pids = [_patient_id(i) for i in range(n)]
    labels, src_idx, splits = _design(n, len(sources), split_fractions, seed)

    plan = plan_missingness(
        n, seed, rates, num_corrupt=num_corrupt, num_dicom=num_dicom, num_missing_clinical=num_missing_clinical,
        num_blank_clinical=num_blank_clinical, blank_field_rate=blank_field_rate, sentinel_rate=sentinel_rate,
    )
    present, corrupt, dicom = plan["present"], plan["corrupt"], plan["dicom"]
    missing_rows, blank_rows, no_image = plan["missing_rows"], plan["blank_rows"], plan["no_image"]
    cell_blank, ldh_sentinel, sex_unknown = plan["cell_blank"], plan["ldh_sentinel"], plan["sex_unknown"]

    # ---- patients
    entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "testing": []}
    records: list[dict[str, Any]] = []
    clinical_rows: list[dict[str, Any]] = []
    patients = iter_cohort_patients(n, size, seed, source_folder, fov_mm, split_fractions)
    for i, (pid, _, _, arr, rec) in enumerate(patients):
        byte_rng = np.random.default_rng(np.random.SeedSequence([seed, 5, i]))  # content of random-bytes files
        entry: dict[str, Any] = {"patient_id": pid}
        files: dict[str, Any] = {}
        for k, seq in enumerate(SEQUENCES):
            if not present[i, k]:
                entry[seq] = None
                files[seq] = {"status": "absent"}
                continue
            if (i, k) in dicom:
                rel = f"images/{pid}/{seq}"
                write_dicom_series(arr[k], affine, out / rel, pid, seq, uid_seed=(seed, i))
                files[seq] = {"status": "dicom_series", "path": rel, "num_slices": size}
            else:
                rel = f"images/{pid}/{seq}.nii.gz"
                path = out / rel
                kind = corrupt.get((i, k))
                if kind == "zero_bytes":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"")
                elif kind == "random_bytes":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(byte_rng.bytes(4096))
                else:
                    save_nifti_gz(arr[k], affine, path)
                    if kind == "truncated_gzip":
                        data = path.read_bytes()
                        path.write_bytes(data[: len(data) // 2])
                files[seq] = {"status": kind or "nifti", "path": rel}
            entry[seq] = rel
        entry["label"] = int(labels[i])
        entries[str(splits[i])].append(entry)
        # clinical row
        values = dict(rec["clinical"])
        status = "complete"
        if i in missing_rows:
            status = "row_missing"
        else:
            row: dict[str, Any] = {"patient_id": pid}
            if i in blank_rows:
                row.update({f: "" for f in CLINICAL_FIELDS})
                status = "all_blank"
            else:
                blanks = []
                for j, f in enumerate(CLINICAL_FIELDS):
                    row[f] = "" if cell_blank[i, j] else values[f]
                    if cell_blank[i, j]:
                        blanks.append(f)
                sentinels = []
                if ldh_sentinel[i] and not cell_blank[i, 3]:
                    row["ldh"] = -999
                    sentinels.append("ldh")
                if sex_unknown[i] and not cell_blank[i, 1]:
                    row["sex"] = "unknown"
                    sentinels.append("sex")
                status = "partial" if blanks or sentinels else "complete"
                rec["clinical_blank_fields"] = blanks
                rec["clinical_sentinel_fields"] = sentinels
            clinical_rows.append(row)
        rec.update({"patient_id": pid, "label": int(labels[i]), "class": CLASSES[labels[i]], "split": str(splits[i]),
                    "files": files, "clinical_status": status, "clinical_values": values})
        del rec["clinical"]
        records.append(rec)
        if progress and (i + 1) % 50 == 0:
            print(f"{i + 1}/{n} patients, {time.perf_counter() - start:.1f} s", flush=True)

    # ---- tables
    crng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    clinical_rows = [clinical_rows[j] for j in crng.permutation(len(clinical_rows))]
    clinical_path = out / "clinical.csv"
    with clinical_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", *CLINICAL_FIELDS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(clinical_rows)
    datalist_path = out / "datalist.json"
    datalist_path.write_text(json.dumps(entries, indent=1) + "\n")
    classes_path = out / "classes.json"
    classes_path.write_text(json.dumps({
        "label_key": "label", "classes": list(CLASSES), "modalities": list(SEQUENCES),
        "clinical_csv": "clinical.csv", "patient_id_column": "patient_id",
        "clinical_fields": CLINICAL_FIELDS, "sentinels": {"ldh": -999, "sex": "unknown"},
    }, indent=1) + "\n")
    summary = _summary(records, entries)
    manifest = {
        "generator": "monai_dymo.data.brain_cohort",
        "seed": seed, "num_patients": n, "size": size, "fov_mm": fov_mm, "spacing_mm": spacing,
        "affine": affine.tolist(), "orientation": "RAS",
        "sources": [{"name": s.name, "replaced_real_lesion_voxels_2mm": s.replaced_voxels} for s in sources],
        "source_dir": str(source_folder),
        "classes": list(CLASSES), "sequences": list(SEQUENCES),
        "attribute_tables": {k: {"sequence": v["sequence"], "values": list(v["values"]),
                                 "p_given_class": [list(r) for r in v["p"]]} for k, v in ATTRIBUTE_TABLES.items()},
        "absent_rates": rates,
        "injected": {
            "corrupt_files": [{"patient_id": pids[i], "sequence": SEQUENCES[k], "kind": kind,
                               "path": f"images/{pids[i]}/{SEQUENCES[k]}.nii.gz"}
                              for (i, k), kind in sorted(corrupt.items())],
            "dicom_series": [{"patient_id": pids[i], "sequence": SEQUENCES[k], "path": f"images/{pids[i]}/{SEQUENCES[k]}"}
                             for (i, k) in sorted(dicom)],
            "clinical_rows_missing": sorted(pids[i] for i in missing_rows),
            "clinical_rows_all_blank": sorted(pids[i] for i in blank_rows),
            "image_free_patients": sorted(pids[i] for i in no_image),
        },
        "summary": summary,
        "patients": records,
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    readme_path = out / "README.md"
    readme_path.write_text(_readme(manifest))
    return {"root": out, "datalist": datalist_path, "clinical": clinical_path, "classes": classes_path,
            "manifest": manifest_path, "readme": readme_path}


def _summary(records: list[dict[str, Any]], entries: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    n = len(records)
    out: dict[str, Any] = {"splits": {k: len(v) for k, v in entries.items()}}
    out["class_counts"] = {split: [sum(e["label"] == c for e in v) for c in range(len(CLASSES))]
                           for split, v in entries.items()}
    out["absent_fraction"] = {s: round(sum(r["files"][s]["status"] == "absent" for r in records) / n, 4)
                              for s in SEQUENCES}
    out["unreadable_fraction"] = {
        s: round(sum(r["files"][s]["status"] in ("absent", "zero_bytes", "random_bytes", "truncated_gzip")
                     for r in records) / n, 4) for s in SEQUENCES}
    statuses = [r["clinical_status"] for r in records]
    out["clinical_status"] = {k: statuses.count(k) for k in ("complete", "partial", "all_blank", "row_missing")}
    out["complete_patients"] = sum(all(r["files"][s]["status"] in ("nifti", "dicom_series") for s in SEQUENCES)
                                   and r["clinical_status"] == "complete" for r in records)
    return out


def _readme(manifest: Mapping[str, Any]) -> str:
    s = manifest["summary"]
    inj = manifest["injected"]
    lines = [
        "# Synthetic brain MRI + clinical cohort (monai_dymo)",
        "",
        f"Generated by `monai_dymo.data.brain_cohort` (seed {manifest['seed']}) from the real brains "
        f"{', '.join(x['name'] for x in manifest['sources'])}: {manifest['num_patients']} patients, "
        f"{manifest['size']}^3 voxels of {manifest['spacing_mm']:.3g} mm (RAS, brain centre at the origin), int16.",
        "Each patient: one real brain, a random affine + elastic deformation, re-contrasting per sequence (gamma, bias",
        "field, scale, noise) and a synthetic lesion whose class shows differently in each sequence and in the clinical",
        "fields. The source brain's own tumour is replaced by mirrored healthy tissue; every class uses every source.",
        "",
        f"Classes (`label` index): {', '.join(f'{i} = {c}' for i, c in enumerate(manifest['classes']))}.",
        "",
        "| attribute | sequence | values | P(value given class), one row per class |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in manifest["attribute_tables"].items():
        lines.append(f"| {name} | {t['sequence']} | {' / '.join(t['values'])} | "
                     f"{'; '.join(' '.join(f'{p:.2f}' for p in row) for row in t['p_given_class'])} |")
    lines += [
        "",
        "Shared lesion geometry (number of blobs, radius, depth below the brain surface) and the clinical fields (age,",
        "sex, KPS, LDH) are weakly class dependent. Missingness does not depend on the class.",
        "",
        "## Files",
        "- `datalist.json`: MONAI `training` / `validation` / `testing` lists; per entry `patient_id`, a path relative to",
        "  this folder or `null` per sequence (a DICOM series is a folder path), and `label`.",
        "- `clinical.csv`: `patient_id,age,sex,kps,ldh`, rows shuffled; blanks, sentinels `ldh = -999`, `sex = unknown`.",
        "- `classes.json`: class names, modality names, clinical fields and sentinels.",
        "- `manifest.json`: generation parameters, everything injected, and per patient the source, lesion attributes",
        "  and geometry (world mm, RAS), transform, contrast and the complete clinical values before blanking.",
        "",
        "## Natural missingness",
        f"- splits {s['splits']}, classes per split {s['class_counts']}",
        f"- absent (null) fraction per sequence: {s['absent_fraction']}",
        f"- absent or unreadable fraction per sequence: {s['unreadable_fraction']}",
        f"- corrupt files: {len(inj['corrupt_files'])} "
        f"({', '.join(sorted({c['kind'] for c in inj['corrupt_files']}))})",
        f"- DICOM series folders: {len(inj['dicom_series'])}",
        f"- clinical rows: {s['clinical_status']}",
        f"- patients with every sequence readable and a complete clinical row: {s['complete_patients']}",
        "",
    ]
    return "\n".join(lines)