"""Benchmark: the cohort bundle's fusion training recipes, scored on what issue 17 asks of them.

For every trained fusion network (``--model-dirs``, each written by the bundle's ``train`` stage), the accuracy of the
fusion network on each patient's OBSERVED modalities (what discarding the missing ones gives; DyMo equals it when no
recovery is certified) and on every single modality ALONE (on the patients who have it observed), on the validation and
test splits. No recovery network and no calibration are needed, so a recipe can be compared before the later stages
are run. Rows are printed as a table and, with ``--json``, written as a list of records.

The network and the preprocessing are the bundle's (``configs/common.yaml``); ``--size`` overrides the 3D
``spatial_size`` of every image modality, as ``--cohort#modalities#i#spatial_size`` does for the bundle. Figures of
the recipes measured with it are in ``bundles/cohort_dymo/docs/README.md`` ("Levers").

Usage::

    # train three seeds with the bundle, then score them
    for s in 0 1 2; do python -m monai.bundle run \\
        --config_file "['configs/common.yaml','configs/dymo.yaml','configs/train.yaml']" \\
        --bundle_root bundles/cohort_dymo --seed $s --model_dir runs/S$s; done
    python benchmarks/bench_fusion_recipe.py --model-dirs runs/S0 runs/S1 runs/S2 --size 64
    # the same three, and their ensemble (mean of the class probabilities)
    python benchmarks/bench_fusion_recipe.py --model-dirs runs/S0 runs/S1 runs/S2 --ensemble
    # a network trained on another cohort file (e.g. the lesion-centred crop)
    python benchmarks/bench_fusion_recipe.py --model-dirs runs/R0 --cohort-file bundles/cohort_dymo/cohorts/brain_mri_roi.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.data import DataLoader  # noqa: E402

from monai_dymo.cohort import CohortSpec, build_cohort_fusion, cohort_dataset  # noqa: E402
from monai_dymo.engines import PrepareDyMoBatch, subset_augmented_forward  # noqa: E402

BUNDLE = ROOT / "bundles" / "cohort_dymo"


def bundle_spec(cohort_dir: Path, size: int | None, size_3d: list[int] | None = None,
                pixdim: float | None = None, cohort_file: Path | None = None) -> tuple[CohortSpec, dict]:
    """The bundle's cohort (``common.yaml``) read from ``cohort_dir``, or the ``cohort`` mapping of ``cohort_file`` (as
    given to the bundle), 3D sizes set to ``size`` (or ``size_3d``, with the spacing ``pixdim``: a centred crop); and
    ``network_def``."""
    import yaml

    common = yaml.safe_load((BUNDLE / "configs" / "common.yaml").read_text())
    cfg = common["cohort"]
    cfg["datalist"] = str(cohort_dir / "datalist.json")
    cfg["clinical_csv"] = str(cohort_dir / "clinical.csv")
    if cohort_file is not None:
        cfg = yaml.safe_load(Path(cohort_file).read_text())["cohort"]
    for m in cfg["modalities"]:
        if m["kind"] == "image3d":
            if size is not None or size_3d is not None:
                m["spatial_size"] = list(size_3d) if size_3d is not None else [size] * 3
            if pixdim is not None:
                m["pixdim"] = [pixdim] * 3
    net = {k: v for k, v in common["network_def"].items() if k not in ("_target_", "spec", "stats")}
    return CohortSpec.from_config(cfg, base_dir=None if cohort_file is None else Path(cohort_file).parent), net


@torch.no_grad()
def score(networks: torch.nn.Module | list[torch.nn.Module], loader: DataLoader,
          device: torch.device) -> dict[str, float | int | None]:
    """``{"observed": %, "<modality>": % alone, "<modality>_patients": n}`` over the loader's patients; several
    networks (trained on the same cohort) are scored as their ensemble: the mean of their class probabilities."""
    nets = networks if isinstance(networks, list) else [networks]
    names = list(nets[0].modalities)
    m = len(names)
    subsets = torch.cat([torch.ones(1, m, dtype=torch.bool), torch.eye(m, dtype=torch.bool)])  # observed, singletons
    prepare = PrepareDyMoBatch(names)
    right = torch.zeros(m + 1)
    seen = torch.zeros(m + 1)
    for net in nets:
        net.eval()
    for batch in loader:
        inputs, label, _, kwargs = prepare(batch, device)
        outs = [subset_augmented_forward(net, inputs, subsets.to(device), kwargs.get("present")) for net in nets]
        out = outs[0]
        prob = torch.stack([o["logits"].softmax(1) for o in outs]).mean(0)
        ok = (prob.argmax(1) == label.reshape(-1)[out["rows"]]).float().cpu()
        groups = out["groups"].cpu()
        right += torch.bincount(groups, weights=ok, minlength=m + 1)
        seen += torch.bincount(groups, minlength=m + 1).float()
    acc = [round(100.0 * float(r / s), 2) if s > 0 else None for r, s in zip(right, seen)]
    row: dict[str, float | int | None] = {"observed": acc[0], "patients": int(seen[0])}
    for i, name in enumerate(names):
        row[name] = acc[i + 1]
        row[f"{name}_patients"] = int(seen[i + 1])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dirs", nargs="+", type=Path, required=True, help="folders holding fusion.pt")
    p.add_argument("--cohort", type=Path, default=ROOT / "outputs" / "brain_cohort")
    p.add_argument("--cohort-file", type=Path, default=None,
                   help="a cohort YAML as given to the bundle (replaces the default cohort; e.g. with 'roi')")
    p.add_argument("--stats", type=Path, default=BUNDLE / "models" / "brain_mri_demo" / "clinical_stats.json")
    p.add_argument("--cache-dir", type=Path, default=BUNDLE / "runs" / "brain_mri_demo" / "cache")
    p.add_argument("--size", type=int, default=None, help="3D spatial size (default: the bundle's)")
    p.add_argument("--splits", nargs="+", default=["validation", "testing"])
    p.add_argument("--network-def", type=json.loads, default={},
                   help='JSON overrides of network_def, as trained, e.g. \'{"share_encoders": true}\'')
    p.add_argument("--pixdim", type=float, default=None, help="3D spacing (mm), with --size-3d, as trained")
    p.add_argument("--size-3d", type=int, nargs=3, default=None, help="3D spatial size, e.g. 64 80 64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--ensemble", action="store_true",
                   help="also score the ensemble of the --model-dirs (mean of their class probabilities)")
    args = p.parse_args(argv)
    spec, net_args = bundle_spec(args.cohort, args.size, args.size_3d, args.pixdim, args.cohort_file)
    net_args.update(args.network_def)
    device = torch.device(args.device)
    loaders = {
        split: DataLoader(cohort_dataset(spec, split, stats_file=args.stats, cache="disk", cache_dir=args.cache_dir),
                          batch_size=8, shuffle=False)
        for split in args.splits
    }
    rows = []
    networks = []
    for model_dir in args.model_dirs:
        network = build_cohort_fusion(spec, stats=str(args.stats), **net_args).to(device)
        state = torch.load(model_dir / "fusion.pt", map_location=device, weights_only=True)
        network.load_state_dict(state)
        networks.append(network)
        for split, loader in loaders.items():
            rows.append({"model_dir": str(model_dir), "split": split, **score(network, loader, device)})
    if args.ensemble and len(networks) > 1:
        for split, loader in loaders.items():
            rows.append({"model_dir": f"ensemble of {len(networks)}", "split": split,
                         **score(networks, loader, device)})
    names = spec.modality_names
    print(f"{'model_dir':40} {'split':10} {'observed':>8} " + " ".join(f"{n:>8}" for n in names))
    for r in rows:
        print(f"{r['model_dir'][-40:]:40} {r['split']:10} {r['observed']:8.2f} "
              + " ".join(f"{r[n]:8.2f}" if r[n] is not None else f"{'-':>8}" for n in names))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
