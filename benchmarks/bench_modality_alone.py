"""Is every modality alone at least as good as a linear model on it? The fusion network given one observed modality
(evaluate's ``single_<modality>`` columns) against a class-weighted logistic regression on the same modality
(``bench_linear_baseline.py``: 32 x 32 thumbnails for pictures, the encoded fields for a clinical group), on the
same split's patients who have that modality.

    python benchmarks/bench_linear_baseline.py --cohort C.yaml --json linear.json
    python benchmarks/bench_modality_alone.py --linear linear.json \\
        --per-patient runs/<cohort>/evaluate_testing_s0/per_patient.csv runs/<cohort>/evaluate_testing_s1/per_patient.csv

Balanced accuracy (%) per modality: the network's mean ± std over the given evaluations (e.g. training seeds) and
the linear model's; a row is marked when the network's mean is below the linear model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score


def network_alone(per_patient: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """``{modality: (balanced accuracy %, patients)}`` of the fusion network on each observed modality alone
    (``single_<modality>`` = -1 where the modality is missing)."""
    out = {}
    y = per_patient["label"].to_numpy()
    for col in (c for c in per_patient.columns if c.startswith("single_")):
        pred = per_patient[col].to_numpy()
        keep = pred >= 0
        if keep.any() and len(set(y[keep])) > 1:
            out[col[len("single_"):]] = (100 * balanced_accuracy_score(y[keep], pred[keep]), int(keep.sum()))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--linear", required=True, help="bench_linear_baseline.py --json output")
    p.add_argument("--per-patient", nargs="+", required=True, help="evaluate's per_patient.csv, one per run")
    p.add_argument("--split", choices=("validation", "testing"), default="testing",
                   help="the split the per_patient files are from (default testing)")
    args = p.parse_args(argv)

    linear = json.loads(Path(args.linear).read_text())["rows"]
    key = "test" if args.split == "testing" else "val"
    runs = [network_alone(pd.read_csv(f)) for f in args.per_patient]
    rows = []
    for m in sorted(set().union(*runs)):
        values = [r[m][0] for r in runs if m in r]
        lin = linear.get(f"{m} alone", {})
        ref = lin.get(f"{key}_bacc_observed", lin.get(f"{key}_bacc"))
        mean = float(np.mean(values))
        rows.append({"modality": m, "network": mean, "network_std": float(np.std(values, ddof=1)) if len(values) > 1
                     else 0.0, "runs": len(values), "patients": runs[0].get(m, (0, 0))[1], "linear": ref,
                     "below_linear": ref is not None and mean < ref - 1e-6})
    print(f"| modality | patients | network alone, balanced acc. ({len(runs)} runs) | logistic regression | |")
    print("|---|---|---|---|---|")
    for r in rows:
        lin = "n/a" if r["linear"] is None else f"{r['linear']:.1f}"
        mark = "below the linear model" if r["below_linear"] else ""
        print(f"| {r['modality']} | {r['patients']} | {r['network']:.1f} ± {r['network_std']:.1f} | {lin} | {mark} |")
    return rows


if __name__ == "__main__":
    main()
