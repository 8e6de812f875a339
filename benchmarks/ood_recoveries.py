"""Are accepted recoveries that break a prediction out of distribution? (issue 18, item 0; analysis only)

For every held-out PolyMNIST sample (validation split, one seeded pattern at ``--rate``) DyMo runs with the method
page's rule (margin 0). For each recovered modality that DyMo evaluated, the distance of its encoder tokens to the
distribution of that modality's tokens on *acquired* training images is measured: per modality a diagonal Gaussian
over the token vectors (mean and variance per token position and channel, fitted on ``--train-samples`` training
samples), distance = mean standardised squared deviation, reported as its percentile among the training samples'
own distances (100 = further than every training image). Printed: the percentile distribution for recoveries DyMo
accepted, split by what accepting did to the patient's prediction against discarding (fixed, broken, changed
nothing), for recoveries DyMo rejected, and for the observed (acquired) modalities of the held-out samples.

Usage (from the project root; the training split built, e.g. the first 10,000 samples into outputs/polymnist_train10k)::

    python benchmarks/ood_recoveries.py --threads 1 --rate 0.8 --train outputs/polymnist_train10k/polymnist_train.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader

from monai_dymo.data import PolyMNISTDataset
from monai_dymo.data.missing_patterns import write_holdout_pattern
from monai_dymo.step import run_dymo
from trust_benchmark import load_polymnist_bundle  # noqa: E402  (a script beside this one)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--train", default=str(ROOT / "outputs" / "polymnist_train10k" / "polymnist_train.npz"))
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--dataset-dir", default=str(ROOT / "outputs" / "polymnist"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    net, rec, cal = load_polymnist_bundle(args.dataset_dir)
    names = tuple(net.modalities)

    with torch.no_grad():
        # ---- per-modality token statistics of acquired training images
        train = PolyMNISTDataset(args.train, max_samples=args.train_samples)
        toks = {m: [] for m in names}
        for batch in DataLoader(train, batch_size=500):
            t = net.encode({m: batch[m] for m in names})
            for m in names:
                toks[m].append(t[m].flatten(1).double())
        toks = {m: torch.cat(v) for m, v in toks.items()}
        mu = {m: v.mean(0) for m, v in toks.items()}
        sd = {m: v.std(0).clamp_min(1e-6) for m, v in toks.items()}

        def dist(m: str, t: torch.Tensor) -> torch.Tensor:
            return (((t.flatten(1).double() - mu[m]) / sd[m]) ** 2).mean(1)

        ref = {m: np.sort(dist(m, toks[m]).numpy()) for m in names}

        def pct(m: str, d: torch.Tensor) -> np.ndarray:
            return 100.0 * np.searchsorted(ref[m], d.numpy()) / ref[m].size

        # ---- held-out selection with the method page's rule
        val = Path(args.dataset_dir) / "polymnist_val.npz"
        n_val = PolyMNISTDataset(val).labels.shape[0]
        csv = write_holdout_pattern(n_val, names, [args.rate], args.seed, Path("/tmp") / f"ood_val_{args.seed}.csv")
        groups: dict[str, list[float]] = {"accepted, fixed": [], "accepted, broke": [], "accepted, no change": [],
                                          "rejected": [], "observed (acquired)": []}
        for batch in DataLoader(PolyMNISTDataset(val, pattern_csv=csv), batch_size=500):
            present = batch["present"].bool()
            res = run_dymo(net, cal, {m: batch[m] for m in names}, present, recovery=rec, temperature=0.1,
                           compare=True, keep_inputs=True)
            tokens = net.encode(res.inputs)  # the recovered inputs DyMo saw, for the token distances
            y = batch["label"]
            base_ok = res.discard_logits.argmax(-1) == y
            dymo_ok = res.logits.argmax(-1) == y
            outcome = np.where(dymo_ok & ~base_ok, "accepted, fixed",
                               np.where(~dymo_ok & base_ok, "accepted, broke", "accepted, no change"))
            for i, m in enumerate(names):
                d = pct(m, dist(m, tokens[m]))
                for b in res.accepted[:, i].nonzero().squeeze(1).tolist():
                    groups[str(outcome[b])].append(d[b])
                groups["rejected"] += d[res.rejected[:, i].numpy()].tolist()
                groups["observed (acquired)"] += d[present[:, i].numpy()].tolist()
    print(f"validation split, rate {args.rate}, pattern seed {args.seed}; token-distance percentile among acquired "
          f"training images (100 = further than all {args.train_samples})")
    print("group | n | median | 90th pct | share above the 99th training percentile")
    for g, v in groups.items():
        a = np.asarray(v)
        if a.size:
            print(f"{g} | {a.size} | {np.median(a):.1f} | {np.percentile(a, 90):.1f} | {100 * (a > 99).mean():.1f} %")
        else:
            print(f"{g} | 0 | - | - | -")


if __name__ == "__main__":
    main()
