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

With the same model's probabilities learnt from the 240 training patients (:func:`learned_model`: counts and
Gaussian fits of what the generator drew for them, i.e. a learner of the right form with a perfect reading of the
images; printed second)::

                             its named attribute               every attribute it shows
    row                 training  validation     testing    training  validation     testing
    observed                91.2        91.7        76.7        92.1        93.3        86.7
    complete                93.3        98.3        91.7        92.1        98.3        91.7

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


def observed_sequences(patient: dict[str, Any], sequences: list[str]) -> list[str]:
    """The patient's sequences whose file every stage can read (natural missingness)."""
    return [s for s in sequences if patient["files"].get(s, {}).get("status") in READABLE]


def has_clinical(patient: dict[str, Any]) -> bool:
    """Whether the patient has a clinical row with at least one field filled in."""
    return patient.get("clinical_status") not in (None, "row_missing", "all_blank")


def usable_clinical(patient: dict[str, Any]) -> dict[str, float]:
    """The clinical values a stage can use: ``age`` / ``kps`` / ``ldh`` and ``female`` (1 / 0), blank and sentinel
    fields (``clinical_blank_fields`` / ``clinical_sentinel_fields``) left out."""
    values = patient.get("clinical_values") or {}
    unused = set(patient.get("clinical_blank_fields") or []) | set(patient.get("clinical_sentinel_fields") or [])
    usable = {f: float(values[f]) for f in ("age", "kps", "ldh") if f not in unused and values.get(f) is not None}
    if "sex" not in unused and values.get("sex") in ("F", "M"):
        usable["female"] = float(values["sex"] == "F")
    return usable


def generator_model(manifest: dict[str, Any]) -> dict[str, Any]:
    """The generator's own class-conditional probabilities (what it drew every patient from)."""
    return {
        "tables": {name: np.asarray(t["p_given_class"], dtype=float) for name, t in manifest["attribute_tables"].items()},
        "blobs": np.asarray(_BLOBS_P, dtype=float),
        "radius": lambda r: np.log([1 / (hi - lo) if lo <= r <= hi else 1e-12 for lo, hi in _RADIUS_MM]),
        "clinical": _CLINICAL,
    }


def learned_model(manifest: dict[str, Any], shows: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The same model with every probability estimated from the training split's patients as they are: attribute
    and blob-count tables from the counts where the patient's observed sequences show them (add-one smoothing),
    the main radius and the clinical fields as per-class Gaussians, the sex as a per-class frequency. The best a
    learner of the right form reaches with a perfect reading of the images and this many patients."""
    tables = manifest["attribute_tables"]
    train = [p for p in manifest["patients"] if p["split"] == "training"]
    counts = {name: np.ones((3, len(t["values"]))) for name, t in tables.items()}
    blobs, radius = np.ones((3, 3)), [[] for _ in range(3)]
    fields: dict[str, list[list[float]]] = {f: [[] for _ in range(3)] for f in ("age", "kps", "ldh", "female")}
    for p in train:
        c = int(p["label"])
        observed = observed_sequences(p, manifest["sequences"])
        shown = {a for s in observed for a in shows.get(s, ())}
        for name, t in tables.items():
            if name in shown:
                counts[name][c, t["values"].index(p["attributes"][name])] += 1
        if observed:
            blobs[c, p["attributes"]["num_blobs"] - 1] += 1
            radius[c].append(p["blobs"][0]["radius_mm"])
        if has_clinical(p):
            for f, x in usable_clinical(p).items():
                fields[f][c].append(x)
    gauss = [(float(np.mean(r)), float(np.std(r))) for r in radius]
    clinical = tuple({**{f: (float(np.mean(fields[f][c])), float(np.std(fields[f][c]))) for f in ("age", "kps", "ldh")},
                      "female": float(np.mean(fields["female"][c]))} for c in range(3))
    return {
        "tables": {name: k / k.sum(1, keepdims=True) for name, k in counts.items()},
        "blobs": blobs / blobs.sum(1, keepdims=True),
        "radius": lambda r: np.array([_normal_logpdf(r, m, sd) for m, sd in gauss]),
        "clinical": clinical,
    }


def log_likelihood(patient: dict[str, Any], model: dict[str, Any], sequences: list[str], clinical: bool,
                   geometry: bool, shows: dict[str, tuple[str, ...]], values_of: dict[str, Any]) -> np.ndarray:
    """``log p(evidence | class)`` ``[3]`` under ``model`` (:func:`generator_model` / :func:`learned_model`) from the
    attributes the named sequences show (``shows``), the geometry and the clinical fields the patient has
    (``clinical_blank_fields`` / ``clinical_sentinel_fields`` left out). ``values_of``: attribute name -> its values."""
    ll = np.zeros(3)
    shown = {a for s in sequences for a in shows.get(s, ())}
    for name, table in model["tables"].items():
        if name in shown:
            ll += np.log(table[:, values_of[name].index(patient["attributes"][name])])
    if geometry and sequences:
        ll += np.log(np.maximum(model["blobs"][:, patient["attributes"]["num_blobs"] - 1], 1e-12))
        ll += model["radius"](patient["blobs"][0]["radius_mm"])
    if clinical:
        params = model["clinical"]
        for field, x in usable_clinical(patient).items():
            if field == "female":
                ll += np.log([params[c]["female"] if x else 1 - params[c]["female"] for c in range(3)])
            else:
                ll += [_normal_logpdf(x, *params[c][field]) for c in range(3)]
    return ll


def ceilings(manifest: dict[str, Any], shows: dict[str, tuple[str, ...]] = SHOWS,
             learned: bool = False) -> dict[str, dict[str, float]]:
    """``{row: {split: accuracy %}}`` of the Bayes rule (see the module docstring); priors from the training split.
    ``shows``: the attributes each sequence is read for; ``learned``: probabilities estimated from the training split
    (:func:`learned_model`) instead of the generator's."""
    model = learned_model(manifest, shows) if learned else generator_model(manifest)
    values_of = {name: t["values"] for name, t in manifest["attribute_tables"].items()}
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
        observed, clinical = observed_sequences(p, sequences), has_clinical(p)
        add("observed", split, log_likelihood(p, model, observed, clinical, True, shows, values_of), label)
        full = {**p, "clinical_blank_fields": [], "clinical_sentinel_fields": []}
        add("complete", split, log_likelihood(full, model, sequences, True, True, shows, values_of), label)
        for s in observed:
            add(f"{s} alone", split, log_likelihood(p, model, [s], False, True, shows, values_of), label)
        if clinical:
            add("clinical alone", split, log_likelihood(p, model, [], True, False, shows, values_of), label)
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
    for title, learned in (("the generator's probabilities", False), ("probabilities learnt from the training split", True)):
        one, every = ceilings(manifest, named, learned), ceilings(manifest, SHOWS, learned)
        print(f"\nBayes rule with {title}")
        print(f"{'':16s}  {'its named attribute':^34s}  {'every attribute it shows':^34s}")
        print(f"{'row':16s}  " + "  ".join(f"{s:>10s}" for s in SPLITS * 2))
        for row in one:
            print(f"{row:16s}  " + "  ".join(f"{t[row][s]:10.1f}" for t in (one, every) for s in SPLITS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
