"""Distributed inference benchmark: PolyMNIST DyMo inference (recovery + selection + report) in 1 vs N processes.

Runs the PolyMNIST bundle's networks (``configs/common.yaml``) with the shipped weights and calibration over the first
``--samples`` test samples with the seeded missing pattern of ``--missing-rate`` / ``--pattern-seed``, through
:class:`~monai_dymo.engines.evaluator.DyMoEvaluator` and a :class:`~monai_dymo.handlers.reports.SelectionReportWriter`.
With ``P > 1`` processes (``torch.distributed``, gloo on CPU, nccl with ``--device cuda``) every rank infers its shard
(``monai.data.DistributedSampler(even_divisible=False, shuffle=False)``) and rank 0 writes the merged report; the
script checks that it has the single-process rows (same patients, order and predictions).

Timed: from a barrier before ``evaluator.run()`` to a barrier after it (the report gathered and written), the best of
``--repeats`` runs; process start-up and imports are not included (``torchrun`` adds them once per job).
Configurations: ``processes x threads`` given by ``--configs`` (default ``1x1 1x2 2x1``: one process with one or two
intra-op threads vs two processes of one thread, the same two cores).

Usage::

    python benchmarks/bench_distributed.py                         # outputs/polymnist, 2000 samples
    python benchmarks/bench_distributed.py --samples 7000 --configs 1x1 2x1 4x1

The dataset is built in ``--dataset-dir`` (with ``python -m monai_dymo.data polymnist ...`` from ``../shared/data``) if
it is missing.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import DataLoader  # noqa: E402
from monai.data import DistributedSampler  # noqa: E402

from monai_dymo import DyMoInferer, SubsetCalibration  # noqa: E402
from monai_dymo.data import PolyMNISTDataset, build_polymnist_to_disk, generate_pattern_files  # noqa: E402
from monai_dymo.distributed import backend_for  # noqa: E402
from monai_dymo.engines import DyMoEvaluator  # noqa: E402
from monai_dymo.handlers import SelectionReportWriter  # noqa: E402

BUNDLE = ROOT / "bundles" / "polymnist_dymo"
DATA = ROOT.parent / "shared" / "data"


def prepare(args: argparse.Namespace) -> Path:
    """The pattern CSV for the test split (dataset built first if missing)."""
    out = Path(args.dataset_dir)
    if not (out / "polymnist_test.npz").is_file():
        print(f"building PolyMNIST in {out} ...", flush=True)
        build_polymnist_to_disk(DATA / "mnist" / "mnist.npz", DATA / "polymnist_backgrounds", out, seed=0,
                                preview=False, progress=False)
    pattern = out / "patterns" / f"missing_rate{args.missing_rate:g}_seed{args.pattern_seed}.csv"
    if not pattern.is_file():
        from monai_dymo.data import load_polymnist_npz

        n = int(load_polymnist_npz(out / "polymnist_test.npz")["labels"].shape[0])
        names = [f"m{i}" for i in range(5)]
        generate_pattern_files(n, names, [args.missing_rate], [args.pattern_seed], out / "patterns")
    return pattern


def worker(rank: int, world: int, threads: int, args: argparse.Namespace, pattern: str, tmp: str) -> None:
    torch.set_num_threads(threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        dist.init_process_group(backend_for(device), init_method=f"file://{tmp}/rendezvous", rank=rank,
                                world_size=world)
    try:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / "common.yaml"), str(BUNDLE / "configs" / "dymo.yaml")])
        parser["bundle_root"] = str(BUNDLE)
        fusion = parser.get_parsed_content("network_def").to(device).eval()
        recovery = parser.get_parsed_content("recovery_def").to(device).eval()
        models = BUNDLE / "models"
        fusion.load_state_dict(torch.load(models / "fusion.pt", map_location=device, weights_only=True))
        recovery.load_state_dict(torch.load(models / "recovery.pt", map_location=device, weights_only=True))
        calibration = SubsetCalibration.load(models / "calibration.pt", map_location=device)
        data = PolyMNISTDataset(Path(args.dataset_dir) / "polymnist_test.npz", parser["modalities"],
                                pattern_csv=pattern, max_samples=args.samples)
        sampler = DistributedSampler(data, even_divisible=False, shuffle=False) if world > 1 else None
        loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, num_workers=0)
        writer = SelectionReportWriter(output_dir=Path(tmp) / "report", plot=False)
        inferer = DyMoInferer(calibration, recovery=recovery, temperature=parser["temperature"])
        evaluator = DyMoEvaluator(device, loader, fusion, inferer, val_handlers=[writer])
        best = float("inf")
        for _ in range(args.repeats):
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            evaluator.run()
            if world > 1:
                dist.barrier()
            best = min(best, time.perf_counter() - t0)
        if rank == 0:
            (Path(tmp) / "seconds.txt").write_text(f"{best}\n{len(writer.records)}\n")
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_config(processes: int, threads: int, args: argparse.Namespace, pattern: Path) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        method = "fork" if args.device == "cpu" and "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(worker, args=(processes, threads, args, str(pattern), tmp), nprocs=processes, join=True,
                           start_method=method)
        seconds = float((Path(tmp) / "seconds.txt").read_text().split()[0])
        with open(Path(tmp) / "report" / "dymo_report.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    return seconds, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset-dir", default=str(ROOT / "outputs" / "polymnist"))
    ap.add_argument("--samples", type=int, default=2000, help="first N test samples (7000: the whole split)")
    ap.add_argument("--missing-rate", type=float, default=0.8)
    ap.add_argument("--pattern-seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256, help="per process")
    ap.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    pattern = prepare(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    results = []
    reference: list[dict] | None = None
    for cfg in args.configs:
        processes, threads = (int(v) for v in cfg.lower().split("x"))
        seconds, rows = run_config(processes, threads, args, pattern)
        if reference is None:
            reference = rows
        same = [r["patient_id"] for r in rows] == [r["patient_id"] for r in reference] and all(
            a["prediction"] == b["prediction"] and a["accepted"] == b["accepted"] for a, b in zip(rows, reference)
        )
        results.append((processes, threads, seconds, len(rows), same))
        print(f"{processes} process(es) x {threads} thread(s): {seconds:.2f} s, {len(rows) / seconds:.0f} patients/s, "
              f"{len(rows)} rows, same rows as the first: {same}", flush=True)

    base = results[0][2]
    print(f"\nPolyMNIST DyMo inference, {args.samples} test samples, missing rate {args.missing_rate:g}, "
          f"batch {args.batch_size} per process, {args.device}, best of {args.repeats}\n")
    print("| processes x threads | seconds | patients/s | speed-up | report rows | rows equal |")
    print("|---|---|---|---|---|---|")
    for processes, threads, seconds, n, same in results:
        print(f"| {processes} x {threads} | {seconds:.2f} | {n / seconds:.0f} | {base / seconds:.2f} | {n} | {same} |")


if __name__ == "__main__":
    main()
