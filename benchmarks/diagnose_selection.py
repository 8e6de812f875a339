"""PolyMNIST selection diagnostics: where DyMo gains or loses against discarding the missing modalities.

For one missing-pattern file (by default a fresh seeded pattern on the *validation* split, so that weights can be
compared without touching the test split the bundle's results table uses) and a set of bundle weights, prints:

- accuracy of discarding the missing modalities (observed only), using every recovery, DyMo, the complete-data upper
  bound and, with ``--oracle``, the best any selection could do (some superset of the observed modalities, recovered
  ones added, classified correctly; label used, so an upper bound, not a method);
- how many patients DyMo *fixed* (observed-only wrong, DyMo right) and *broke* (the reverse), and the mean number of
  recoveries it accepted;
- with ``--margins``, the same for several reward margins ``delta`` (accept a recovery only if its reward is
  ``> delta``; 0 is the method page's rule), one row per margin, from the same recoveries;
- with ``--recovered-calibration N``, the same with a calibration fitted on the first ``N`` training samples with
  recovered modalities in place (a seeded missing pattern at ``--rate`` on the training split, each missing modality
  recovered from the observed ones; every subset then mixes acquired and recovered inputs as at inference);
- with ``--recovery-draws K``, two rules that test whether an accepted recovery is *evidence*: the missing
  modalities are also decoded from ``K`` random draws of the observed posterior ``q_O`` (instead of its mean) and
  DyMo is run on each; *stable*: DyMo's answer is kept only if every draw gives the same class, else the observed
  modalities decide; *vote*: the majority class over the mean and the ``K`` draws;
- with ``--readability``, the fusion network's accuracy on a single modality recovered from one observed modality
  (rows: the observed modality; diagonal: the observed modality itself), i.e. how well the fusion network reads
  recoveries.

Usage (from the project root)::

    python benchmarks/diagnose_selection.py --threads 1
    python benchmarks/diagnose_selection.py --fusion runs/fusion.pt --calibration runs/calibration.pt \\
        --recovery runs/recovery.pt --rate 0.6 --oracle --readability
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_dymo import SubsetCalibration  # noqa: E402
from monai_dymo.calibration import fit_calibration  # noqa: E402
from monai_dymo.data import PolyMNISTDataset, generate_pattern_files, load_polymnist_npz, pattern_filename  # noqa: E402
from monai_dymo.step import zero_missing  # noqa: E402
from monai_dymo.selection import select_modalities  # noqa: E402
from monai_dymo.subsets import all_subset_masks  # noqa: E402

BUNDLE = ROOT / "bundles" / "polymnist_dymo"


def build_networks(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, SubsetCalibration]:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "common.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    calibration = SubsetCalibration.load(args.calibration)
    parser["network_def"]["metric"] = calibration.metric  # the projection follows the calibration's metric
    for key, value in json.loads(args.fusion_def).items():  # e.g. the reference recipe's network
        parser["network_def"][key] = value
    fusion = parser.get_parsed_content("network")
    fusion.load_state_dict(torch.load(args.fusion, map_location="cpu", weights_only=True))
    state = torch.load(args.recovery, map_location="cpu", weights_only=True)
    if int(state.get("expert_parametrization_code", 0)) == 1:  # weights trained with natural-parameter experts
        parser["recovery_def"]["expert_parametrization"] = "natural"
    recovery = parser.get_parsed_content("recovery")
    recovery.load_state_dict(state)
    return fusion.eval(), recovery.eval(), calibration


@torch.no_grad()
def recover_from_draw(recovery, inputs, present, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Missing modalities decoded from one random draw ``z ~ q_O`` (the network's own recoveries use the mean)."""
    mu, logvar = recovery.posterior(inputs, present)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
    out = dict(inputs)
    for i, name in enumerate(recovery.modalities):
        rows = (~present[:, i]).nonzero().squeeze(1)
        if rows.numel():
            out[name] = inputs[name].clone()
            out[name][rows] = recovery.output_to_mean(name, recovery.decode(name, z[rows]))
    return out


@torch.no_grad()
def compare(
    fusion, recovery, calibration, loader, oracle: bool, margins=(0.0,), draws: int = 0
) -> list[dict[str, float]]:
    """One result row per reward margin (the baselines repeat on every row)."""
    mods = tuple(fusion.modalities)
    keys = ("observed_only", "all_recovered", "dymo", "complete", "oracle", "fixed", "broke")
    if draws:
        keys += ("dymo_stable", "stable_fixed", "stable_broke", "dymo_vote", "vote_fixed", "vote_broke")
    generator = torch.Generator().manual_seed(12345)
    per_margin = {d: dict.fromkeys(keys, 0) for d in margins}
    accepted = dict.fromkeys(margins, 0.0)
    total = 0
    subsets = all_subset_masks(len(mods))  # [2^M - 1, M], every non-empty subset
    for batch in loader:
        true = {m: batch[m].as_subclass(torch.Tensor) for m in mods}
        present = batch["present"].as_subclass(torch.Tensor).bool()
        labels = batch["label"].as_subclass(torch.Tensor).long().reshape(-1)
        hidden = zero_missing(true, present)
        tokens = fusion.encode(recovery(hidden, present))
        draw_tokens = [fusion.encode(recover_from_draw(recovery, hidden, present, generator)) for _ in range(draws)]
        observed_pred = fusion.fuse(tokens, present)[0].argmax(-1)
        observed = observed_pred == labels
        all_rec = int((fusion.fuse(tokens, torch.ones_like(present))[0].argmax(-1) == labels).sum())
        complete = int((fusion(true)[0].argmax(-1) == labels).sum())
        best_superset = 0
        if oracle:
            right = torch.stack([fusion.fuse(tokens, s.expand_as(present))[0].argmax(-1) == labels for s in subsets], 1)
            superset = (subsets[None] | present[:, None]).eq(subsets[None]).all(-1)  # subset contains the observed
            best_superset = int((right & superset).any(1).sum())
        for delta in margins:
            counts = per_margin[delta]
            result = select_modalities(fusion.fuse, tokens, present, calibration, modalities=mods, margin=delta)
            dymo = result.logits.argmax(-1) == labels
            counts["observed_only"] += int(observed.sum())
            counts["dymo"] += int(dymo.sum())
            counts["all_recovered"] += all_rec
            counts["complete"] += complete
            counts["oracle"] += best_superset
            counts["fixed"] += int((~observed & dymo).sum())
            counts["broke"] += int((observed & ~dymo).sum())
            accepted[delta] += float(result.accepted.sum())
            if draws:
                pred = result.logits.argmax(-1)
                preds = torch.stack(
                    [pred]
                    + [
                        select_modalities(fusion.fuse, t, present, calibration, modalities=mods, margin=delta)
                        .logits.argmax(-1)
                        for t in draw_tokens
                    ],
                    1,
                )  # [B, 1 + K]
                stable = torch.where((preds == pred[:, None]).all(1), pred, observed_pred) == labels
                vote = torch.mode(preds, dim=1).values == labels
                for name, right in (("stable", stable), ("vote", vote)):
                    counts[f"dymo_{name}"] += int(right.sum())
                    counts[f"{name}_fixed"] += int((~observed & right).sum())
                    counts[f"{name}_broke"] += int((observed & ~right).sum())
        total += labels.shape[0]
    rows = []
    for delta in margins:
        counts = per_margin[delta]
        out = {"margin": delta}
        out.update({k: 100.0 * v / total for k, v in counts.items() if not k.endswith(("fixed", "broke"))})
        out.update({k: v for k, v in counts.items() if k.endswith(("fixed", "broke"))})
        out["accepted_per_patient"] = accepted[delta] / total
        out["patients"] = total
        if not oracle:
            out.pop("oracle")
        rows.append(out)
    return rows


@torch.no_grad()
def recovered_calibration(fusion, recovery, npz: Path, rate: float, num_samples: int, metric: str):
    """Calibration fitted on ``num_samples`` training samples whose missing modalities (seeded pattern at ``rate``)
    are replaced by their recoveries."""
    mods = list(fusion.modalities)
    with tempfile.TemporaryDirectory() as tmp:
        generate_pattern_files(num_samples, mods, [rate], [1000], tmp)
        dataset = PolyMNISTDataset(
            npz, modalities=mods, pattern_csv=str(Path(tmp) / pattern_filename(rate, 1000)),
            max_samples=num_samples, missing_value=None,
        )
        items = []
        for batch in DataLoader(dataset, batch_size=500):
            true = {m: batch[m].as_subclass(torch.Tensor) for m in mods}
            present = batch["present"].as_subclass(torch.Tensor).bool()
            recovered = recovery(zero_missing(true, present), present)
            labels = batch["label"].as_subclass(torch.Tensor).long().reshape(-1)
            for i in range(labels.shape[0]):
                items.append({**{m: recovered[m][i] for m in mods}, "label": labels[i]})
    return fit_calibration(
        fusion.encode, fusion.fuse, DataLoader(items, batch_size=500), modalities=mods,
        num_classes=fusion.num_classes, present_key=None, metric=metric, progress=False,
    )


@torch.no_grad()
def readability(fusion, recovery, npz: Path, max_samples: int) -> torch.Tensor:
    """``[M, M]`` accuracy (%) of the fusion network on one modality recovered from one observed modality."""
    data = load_polymnist_npz(npz, max_samples=max_samples)
    images = torch.from_numpy(data["images"]).float() / 255.0
    labels = torch.from_numpy(data["labels"]).long()
    mods = tuple(fusion.modalities)
    n, m_count = images.shape[0], len(mods)
    true = {m: images[:, i] for i, m in enumerate(mods)}
    table = torch.zeros(m_count, m_count)
    for i in range(m_count):
        present = torch.zeros(n, m_count, dtype=torch.bool)
        present[:, i] = True
        tokens = fusion.encode(recovery(zero_missing(true, present), present))
        for j in range(m_count):
            single = torch.zeros_like(present)
            single[:, j] = True
            table[i, j] = 100.0 * (fusion.fuse(tokens, single)[0].argmax(-1) == labels).float().mean()
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fusion", default=str(BUNDLE / "models" / "fusion.pt"))
    ap.add_argument("--fusion-def", default="{}", help="JSON overrides of the bundle's network_def")
    ap.add_argument("--recovery", default=str(BUNDLE / "models" / "recovery.pt"))
    ap.add_argument("--calibration", default=str(BUNDLE / "models" / "calibration.pt"))
    ap.add_argument("--dataset-dir", default=str(ROOT / "outputs" / "polymnist"), help="built PolyMNIST (demo / bundle)")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--rate", type=float, default=0.8, help="missing rate of the generated pattern")
    ap.add_argument("--seed", type=int, default=100, help="pattern seed (the bundle's test patterns use 0, 1, 2)")
    ap.add_argument("--pattern", default=None, help="an existing pattern CSV instead of a generated one")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--oracle", action="store_true", help="also the best-superset upper bound (31 fusion passes)")
    ap.add_argument("--readability", action="store_true", help="also the single-recovered-modality accuracy table")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0], help="reward margins delta (0: the paper)")
    ap.add_argument("--recovered-calibration", type=int, default=0, metavar="N",
                    help="calibrate on N training samples with recovered modalities in place (0: the given file)")
    ap.add_argument("--recovery-draws", type=int, default=0, metavar="K",
                    help="also the stable / vote rules over K random draws of the observed posterior")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    npz = Path(args.dataset_dir) / f"polymnist_{args.split}.npz"
    if not npz.is_file():
        ap.error(f"{npz} not found; build PolyMNIST first (monai-dymo demo, or python -m monai_dymo.data polymnist).")
    fusion, recovery, calibration = build_networks(args)
    mods = list(fusion.modalities)
    if args.recovered_calibration:
        train_npz = Path(args.dataset_dir) / "polymnist_train.npz"
        calibration = recovered_calibration(
            fusion, recovery, train_npz, args.rate, args.recovered_calibration, calibration.metric
        )
    with tempfile.TemporaryDirectory() as tmp:
        pattern = args.pattern
        if pattern is None:
            n = int(load_polymnist_npz(npz, max_samples=args.max_samples)["labels"].shape[0])
            generate_pattern_files(n, mods, [args.rate], [args.seed], tmp)
            pattern = str(Path(tmp) / pattern_filename(args.rate, args.seed))
        dataset = PolyMNISTDataset(
            npz, modalities=mods, pattern_csv=pattern, max_samples=args.max_samples, missing_value=None
        )
        loader = DataLoader(dataset, batch_size=500)
        rows = compare(
            fusion, recovery, calibration, loader, args.oracle, tuple(args.margins), args.recovery_draws
        )
    print(f"{args.split} split, pattern {Path(pattern).name if args.pattern else f'rate {args.rate} seed {args.seed}'}")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for result in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in result.values()) + " |")
    if args.readability:
        table = readability(fusion, recovery, npz, args.max_samples or 2000)
        print("\nfusion accuracy (%) on one modality recovered from one observed modality (row: observed)")
        print("| observed | " + " | ".join(mods) + " |")
        print("|" + "---|" * (len(mods) + 1))
        for i, m in enumerate(mods):
            print(f"| {m} | " + " | ".join(f"{float(v):.1f}" for v in table[i]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
