"""Benchmark: what a sequence's region holds, read by a linear probe on fixed intensity features (no network trained).

Each class of the default brain cohort shows one attribute per sequence (FLAIR: the oedema's extent relative to the
lesion, small / medium / large; T1c: enhancement; T2: signal; T1: signal), drawn with overlapping class
probabilities. For every patient with the sequence observed, the region of interest is read as the bundle reads it
(its cache: RAS, 2.25 mm, z-scored, 40^3 about the lesion) and summarised by
:class:`monai_dymo.networks.IntensityHistogram` (the histogram token's features) over the whole region
(``--shells 1``) or per concentric shell; a logistic regression (scikit-learn, standardised features) is fitted on the
training split to (a) the generator's attribute (``manifest.json``; only this benchmark reads it) and (b) the class,
and scored on validation and test. "attribute reader" is the class a perfect reader of the attribute would give
(the most frequent training class of each attribute value): the ceiling of that sequence alone.

Figures (default cohort, seed 0, ``python benchmarks/bench_sequence_attribute_probe.py --sequences flair t1c t2
t1``; validation / test, % of the patients with the sequence observed)::

    sequence  shells  attribute (C 0.3)  class (C 0.03)  attribute reader -> class  (patients)
    flair          1        61.4 / 46.3     59.1 / 41.5                77.3 / 58.5  (44 / 41)
    flair          8        90.9 / 82.9     70.5 / 56.1                77.3 / 58.5
    t1c            1        34.2 / 48.8     39.5 / 34.9                57.9 / 55.8  (38 / 43)
    t1c            8        71.1 / 83.7     71.1 / 69.8                57.9 / 55.8
    t2             1        46.0 / 32.6     40.0 / 30.4                76.0 / 69.6  (50 / 46)
    t2             8        82.0 / 84.8     66.0 / 71.7                76.0 / 69.6
    t1             1        54.5 / 50.0     50.0 / 38.6                68.2 / 75.0  (44 / 44)
    t1             8        79.5 / 81.8     70.5 / 63.6                68.2 / 75.0

The oedema's extent is read from how far out each intensity band reaches about the lesion (8 shells), not from the
region's histogram as a whole, and not by the encoders of release 0.6 (FLAIR alone 50 %): their 4 shells average a
10^3 feature map.

Usage::

    python benchmarks/bench_sequence_attribute_probe.py [--sequences flair t1c t2 t1] [--shells 1 8] [--bins 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fusion_recipe import BUNDLE, bundle_spec  # noqa: E402

from monai_dymo.cohort import cohort_dataset  # noqa: E402
from monai_dymo.networks import IntensityHistogram  # noqa: E402

ATTRIBUTE = {"flair": "oedema", "t1c": "enhancement", "t2": "t2_signal", "t1": "t1_signal"}
SPLITS = ("training", "validation", "testing")


def features(spec, cohort: Path, sequence: str, shells: int, bins: int, cache_dir: Path,
             stats: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{split: (features [n, shells * bins], attribute values [n], labels [n])}`` over the patients with
    ``sequence`` observed."""
    manifest = {p["patient_id"]: p for p in json.loads((cohort / "manifest.json").read_text())["patients"]}
    hist = IntensityHistogram(bins, -3.0, 6.0, num_shells=shells)
    index = list(spec.modality_names).index(sequence)
    out = {}
    for split in SPLITS:
        ds = cohort_dataset(spec, split, stats_file=stats, cache="disk", cache_dir=cache_dir)
        x, attr, y = [], [], []
        for i in range(len(ds)):
            sample = ds[i]
            if not bool(sample["present"][index]):
                continue
            x.append(hist(torch.as_tensor(sample[sequence])[None].float()).numpy()[0])
            attr.append(manifest[sample["patient_id"]]["attributes"][ATTRIBUTE[sequence]])
            y.append(int(sample["label"]))
        out[split] = (np.asarray(x), np.asarray(attr), np.asarray(y))
    return out


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", type=Path, default=ROOT / "outputs" / "brain_cohort")
    p.add_argument("--stats", type=Path, default=BUNDLE / "models" / "brain_mri_demo" / "clinical_stats.json")
    p.add_argument("--cache-dir", type=Path, default=BUNDLE / "runs" / "brain_mri_demo" / "cache")
    p.add_argument("--sequences", nargs="+", default=["flair"], choices=sorted(ATTRIBUTE))
    p.add_argument("--shells", nargs="+", type=int, default=[1, 8])
    p.add_argument("--bins", type=int, default=10)
    args = p.parse_args(argv)
    if not (args.cohort / "manifest.json").is_file():
        p.error(f"no manifest.json in {args.cohort}: generate the cohort with `python -m monai_dymo.data brain-cohort`")
    torch.set_num_threads(1)
    spec, _ = bundle_spec(args.cohort, None)
    print("sequence  shells  attribute C0.3 val/test  class C0.03 val/test  attribute reader val/test  (n val/test)")
    for seq in args.sequences:
        for shells in args.shells:
            data = features(spec, args.cohort, seq, shells, args.bins, args.cache_dir, args.stats)
            x_tr, a_tr, y_tr = data["training"]
            attr_clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=5000)).fit(x_tr, a_tr)
            cls_clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.03, max_iter=5000)).fit(x_tr, y_tr)
            reader = {a: int(np.bincount(y_tr[a_tr == a], minlength=3).argmax()) for a in set(a_tr)}
            cells = []
            for fn in (lambda x, a, y: attr_clf.score(x, a), lambda x, a, y: cls_clf.score(x, y),
                       lambda x, a, y: float(np.mean([reader.get(v, -1) == t for v, t in zip(a, y)]))):
                cells.append(" / ".join(f"{100 * fn(*data[s]):.1f}" for s in ("validation", "testing")))
            n = " / ".join(str(len(data[s][2])) for s in ("validation", "testing"))
            print(f"{seq:8s}  {shells:6d}  {cells[0]:>23s}  {cells[1]:>20s}  {cells[2]:>25s}  ({n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
