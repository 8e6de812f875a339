"""Time writing the DyMo report (CSV, JSON, data dictionary, summary PNG, HTML) for a big synthetic cohort.

    python benchmarks/bench_report.py --patients 10000 --modalities 5 --pages 100 --out /tmp/bench_report

Records are synthetic (random observed sets, rewards and decisions in the shared record format, 1 % errors), so this
measures the report writer only. Prints the seconds taken and the size of the cohort page.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from monai_dymo.report import write_report


def synthetic_records(n: int, modalities: list[str], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pid = f"patient{i:06d}"
        if rng.random() < 0.01:
            out.append({"patient_id": pid, "observed": [], "recovered": [], "selected": [], "accepted": [],
                        "rejected": [], "unused": [], "quality": None, "log_ics": None, "ics": None,
                        "prediction": None, "probability": None, "steps": 0, "error": "no modality observed",
                        "reasons": {m: "absent" for m in modalities}, "rewards": {}, "trajectory": [], "label": i % 3})
            continue
        observed = [m for m in modalities if rng.random() < 0.5] or [modalities[0]]
        missing = [m for m in modalities if m not in observed]
        accepted, rejected, rewards, traj = [], [], {m: [] for m in missing}, []
        q = rng.uniform(0.5, 0.99)
        traj.append({"step": 0, "added": None, "quality": q, "log_ics": -1.0, "ics": 0.37})
        left = list(missing)
        step = 0
        while left:
            r = {m: rng.uniform(-0.3, 0.05) for m in left}
            for m in left:
                rewards[m].append(r[m])
            best = max(left, key=r.get)
            for m in [m for m in left if r[m] < 0]:
                rejected.append({"modality": m, "step": step, "reward": r[m]})
                left.remove(m)
            if r[best] <= 0:
                break
            accepted.append({"modality": best, "step": step, "reward": r[best]})
            left.remove(best)
            q = min(1.0, q + r[best])
            traj.append({"step": step + 1, "added": best, "quality": q, "log_ics": -1.0, "ics": 0.37})
            step += 1
        out.append({
            "patient_id": pid, "observed": observed, "recovered": missing,
            "selected": observed + [a["modality"] for a in accepted], "accepted": accepted, "rejected": rejected,
            "unused": left, "quality": q, "log_ics": -1.0, "ics": 0.37, "prediction": i % 3,
            "probability": q, "steps": len(accepted), "error": None, "label": (i + (rng.random() < 0.1)) % 3,
            "reasons": {m: "observed" if m in observed else f"file not found: /data/{pid}/{m}.nii.gz"
                        for m in modalities},
            "rewards": rewards, "trajectory": traj,
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=10000)
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--pages", type=int, default=100)
    p.add_argument("--out", default="/tmp/bench_report")
    args = p.parse_args()
    modalities = [f"m{i}" for i in range(args.modalities)]
    records = synthetic_records(args.patients, modalities)
    t0 = time.perf_counter()
    paths = write_report(records, args.out, modalities, max_patient_pages=args.pages).paths
    dt = time.perf_counter() - t0
    size = os.path.getsize(paths["html"]) / 2**20
    print(f"{args.patients} patients, {args.modalities} modalities, {args.pages} pages: {dt:.1f} s; "
          f"cohort page {size:.1f} MiB; files: {', '.join(paths.values())}")


if __name__ == "__main__":
    main()
