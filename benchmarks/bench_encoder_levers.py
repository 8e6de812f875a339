"""Benchmark: can an image encoder read its modality alone? Each lever of the cohort bundle, measured on validation.

For one image modality of a cohort (default: the brain MRI + clinical cohort, ``t1c`` and ``flair``), the bundle's
preprocessed tensors (the disk cache of the ``prepare`` / ``train`` stages) of the patients who have it observed are
classified by that modality's token encoder alone (max over its tokens, then a linear layer: what the fusion network
sees of it), trained with cross-entropy, AdamW 1e-3, batch 8, one thread. Validation accuracy is reported as the mean
of the last 5 epochs (less noisy than the best epoch on 40-60 patients) beside the best epoch and the training
accuracy of the last epoch (memorisation shows as training accuracy near 1 with validation at chance).

Levers (``--levers``):

- ``scratch``: the bundle's small encoder (16-32-64 channels), no augmentation (the previous recipe minus its flips);
- ``aug``: the bundle's training augmentation (:func:`monai_dymo.cohort.build_augmentation`: left-right flip,
  rotation / scaling shared by co-registered sequences, bias field and noise per sequence);
- ``aug_recovery``: ``aug`` with the encoder started from the shipped recovery network's image expert (8-16-32-64
  channels, trained without labels on every observed image of the training split);
- ``aug_resnet10``: ``aug`` with MONAI's 3D ResNet-10 backbone from scratch;
- ``aug_64``: ``aug`` at 64^3 instead of 48^3;
- ``aug_mirror`` / ``aug_mirror_64``: ``aug`` (at 48^3 / 64^3) with the encoder reading the image and its left-right
  asymmetry (``mirror_axis=0``: :class:`monai_dymo.networks.MirrorInputEncoder`).

Usage::

    python benchmarks/bench_encoder_levers.py                       # brain cohort (generate it and run prepare first)
    python benchmarks/bench_encoder_levers.py --modalities t1 t2 --epochs 60 --levers scratch aug
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.utils import convert_to_tensor, set_determinism  # noqa: E402

from monai_dymo.cohort import CohortSpec, build_augmentation, cohort_dataset  # noqa: E402
from monai_dymo.cohort.networks import init_encoders_from_recovery  # noqa: E402
from monai_dymo.networks import DynamicFusionTransformer, build_token_encoder  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_fusion_recipe import bundle_spec  # noqa: E402

LEVERS = ("scratch", "aug", "aug_recovery", "aug_resnet10", "aug_64", "aug_mirror", "aug_mirror_64")


def _load(spec: CohortSpec, split: str, modality: str, stats: Path, cache_dir: Path) -> list[dict]:
    ds = cohort_dataset(spec, split, stats_file=stats, cache="disk", cache_dir=cache_dir)
    col = spec.modality_names.index(modality)
    items = []
    for i in range(len(ds)):
        item = ds[i]
        if bool(convert_to_tensor(item["present"], track_meta=False)[col]):
            items.append(item)
    return items


class _Alone(nn.Module):
    """One modality's token encoder, max over its tokens, a linear classifier."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).max(1).values)


def run_lever(lever: str, modality: str, args: argparse.Namespace) -> dict:
    size = 64 if lever.endswith("_64") else args.size
    spec = bundle_spec(args.cohort, size)[0]
    train = _load(spec, "training", modality, args.stats, args.cache_dir)
    val = _load(spec, "validation", modality, args.stats, args.cache_dir)
    set_determinism(args.seed)
    channels = (8, 16, 32, 64) if lever == "aug_recovery" else (16, 32, 64)
    backbone = "resnet10" if lever == "aug_resnet10" else "small"
    mirror = 0 if lever.startswith("aug_mirror") else None
    encoder = build_token_encoder(3, 1, 64, backbone=backbone, channels=channels, pool_size=2, pool_mode="max",
                                  mirror_axis=mirror)
    if lever == "aug_recovery":  # through the fusion network's encoder names, as the bundle does it
        holder = DynamicFusionTransformer([modality], {modality: encoder}, num_classes=spec.num_classes, dim=64)
        init_encoders_from_recovery(holder, args.recovery, [modality])
    model = _Alone(encoder, 64, spec.num_classes)
    # the bundle's augmentation of this modality alone (the other sequences are not read here)
    alone = CohortSpec(spec.name, spec.datalist, spec.data_root, spec.clinical_csv, spec.patient_id, spec.label,
                       spec.classes, (spec.modality(modality),))
    aug = build_augmentation(alone) if lever != "scratch" else None
    if aug is not None:
        aug.set_random_state(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xv = torch.stack([convert_to_tensor(it[modality], track_meta=False) for it in val]).float()
    yv = torch.tensor([int(it["label"]) for it in val])
    g = torch.Generator().manual_seed(args.seed)
    history, start = [], time.time()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        correct = 0
        for s in range(0, len(order), 8):
            batch = [train[i] for i in order[s : s + 8]]
            if aug is not None:
                batch = [aug({modality: it[modality]}) | {"label": it["label"]} for it in batch]
            x = torch.stack([convert_to_tensor(it[modality], track_meta=False) for it in batch]).float()
            y = torch.tensor([int(it["label"]) for it in batch])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xv[s : s + 16]).argmax(1) for s in range(0, len(xv), 16)])
        history.append((correct / len(train), float((pred == yv).float().mean())))
    last = [v for _, v in history[-5:]]
    return {
        "lever": lever,
        "modality": modality,
        "train_patients": len(train),
        "val_patients": len(val),
        "val_last5": round(100 * sum(last) / len(last), 1),
        "val_best": round(100 * max(v for _, v in history), 1),
        "train_last": round(100 * history[-1][0], 1),
        "minutes": round((time.time() - start) / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", type=Path, default=ROOT / "outputs" / "brain_cohort")
    bundle = ROOT / "bundles" / "cohort_dymo"
    p.add_argument("--stats", type=Path, default=bundle / "models" / "brain_mri_demo" / "clinical_stats.json")
    p.add_argument("--recovery", type=Path, default=bundle / "models" / "brain_mri_demo" / "recovery.pt")
    p.add_argument("--cache-dir", type=Path, default=bundle / "runs" / "brain_mri_demo" / "cache")
    p.add_argument("--modalities", nargs="+", default=["t1c", "flair"])
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if not (args.cohort / "datalist.json").is_file():
        print(f"no cohort at {args.cohort}: run `python -m monai_dymo.data brain-cohort` first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'modality':9} {'lever':13} {'val (last 5)':>12} {'val best':>9} {'train':>6} {'patients':>9} {'min':>5}")
    for modality in args.modalities:
        for lever in args.levers:
            r = run_lever(lever, modality, args)
            rows.append(r)
            print(f"{r['modality']:9} {r['lever']:13} {r['val_last5']:12.1f} {r['val_best']:9.1f} {r['train_last']:6.1f} "
                  f"{r['train_patients']:>4}/{r['val_patients']:<4} {r['minutes']:5.1f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
