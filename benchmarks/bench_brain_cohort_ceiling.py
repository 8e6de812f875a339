"""Benchmark: the best accuracy any classifier can reach on each split of the generated brain cohort.

The brain cohort's class shows in its sequences through four attributes drawn with overlapping class probabilities
(``manifest.json``: ``attribute_tables``; each named after the sequence that shows it best, but T1c also shows the T1
signal, and the oedema's extent shows in every sequence: :data:`SHOWS`), in the lesion geometry every image shows (number of blobs, main radius) and
in the clinical fields (class-conditional Gaussians for age, KPS, LDH, a Bernoulli for sex). This benchmark reads
what the generator drew for every patient (``manifest.json``, which no stage of the product reads) and applies the
Bayes rule with the generator's own probabilities: the accuracy of a perfect reader of every attribute, i.e. the
ceiling of any trained network on the same patients (a small under-estimate: the lesion's depth, also
class-dependent, is left out).

Rows, per split:

- ``observed``: each patient's observed modalities only (natural missingness: absent or unreadable files, blank or
  sentinel clinical fields are not used), the ceiling of "discard missing" (and of DyMo without recoveries);
- ``complete``: every modality of every patient (before missingness), the ceiling with perfect recoveries;
- ``<sequence> alone``: the attributes that sequence shows and the lesion geometry, on the patients with it observed (the
  ceiling of ``evaluate``'s ``single_modality``); ``clinical alone`` likewise.

Two readers: each sequence read for the one attribute ``attribute_tables`` names for it, and for every attribute its
voxels show (:data:`SHOWS`; the oedema's intensity in T1 / T1c is 0.85 of the brain's: faint but there). The truth
for a network lies between the two.

Figures (default cohort, seed 0; ``python benchmarks/bench_brain_cohort_ceiling.py``; % of patients)::

                             its named attribute               every attribute it shows
    row                 training  validation     testing    training  validation     testing
    observed                91.2        91.7        80.0        92.9        93.3        86.7
    complete                94.2        96.7        93.3        94.2        96.7        93.3
    t1 alone                73.5        75.0        77.3        72.4        86.4        84.1
    t1c alone               69.4        60.5        74.4        87.2        86.8        93.0
    t2 alone                75.9        80.0        69.6        79.1        90.0        82.6
    flair alone             75.6        81.8        65.9        75.6        81.8        65.9
    clinical alone          61.3        65.5        49.2        61.3        65.5        49.2

The test split's 60 patients are harder than the validation's: with their natural missingness a perfect reader of the
named attributes is right for 48 of 60 (80.0 %), of every shown attribute for 52 (86.7 %), against 55-56 of 60 on
validation. The Bayes rule is the best classifier in expectation; on 40-60 patients a learned model can beat it by a
few patients by chance.

Usage::

    python benchmarks/bench_brain_cohort_ceiling.py [--cohort outputs/brain_cohort]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_dymo.data.brain_cohort import _BLOBS_P, _CLINICAL, _RADIUS_MM  # noqa: E402

SPLITS = ("training", "validation", "testing")
READABLE = ("nifti", "dicom_series")  # other statuses are absent or corrupt files: missing for every stage
#: the attributes each sequence's voxels show (the generator's rendering: T1c multiplies the T1 lesion signal, and the
#: oedema has its own intensity in every sequence), beyond the one attribute ``attribute_tables`` names per sequence
SHOWS = {"t1": ("t1_signal", "oedema"), "t1c": ("enhancement", "t1_signal", "oedema"), "t2": ("t2_signal", "oedema"),
         "flair": ("oedema",)}


def _normal_logpdf(x: float, mean: float, sd: float) -> float:
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))


def log_likelihood(patient: dict[str, Any], tables: dict[str, Any], sequences: list[str], clinical: bool,
                   geometry: bool, shows: dict[str, tuple[str, ...]] = SHOWS) -> np.ndarray:
    """``log p(evidence | class)`` ``[3]`` from the attributes the named sequences show (:data:`SHOWS`), the geometry and the clinical
    fields the patient has (``clinical_blank_fields`` / ``clinical_sentinel_fields`` left out)."""
    ll = np.zeros(3)
    shown = {a for s in sequences for a in shows.get(s, ())}
    for name, table in tables.items():
        if name in shown:
            v = table["values"].index(patient["attributes"][name])
            ll += np.log([table["p_given_class"][c][v] for c in range(3)])
    if geometry and sequences:
        nb = patient["attributes"]["num_blobs"] - 1
        ll += np.log([max(_BLOBS_P[c][nb], 1e-12) for c in range(3)])
        r = patient["blobs"][0]["radius_mm"]
        ll += np.log([1 / (hi - lo) if lo <= r <= hi else 1e-12 for lo, hi in _RADIUS_MM])
    values = patient.get("clinical_values") or {}
    if clinical and values:
        unused = set(patient.get("clinical_blank_fields") or []) | set(patient.get("clinical_sentinel_fields") or [])
        for field in ("age", "kps", "ldh"):
            if field not in unused and values.get(field) is not None:
                ll += [_normal_logpdf(float(values[field]), *_CLINICAL[c][field]) for c in range(3)]
        if "sex" not in unused and values.get("sex") in ("F", "M"):
            ll += np.log([_CLINICAL[c]["female"] if values["sex"] == "F" else 1 - _CLINICAL[c]["female"]
                          for c in range(3)])
    return ll


def ceilings(manifest: dict[str, Any], shows: dict[str, tuple[str, ...]] = SHOWS) -> dict[str, dict[str, float]]:
    """``{row: {split: accuracy %}}`` of the Bayes rule (see the module docstring); priors from the training split.
    ``shows``: the attributes each sequence is read for."""
    tables = manifest["attribute_tables"]
    sequences = list(manifest["sequences"])
    patients = manifest["patients"]
    counts = np.bincount([p["label"] for p in patients if p["split"] == "training"], minlength=3)
    log_prior = np.log(counts / counts.sum())
    rows: dict[str, dict[str, list[bool]]] = {}

    def add(row: str, split: str, ll: np.ndarray, label: int) -> None:
        rows[row][split].append(int(np.argmax(log_prior + ll)) == label)

    for row in ("observed", "complete", *(f"{s} alone" for s in sequences), "clinical alone"):
        rows[row] = {s: [] for s in SPLITS}
    for p in patients:
        split, label = p["split"], int(p["label"])
        if split not in SPLITS:
            continue
        observed = [s for s in sequences if p["files"].get(s, {}).get("status") in READABLE]
        has_clinical = p.get("clinical_status") not in (None, "row_missing", "all_blank")
        add("observed", split, log_likelihood(p, tables, observed, has_clinical, True, shows), label)
        full = {**p, "clinical_blank_fields": [], "clinical_sentinel_fields": []}
        add("complete", split, log_likelihood(full, tables, sequences, True, True, shows), label)
        for s in observed:
            add(f"{s} alone", split, log_likelihood(p, tables, [s], False, True, shows), label)
        if has_clinical:
            add("clinical alone", split, log_likelihood(p, tables, [], True, False, shows), label)
    return {row: {s: 100.0 * float(np.mean(v)) if v else float("nan") for s, v in by_split.items()}
            for row, by_split in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", type=Path, default=ROOT / "outputs" / "brain_cohort")
    args = p.parse_args(argv)
    path = args.cohort / "manifest.json"
    if not path.is_file():
        p.error(f"no manifest.json in {args.cohort}: generate the cohort with `python -m monai_dymo.data brain-cohort`")
    manifest = json.loads(path.read_text())
    named = {t["sequence"]: (name,) for name, t in manifest["attribute_tables"].items()}
    one, every = ceilings(manifest, named), ceilings(manifest, SHOWS)
    print(f"{'':16s}  {'its named attribute':^34s}  {'every attribute it shows':^34s}")
    print(f"{'row':16s}  " + "  ".join(f"{s:>10s}" for s in SPLITS * 2))
    for row in one:
        print(f"{row:16s}  " + "  ".join(f"{t[row][s]:10.1f}" for t in (one, every) for s in SPLITS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
