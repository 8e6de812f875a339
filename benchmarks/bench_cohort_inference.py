"""Cohort inference speed: recover + encode + select on preprocessed tensors, and end to end from ``.nii.gz``.

Part 1 (the issue's target: >= 2 patients/s on a 2-core CPU at 96x96x96, four MRI sequences + clinical fields): the
default cohort's fusion and MoPoE recovery networks, built by the bundle's builders at ``--size`` (weights random:
speed does not depend on them), a calibration of the right shape, and preprocessed-size tensors with the default
cohort's missingness (each sequence missing for about a quarter of the patients). Timed: ``DyMoInferer`` (recovery of
the missing modalities, one encoding pass, batched greedy selection).

Part 2 (end to end): the default cohort's test split from its ``.nii.gz`` / DICOM files through the cohort
preprocessing (load, reorient, resize, normalise, clinical encoding) and the same inference, first with an empty
``PersistentDataset`` cache, then with the warm cache (what every later stage and run reads).

    python benchmarks/bench_cohort_inference.py [--size 96] [--patients 64] [--batch 8] [--threads 2]
        [--cohort outputs/brain_cohort]

Prints a table; nothing is written except the cache in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _spec(size: int, cohort_dir: Path):
    from monai_dymo.cohort import CohortSpec

    return CohortSpec.from_config(
        {
            "name": "bench",
            "datalist": str(cohort_dir / "datalist.json"),
            "clinical_csv": str(cohort_dir / "clinical.csv"),
            "classes": ["glioma-like", "metastasis-like", "meningioma-like"],
            "modalities": [
                *({"name": s, "kind": "image3d", "spatial_size": [size] * 3} for s in ("t1", "t1c", "t2", "flair")),
                {"name": "clinical", "kind": "clinical", "continuous": ["age", "kps", "ldh"], "categorical": ["sex"],
                 "sentinels": [-999]},
            ],
        }
    )


def _stats():
    from monai_dymo.transforms import ClinicalFieldStats

    rows = [{"age": 40 + i, "kps": 70 + i % 30, "ldh": 200 + 5 * i, "sex": "FM"[i % 2]} for i in range(20)]
    return ClinicalFieldStats.fit(rows, continuous=["age", "kps", "ldh"], categorical=["sex"])


def _calibration(net, num_classes: int):
    from monai_dymo import SubsetCalibration

    M = len(net.modalities)
    g = torch.Generator().manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(2**M, num_classes, net.proj_dim, generator=g), dim=-1)
    return SubsetCalibration(protos, torch.full((2**M, num_classes), 0.2), modalities=net.modalities)


def bench_tensors(size: int, patients: int, batch: int) -> dict:
    from monai_dymo import DyMoInferer
    from monai_dymo.cohort import build_cohort_fusion, build_cohort_recovery

    spec = _spec(size, ROOT / "outputs" / "brain_cohort")
    stats = _stats()
    net = build_cohort_fusion(spec, stats).eval()
    rec = build_cohort_recovery(spec, stats).eval()
    inferer = DyMoInferer(_calibration(net, spec.num_classes), recovery=rec)
    g = torch.Generator().manual_seed(0)
    present = torch.rand(patients, 5, generator=g) > 0.25
    present[:, 4] |= ~present[:, :4].any(1)
    data = {s: torch.randn(patients, 1, size, size, size, generator=g) for s in ("t1", "t1c", "t2", "flair")}
    data["clinical"] = torch.randn(patients, 4, generator=g)
    data["clinical"][:, 3] = (data["clinical"][:, 3] > 0).float()
    with torch.no_grad():  # warm-up
        inferer({k: v[:batch] for k, v in data.items()}, net, present=present[:batch])
        start = time.perf_counter()
        steps = 0
        for i in range(0, patients, batch):
            inferer({k: v[i : i + batch] for k, v in data.items()}, net, present=present[i : i + batch])
            steps += int(inferer.last_result.steps.sum())
        elapsed = time.perf_counter() - start
    return {"patients": patients, "seconds": elapsed, "patients_per_s": patients / elapsed,
            "missing_per_patient": float((~present).sum()) / patients, "accepted_per_patient": steps / patients}


def bench_end_to_end(size: int, batch: int, cohort_dir: Path, max_patients: int) -> dict | None:
    from monai.data import DataLoader

    from monai_dymo import DyMoInferer
    from monai_dymo.cohort import build_cohort_fusion, build_cohort_recovery, cohort_dataset, prepare_cohort
    from monai_dymo.engines import PrepareDyMoEvalBatch

    if not (cohort_dir / "datalist.json").is_file():
        return None
    spec = _spec(size, cohort_dir)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        prepare_cohort(spec, Path(tmp) / "prepared", stats_file=stats_file)
        net = build_cohort_fusion(spec, stats_file).eval()
        rec = build_cohort_recovery(spec, stats_file).eval()
        inferer = DyMoInferer(_calibration(net, spec.num_classes), recovery=rec)
        prepare = PrepareDyMoEvalBatch(spec.modality_names)
        for label in ("cold cache", "warm cache"):
            ds = cohort_dataset(spec, "testing", stats_file=stats_file, cache="disk", cache_dir=Path(tmp) / "cache",
                                max_patients=max_patients, require_labels=False)
            loader = DataLoader(ds, batch_size=batch, num_workers=0)
            start = time.perf_counter()
            n = 0
            with torch.no_grad():
                for b in loader:
                    inputs, _, _, kwargs = prepare(b)
                    inferer(inputs, net, **kwargs)
                    n += next(iter(inputs.values())).shape[0]
            elapsed = time.perf_counter() - start
            out[label] = {"patients": n, "seconds": elapsed, "patients_per_s": n / elapsed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cohort", type=Path, default=ROOT / "outputs" / "brain_cohort")
    parser.add_argument("--e2e-patients", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, volumes {args.size}^3, batch {args.batch}")
    t = bench_tensors(args.size, args.patients, args.batch)
    print(f"recover + encode + select on preprocessed tensors: {t['patients_per_s']:.2f} patients/s "
          f"({t['patients']} patients in {t['seconds']:.1f} s; {t['missing_per_patient']:.2f} missing and "
          f"{t['accepted_per_patient']:.2f} accepted modalities per patient)")
    e2e = bench_end_to_end(args.size, args.batch, args.cohort, args.e2e_patients)
    if e2e is None:
        print(f"end to end: skipped (no cohort at {args.cohort}; python -m monai_dymo.data brain-cohort)")
    else:
        for label, r in e2e.items():
            print(f"end to end from .nii.gz ({label}): {r['patients_per_s']:.2f} patients/s "
                  f"({r['patients']} patients in {r['seconds']:.1f} s)")
    print(json.dumps({"tensors": t, "end_to_end": e2e}))


if __name__ == "__main__":
    main()
