"""PolyMNIST test-split check of the held-out guarantees (issue 18): DyMo with the certified margin vs discarding the
missing modalities, and the refer flag's coverage and error among patients not referred.

For each test missing-pattern file (rate x seed) one margin-0 selection per sample gives the prediction at every margin
(:func:`monai_dymo.certification.collect_outcomes`), so one pass prints discarding, DyMo at the calibration file's
certified margin, DyMo at the method page's rule (margin 0), the paired fixed / broken counts, and, for each
``--refer-alpha``, the refer threshold certified on the calibration file's held-out outcomes with the test coverage and
test error among patients not referred.

Usage (from the project root, PolyMNIST built into outputs/polymnist with the test patterns)::

    python benchmarks/trust_benchmark.py --threads 1 --rates 0.2 0.4 0.6 0.8 --seeds 100 101 --refer-alpha 0.1 0.01
    python benchmarks/trust_benchmark.py --calibration /tmp/calibration_rate0.8.pt --rates 0.8 --seeds 100 101
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from monai_dymo.certification import collect_outcomes, outcomes_at_margin, refer_for_margin

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "polymnist_dymo"


def load_polymnist_bundle(dataset_dir: str, calibration_file: str | None = None):
    """The PolyMNIST bundle's fusion and recovery networks with their shipped weights (eval mode, CPU) and its
    calibration (``calibration_file`` instead of the bundle's when given): ``(network, recovery, calibration)``."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "common.yaml")])
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": dataset_dir, "device": "$torch.device('cpu')"})
    if calibration_file:
        parser["calibration_file"] = calibration_file
    net = parser.get_parsed_content("network")
    parser.get_parsed_content("load_fusion_weights")
    rec = parser.get_parsed_content("trained_recovery")
    return net.eval(), rec, parser.get_parsed_content("calibration")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", default=None, help="calibration file (default: the bundle's)")
    p.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.4, 0.6, 0.8])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--refer-alpha", nargs="+", type=float, default=[0.1, 0.01])
    p.add_argument("--refer-delta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset-dir", default=str(ROOT / "outputs" / "polymnist"))
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    net, rec, cal = load_polymnist_bundle(args.dataset_dir, args.calibration)
    cert = cal.certification
    if cert is None:
        raise SystemExit("the calibration file has no certification; run the bundle's certify config first")
    margin = float(cert["margin"])
    print(f"certified margin {margin:g} on {cert['num_patients']} held-out patients ({cert['source']})")

    from monai.data import DataLoader

    from monai_dymo.data import PolyMNISTDataset, pattern_filename

    rows = []
    header = ("rate seed | discard | DyMo certified | fixed/broken | DyMo margin 0 | fixed/broken | "
              + " | ".join(f"refer a={a:g}: thr, cov, err" for a in args.refer_alpha))
    print(header)
    for rate in args.rates:
        for seed in args.seeds:
            ds = PolyMNISTDataset(Path(args.dataset_dir) / "polymnist_test.npz", pattern_csv=Path(args.dataset_dir)
                                  / "patterns" / pattern_filename(rate, seed))
            out = collect_outcomes(net, cal, DataLoader(ds, batch_size=512), recovery=rec, progress=False)
            y = out["label"]
            base = out["prefix_prediction"][:, 0] == y
            row = {"rate": rate, "seed": seed, "n": int(y.size), "discard": float(base.mean())}
            for name, m in (("certified", margin), ("margin0", 0.0)):
                pred, prob, k = outcomes_at_margin(out, m)
                ok = pred == y
                row[name] = {"accuracy": float(ok.mean()), "fixed": int((ok & ~base).sum()),
                             "broken": int((~ok & base).sum()), "accepted_per_sample": float(k.mean())}
            pred, prob, _ = outcomes_at_margin(out, margin)
            ok = pred == y
            row["refer"] = {}
            for a in args.refer_alpha:
                rule = refer_for_margin(cert, margin, "certified", a, args.refer_delta)
                keep = prob >= rule["threshold"]
                row["refer"][a] = {"threshold": rule["threshold"], "holdout_coverage": rule["holdout_coverage"],
                                   "coverage": float(keep.mean()),
                                   "error_not_referred": float((~ok[keep]).mean()) if keep.any() else None}
            rows.append(row)
            c, z = row["certified"], row["margin0"]
            ref = " | ".join(
                f"{r['threshold']:.6g}, {100 * r['coverage']:.1f}%, "
                + ("n/a" if r["error_not_referred"] is None else f"{100 * r['error_not_referred']:.2f}%")
                for r in row["refer"].values()
            )
            print(f"{rate:g} {seed} | {100 * row['discard']:.2f} | {100 * c['accuracy']:.2f} | "
                  f"{c['fixed']}/{c['broken']} | {100 * z['accuracy']:.2f} | {z['fixed']}/{z['broken']} | {ref}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=lambda v: None if isinstance(v, float)
                                              and math.isinf(v) else v))


if __name__ == "__main__":
    main()
