"""derm7pt end to end through the cohort bundle: prepare -> train_recovery -> train -> calibrate -> evaluate, then the
method table on the official test split.

The cohort file comes from ``python -m monai_dymo.data derm7pt --source <release_v0> --out <dir>`` (keep ``<dir>``
outside the repository: the images may not be redistributed, nor anything derived). Every stage is the bundle's own
``python -m monai.bundle run`` with that cohort file; the recovery network is trained once (seed 0) and the fusion
network once per training seed (``--seeds``), each calibrated on the training split.

Table (accuracy %, 5-class diagnosis, mean ± std over the training seeds): DyMo, discarding the missing modalities,
every modality recovered, and each modality alone (the fusion network on that modality only, over the patients who
have it), on the test split with its natural missingness (a few clinical photos) and with each image modality of the
test cases removed at the given rates (a seeded draw per patient, the same for every method and seed; removed pictures
are zeroed before recovery, so nothing removed reaches the networks).

    python benchmarks/bench_derm7pt.py --cohort /data/derm7pt_cohort/derm7pt.yaml --out /data/derm7pt_bench \\
        --seeds 0 1 2 --train-epochs 60 --recovery-epochs 40 --threads 1

``--reuse`` skips every stage whose output exists (e.g. to add a seed or re-tabulate). Writes ``results.md``,
``results.json`` and ``per_condition.csv`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "cohort_dymo"
METHODS = ("dymo", "observed_only", "all_recovered")
LABELS = {"dymo": "DyMo", "observed_only": "discard missing", "all_recovered": "all recovered"}


def _overrides(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--set / --train-set / --recovery-set take KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


def run_stage(stage: str, cohort: Path, args: list[str], log: Path, threads: int) -> float:
    """One bundle stage in a subprocess (log to ``log``); returns the wall time in seconds."""
    configs = [str(BUNDLE / "configs" / n) for n in ("common.yaml", "dymo.yaml", f"{stage}.yaml")] + [str(cohort)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--bundle_root",
           str(BUNDLE), "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--logging_file",
           str(BUNDLE / "configs" / "logging.conf"), "--num_threads", str(threads), *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: {' '.join(args)} (log {log})", flush=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=BUNDLE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); see {log}")
    print(f"[{time.strftime('%H:%M:%S')}] {stage} done in {seconds / 60:.1f} min", flush=True)
    return seconds


def _cli(pairs: list[tuple[str, str]]) -> list[str]:
    return [a for k, v in pairs for a in (f"--{k}", v)]


def load_bundle_objects(cohort: Path, seed_dir: Path, stats: Path, recovery: Path, sets: list[tuple[str, str]],
                        threads: int) -> dict[str, Any]:
    """Network (trained), calibration, trained recovery and the test dataset, as the bundle's evaluate stage builds them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = [str(BUNDLE / "configs" / n) for n in ("common.yaml", "dymo.yaml", "evaluate.yaml")]
    parser.read_config([*configs, str(cohort)])
    parser["bundle_root"] = str(BUNDLE)
    parser["num_threads"] = threads
    parser["device"] = "$torch.device('cpu')"
    parser["model_dir"] = str(seed_dir)
    parser["stats_file"] = str(stats)
    parser["recovery_weights"] = str(recovery)
    for k, v in sets:
        parser[k] = yaml.safe_load(v)
    parser.parse()
    torch.set_num_threads(threads)
    network = parser.get_parsed_content("network")
    parser.get_parsed_content("load_fusion_weights")
    network.eval()
    return {
        "network": network,
        "calibration": parser.get_parsed_content("calibration"),
        "recovery": parser.get_parsed_content("trained_recovery"),
        "dataset": parser.get_parsed_content("dataset"),
        "temperature": float(parser.get_parsed_content("temperature")),
        "spec": parser.get_parsed_content("spec"),
    }


def removal_masks(ids: list[str], modalities: tuple[str, ...], targets: list[str], rates: list[float],
                  seed: int) -> dict[str, np.ndarray]:
    """Condition name -> ``bool[N, M]`` of modalities to remove (same for every seed and method)."""
    out = {"natural": np.zeros((len(ids), len(modalities)), bool)}
    for rate in rates:
        for m in targets:
            rng = np.random.default_rng([seed, modalities.index(m), int(round(rate * 1000))])
            mask = np.zeros((len(ids), len(modalities)), bool)
            mask[:, modalities.index(m)] = rng.random(len(ids)) < rate
            out[f"{m} removed {rate:g}"] = mask
    return out


@torch.no_grad()
def evaluate_conditions(objs: dict[str, Any], masks: dict[str, np.ndarray], batch_size: int) -> list[dict[str, Any]]:
    from monai.data import DataLoader
    from monai.utils import convert_to_tensor

    from monai_dymo.evaluation import compare_on_natural_missingness
    from monai_dymo.keys import DyMoKeys
    from monai_dymo.presence import align_present
    from monai_dymo.step import zero_missing

    network, modalities = objs["network"], tuple(objs["network"].modalities)
    batches = []
    for batch in DataLoader(objs["dataset"], batch_size=batch_size, shuffle=False, num_workers=0):
        batches.append({
            **{m: convert_to_tensor(batch[m], track_meta=False) for m in modalities},
            DyMoKeys.PRESENT: align_present(batch[DyMoKeys.PRESENT], modalities, "bench").bool(),
            DyMoKeys.LABEL: convert_to_tensor(batch[DyMoKeys.LABEL], track_meta=False).long().reshape(-1),
            DyMoKeys.PATIENT_ID: list(batch[DyMoKeys.PATIENT_ID]),
            DyMoKeys.INDEX: [int(i) for i in batch[DyMoKeys.INDEX]],
        })
    rows = []
    for name, remove in masks.items():
        loader, start = [], 0
        for b in batches:
            n = b[DyMoKeys.LABEL].shape[0]
            drop = torch.as_tensor(remove[start : start + n])
            start += n
            present = b[DyMoKeys.PRESENT] & ~drop
            # removed pictures zeroed: never seen by recovery or fusion
            loader.append({**b, DyMoKeys.PRESENT: present, **zero_missing({m: b[m] for m in modalities}, present)})
        per = compare_on_natural_missingness(network, objs["calibration"], loader, recovery=objs["recovery"],
                                             temperature=objs["temperature"], progress=False)
        row: dict[str, Any] = {"condition": name, "patients": len(per),
                               "missing_percent": 100.0 * float(sum((~b[DyMoKeys.PRESENT]).sum() for b in loader))
                               / (len(per) * len(modalities)),
                               "accepted": float((per["accepted"].fillna("") != "").mean() * 100)}
        for meth in METHODS:
            row[meth] = 100.0 * float((per[f"pred_{meth}"] == per["label"]).mean())
        base = per["pred_observed_only"] == per["label"]
        mine = per["pred_dymo"] == per["label"]
        row["dymo_fixed"], row["dymo_broken"] = int((mine & ~base).sum()), int((~mine & base).sum())
        if name == "natural":  # each modality alone, over the patients who have it (-1: missing)
            for m in modalities:
                seen = per[f"single_{m}"] >= 0
                total = int(seen.sum())
                row[f"alone_{m}"] = 100.0 * int((per[f"single_{m}"] == per["label"])[seen].sum()) / max(total, 1)
                row[f"alone_{m}_n"] = total
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True, help="derm7pt.yaml written by python -m monai_dymo.data derm7pt")
    p.add_argument("--out", required=True, help="folder for weights per seed, logs and the table (outside the repo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fusion training seeds (default 0 1 2)")
    p.add_argument("--train-epochs", type=int, default=60, help="fusion epochs per seed (default 60)")
    p.add_argument("--recovery-epochs", type=int, default=40, help="MoPoE epochs (default 40)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5], help="removal rates (default 0.3 0.5)")
    p.add_argument("--removal-seed", type=int, default=0, help="seed of the removal draws (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per stage (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle override for every stage, e.g. network_def#channels_2d=[16,32,64,128]")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the train stage only, e.g. batch_size=16")
    p.add_argument("--recovery-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the train_recovery stage only")
    p.add_argument("--reuse", action="store_true", help="skip stages whose output exists")
    p.add_argument("--table-only", action="store_true", help="only tabulate existing seeds (implies --reuse)")
    args = p.parse_args(argv)
    reuse = args.reuse or args.table_only

    cohort = Path(args.cohort).resolve()
    doc = yaml.safe_load(cohort.read_text())
    base_models = Path(doc.get("model_dir") or (BUNDLE / "models" / doc["cohort"]["name"]))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sets = _overrides(args.set)
    stats, recovery = base_models / "clinical_stats.json", base_models / "recovery.pt"
    times: dict[str, Any] = {}
    common = ["--stats_file", str(stats), "--recovery_weights", str(recovery), *_cli(sets)]

    if not (reuse and stats.is_file()):
        times["prepare"] = run_stage("prepare", cohort, _cli(sets), out / "logs" / "prepare.log", args.threads)
    if not (reuse and recovery.is_file()):
        times["train_recovery"] = run_stage(
            "train_recovery", cohort, [*common, "--max_epochs", str(args.recovery_epochs), "--seed", "0",
                                       *_cli(_overrides(args.recovery_set))],
            out / "logs" / "train_recovery.log", args.threads)
    for seed in args.seeds:
        sdir = out / f"seed{seed}"
        seed_args = [*common, "--model_dir", str(sdir), "--seed", str(seed)]
        if not (reuse and (sdir / "fusion.pt").is_file()):
            times[f"train seed {seed}"] = run_stage(
                "train", cohort, [*seed_args, "--max_epochs", str(args.train_epochs), *_cli(_overrides(args.train_set))],
                out / "logs" / f"train_seed{seed}.log", args.threads)
        if not (reuse and (sdir / "calibration.pt").is_file()):
            times[f"calibrate seed {seed}"] = run_stage("calibrate", cohort, seed_args,
                                                        out / "logs" / f"calibrate_seed{seed}.log", args.threads)
        if not (reuse and (sdir / "evaluate_testing" / "summary.json").is_file()):
            times[f"evaluate seed {seed}"] = run_stage(
                "evaluate", cohort, [*seed_args, "--eval_dir", str(sdir / "evaluate_testing")],
                out / "logs" / f"evaluate_seed{seed}.log", args.threads)

    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        objs = load_bundle_objects(cohort, out / f"seed{seed}", stats, recovery, sets, args.threads)
        modalities = tuple(objs["network"].modalities)
        ids = [str(e) for e in range(len(objs["dataset"]))]
        images = [m.name for m in objs["spec"].image_modalities]
        masks = removal_masks(ids, modalities, images, args.rates, args.removal_seed)
        for r in evaluate_conditions(objs, masks, batch_size=16):
            rows.append({"seed": seed, **r})
        times[f"table seed {seed}"] = time.perf_counter() - start
        print(f"[{time.strftime('%H:%M:%S')}] table seed {seed} in {times[f'table seed {seed}']:.0f} s", flush=True)
    per = pd.DataFrame(rows)
    per.to_csv(out / "per_condition.csv", index=False)

    alone = [c for c in per.columns if c.startswith("alone_") and not c.endswith("_n")]
    cols = [*METHODS, *alone]
    lines = [f"derm7pt, official test split ({int(per['patients'].iloc[0])} cases), 5-class diagnosis accuracy (%), "
             f"mean ± std over training seeds {args.seeds}", "",
             "| condition | missing % | " + " | ".join(LABELS.get(c, c.replace("alone_", "") + " alone") for c in cols)
             + " | DyMo fixed / broken vs discard | patients accepting a recovery (%) |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]
    for cond, g in per.groupby("condition", sort=False):
        cells = []
        for c in cols:
            v = g[c].dropna() if c in g else pd.Series(dtype=float)
            cells.append("" if v.empty else (f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")))
        lines.append(f"| {cond} | {g['missing_percent'].mean():.1f} | " + " | ".join(cells)
                     + f" | {int(g['dymo_fixed'].sum())} / {int(g['dymo_broken'].sum())} | {g['accepted'].mean():.1f} |")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "seconds": times, "args": vars(args)}, indent=2))
    print(text)
    print("stage times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
