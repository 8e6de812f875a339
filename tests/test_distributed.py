"""Distributed (torch.distributed, gloo, 2 CPU processes) training, calibration and inference equal single-process runs.

Every test starts 2 processes with ``torch.multiprocessing`` (rendezvous through a file in ``tmp_path``); each process
saves what it holds to ``tmp_path`` and the test compares it with the same computation in one process.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from monai.data import DataLoader, Dataset
from monai.data import DistributedSampler as MonaiDistributedSampler
from monai_dymo.calibration import SubsetCalibration, fit_calibration
from monai_dymo.distributed import all_reduce_, backend_for, unwrap, wrap_ddp
from monai_dymo.engines.evaluator import DyMoEvaluator
from monai_dymo.engines.recovery_trainer import KEPT, MODALITIES, RecoveryMSE, RecoveryTrainer
from monai_dymo.engines.trainer import SubsetAugmentedTrainer
from monai_dymo.handlers.reports import SelectionReportWriter
from monai_dymo.inferers import DyMoInferer
from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer
from monai_dymo.networks.recovery.mopoe import MoPoERecovery

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
]

NAMES = ("a", "b", "c")
WORLD = 2


def _net(seed: int = 0) -> DynamicFusionTransformer:
    """Tiny fusion network; instance norm (no batch statistics), so a step on shards equals one on the whole batch."""
    torch.manual_seed(seed)
    encoders = {
        "a": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2, norm="INSTANCE"),
        "b": ClinicalTokenEncoder(3, [3], 16),
        "c": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2, norm="INSTANCE"),
    }
    return DynamicFusionTransformer(NAMES, encoders, num_classes=3, dim=16, depth=1, num_heads=2, proj_dim=8)


def _samples(n: int, seed: int = 0, missing: bool = False) -> list[dict]:
    """3 classes carried by every modality; with ``missing``, a seeded pattern (every sample keeps one modality)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    a = torch.randn(n, 1, 8, 8, generator=g)
    c = torch.randn(n, 1, 8, 8, generator=g)
    b = torch.randn(n, 4, generator=g)
    for i in range(n):
        k = int(y[i])
        a[i, 0, :, 2 * k : 2 * k + 2] += 2.0
        c[i, 0, 2 * k : 2 * k + 2, :] += 2.0
    b[:, :3] += 2.0 * F.one_hot(y, 3)
    b[:, 3] = y.float()
    present = torch.rand(n, 3, generator=g) < 0.6 if missing else torch.ones(n, 3, dtype=torch.bool)
    present[~present.any(1), 0] = True
    out = []
    for i in range(n):
        item = {"a": a[i], "b": b[i], "c": c[i], "label": y[i], "present": present[i], "index": i}
        item["patient_id"] = f"p{i:03d}"
        for m, name in enumerate(NAMES):
            if not present[i, m]:
                item[name] = torch.zeros_like(item[name])
        out.append(item)
    return out


def _spawn(fn, tmp_path: Path, *args) -> None:
    # fork (where available): the children inherit the imported modules instead of importing torch/MONAI again
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_entry, args=(fn, str(tmp_path), args), nprocs=WORLD, join=True, start_method=method)


def _entry(rank: int, fn, tmp: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        backend_for("cpu"), init_method=f"file://{os.path.join(tmp, 'rendezvous')}", rank=rank, world_size=WORLD
    )
    try:
        fn(rank, Path(tmp), *args)
    finally:
        dist.destroy_process_group()


def test_helpers_without_process_group():
    assert backend_for("cpu") == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"
    net = _net()
    assert unwrap(net) is net and unwrap(torch.nn.DataParallel(net)) is net
    t = torch.ones(2)
    all_reduce_(t, None)  # single process: unchanged
    assert t.tolist() == [1.0, 1.0]


def test_forward_subsets_mode_and_empty_anchor():
    """``forward(inputs, subsets=...)`` is the trainer's path; with no row left it returns a zero ``anchor`` through
    which every parameter gets a (zero) gradient, so a rank without rows can join DDP's gradient reduction."""
    net = _net()
    batch = {k: torch.stack([s[k] for s in _samples(4)]) for k in NAMES}
    subsets = torch.tensor([[True, False, False], [False, True, True]])
    out = net(batch, subsets=subsets)
    assert out["logits"].shape == (8, 3) and out["rows"].tolist() == [0, 1, 2, 3] * 2
    logits, _ = net(batch, subsets[1].expand(4, -1))
    torch.testing.assert_close(out["logits"][4:], logits, atol=1e-5, rtol=1e-5)
    present = torch.tensor([[False, True, True]] * 4)
    empty = net(batch, subsets=subsets[:1], present=present)
    assert empty["logits"] is None and empty["rows"].numel() == 0
    empty["anchor"].backward()
    assert float(empty["anchor"].detach()) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    with pytest.raises(ValueError, match="either"):
        net(batch, subsets[0].expand(4, -1), subsets=subsets)


# ---------------------------------------------------------------------------------------------------- training
def _train_fusion(network, loader, epochs: int = 2) -> SubsetAugmentedTrainer:
    # SGD: Adam would amplify the float noise of gradients that are zero in theory (conv biases before instance norm)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    trainer = SubsetAugmentedTrainer(
        "cpu", epochs, loader, network, optimizer, num_subsets=3, seed=3, prototype_warmup_epochs=0
    )
    trainer.run()
    return trainer


def _fusion_worker(rank: int, tmp: Path) -> None:
    data = Dataset(_samples(16))
    sampler = MonaiDistributedSampler(data, shuffle=False)  # rank r: samples r, r + 2, ...
    with pytest.raises(ValueError, match="find_unused_parameters=True"):
        SubsetAugmentedTrainer("cpu", 1, [], wrap_ddp(_net(), "cpu"), torch.optim.SGD(_net().parameters(), lr=0.1))
    network = wrap_ddp(_net(), "cpu", find_unused_parameters=True)
    trainer = _train_fusion(network, DataLoader(data, batch_size=4, sampler=sampler))
    torch.save(
        {"state": unwrap(network).state_dict(), "prototypes": trainer.loss_function.prototypes.clone()},
        tmp / f"fusion_rank{rank}.pt",
    )


def test_fusion_training_ddp_equals_single_process(tmp_path: Path):
    """2 ranks x 4 samples per step == 1 process x 8 samples: same seeded subsets, gradients averaged through DDP's
    forward, prototypes (on after epoch 1) pooled over the ranks."""
    _spawn(_fusion_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"fusion_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single_net = _net()
    single = _train_fusion(single_net, DataLoader(Dataset(_samples(16)), batch_size=8, shuffle=False))
    assert single.prototype_accumulator is not None and bool(single.loss_function.active)
    ref = single_net.state_dict()
    changed = False
    for key, value in ref.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # ranks in lockstep
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=2e-5, rtol=1e-4, msg=key)
        changed |= not torch.equal(value, _net().state_dict()[key])
    assert changed
    torch.testing.assert_close(ranks[0]["prototypes"], ranks[1]["prototypes"], atol=0, rtol=0)
    torch.testing.assert_close(ranks[0]["prototypes"], single.loss_function.prototypes, atol=2e-5, rtol=1e-4)


def _recovery_net() -> MoPoERecovery:
    torch.manual_seed(0)
    spec = {"shape": [1, 8, 8], "likelihood": "gaussian", "scale": 0.1, "channels": [4, 8], "strides": [2, 2]}
    return MoPoERecovery(["a", "c"], {"a": spec, "c": spec}, latent_dim=4)


def _recovery_worker(rank: int, tmp: Path) -> None:
    data = Dataset([{k: s[k] for k in ("a", "c")} | {"present": s["present"][[0, 2]]} for s in _samples(8, 1)])
    loader = DataLoader(data, batch_size=2, sampler=MonaiDistributedSampler(data, shuffle=False))
    network = wrap_ddp(_recovery_net(), "cpu")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    RecoveryTrainer("cpu", 1, loader, network, optimizer, train_handlers=[], seed=0).run()
    # RecoveryMSE pools the ranks: rank r holds held-out errors r + 1 (one pair) and 10 (rank 1 only)
    metric = RecoveryMSE()
    metric.reset()
    value = torch.full((1 + rank, 1), float(rank + 1))
    value[1:] = 10.0
    zero = torch.zeros_like(value)
    present = torch.ones(1 + rank, 1, dtype=torch.bool)
    metric.update({"pred": {"a": value}, "label": {"a": zero}, "present": present, KEPT: ~present, MODALITIES: ("a",)})
    torch.save({"state": unwrap(network).state_dict(), "mse": metric.compute()}, tmp / f"recovery_rank{rank}.pt")


def test_recovery_training_ddp_keeps_ranks_in_lockstep(tmp_path: Path):
    """The ELBO runs through DDP's forward: both ranks (different samples, different noise) hold the same weights.
    Not equal to a single-process run: the reparameterisation noise is drawn per rank (seed + rank)."""
    _spawn(_recovery_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"recovery_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    initial = _recovery_net().state_dict()
    assert any(not torch.equal(ranks[0]["state"][k], v) for k, v in initial.items())
    for key in initial:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    # squared errors: rank 0 {1}, rank 1 {4, 100} -> mean over the 3 pairs on every rank
    assert ranks[0]["mse"] == pytest.approx(35.0) and ranks[1]["mse"] == pytest.approx(35.0)


# ---------------------------------------------------------------------------------------------------- calibration
def _calibrate(network, loader, metric: str, strategy: str) -> SubsetCalibration:
    return fit_calibration(
        network.encode, network.fuse, loader, modalities=NAMES, num_classes=3, metric=metric, strategy=strategy,
        progress=False,
    )


def _calibration_worker(rank: int, tmp: Path) -> None:
    data = Dataset(_samples(60, 2, missing=True))
    loader = DataLoader(data, batch_size=7, sampler=MonaiDistributedSampler(data, even_divisible=False, shuffle=False))
    network = _net(1)
    for metric, strategy in (("cosine", "moments"), ("cosine", "two_pass"), ("euclidean", "two_pass")):
        _calibrate(network, loader, metric, strategy).save(tmp / f"calib_{metric}_{strategy}_rank{rank}.pt")
    count = torch.tensor([float(rank + 1)])
    all_reduce_(count, None)
    torch.save(count, tmp / f"count_rank{rank}.pt")


def test_calibration_ddp_equals_single_process(tmp_path: Path):
    _spawn(_calibration_worker, tmp_path)
    loader = DataLoader(Dataset(_samples(60, 2, missing=True)), batch_size=7, shuffle=False)
    for metric, strategy in (("cosine", "moments"), ("cosine", "two_pass"), ("euclidean", "two_pass")):
        single = _calibrate(_net(1), loader, metric, strategy)
        for rank in range(WORLD):
            calib = SubsetCalibration.load(tmp_path / f"calib_{metric}_{strategy}_rank{rank}.pt")
            torch.testing.assert_close(calib.prototypes[1:], single.prototypes[1:], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(calib.sigma[1:], single.sigma[1:], atol=1e-6, rtol=1e-5)
    assert torch.load(tmp_path / "count_rank0.pt").item() == 3.0


# ---------------------------------------------------------------------------------------------------- inference
class _FillRecovery:
    """Stand-in recovery: missing modalities get a constant (observed ones are kept)."""

    def __call__(self, inputs, present):
        out = {}
        for m, name in enumerate(NAMES):
            keep = present[:, m].reshape(-1, *([1] * (inputs[name].ndim - 1)))
            out[name] = torch.where(keep, inputs[name], torch.ones_like(inputs[name]))  # 1: a valid category too
        return out


def _infer(network, calibration, loader, out_dir: Path) -> SelectionReportWriter:
    writer = SelectionReportWriter(output_dir=out_dir, modalities=NAMES, plot=False)
    inferer = DyMoInferer(calibration, recovery=_FillRecovery())
    DyMoEvaluator("cpu", loader, network.eval(), inferer, val_handlers=[writer]).run()
    return writer


def _inference_worker(rank: int, tmp: Path, n: int) -> None:
    network = _net(2)
    network.load_state_dict(torch.load(tmp / "net.pt", weights_only=True))
    calibration = SubsetCalibration.load(tmp / "calibration.pt")
    data = Dataset(_samples(n, 3, missing=True))
    shards = {
        "monai": MonaiDistributedSampler(data, even_divisible=False, shuffle=False),  # no padding
        "torch": torch.utils.data.DistributedSampler(data, shuffle=False),  # pads with a repeated sample
    }
    for name, sampler in shards.items():
        writer = _infer(network, calibration, DataLoader(data, batch_size=3, sampler=sampler), tmp / name)
        torch.save([r["index"] for r in writer.records], tmp / f"{name}_shard_rank{rank}.pt")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _assert_same_rows(rows: list[dict], ref: list[dict]) -> None:
    assert [r["patient_id"] for r in rows] == [r["patient_id"] for r in ref]
    for row, expected in zip(rows, ref):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            if (key in ("probability", "quality", "ics", "log_ics") or key.endswith("_reward")) and _is_number(value):
                # float32 results depend slightly on the batch composition (the shards batch other samples together);
                # a reward is a difference of two scores in [0, 1], so its error is absolute (about 1e-5), not relative
                assert float(row[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), (row["patient_id"], key)
            elif key.endswith("_rewards") and value:
                got, want = row[key].split(";"), value.split(";")
                assert len(got) == len(want), (row["patient_id"], key)
                for g, w in zip(got, want):
                    if _is_number(w):
                        assert float(g) == pytest.approx(float(w), rel=1e-4, abs=1e-5), (row["patient_id"], key)
                    else:
                        assert g == w, (row["patient_id"], key)
            elif key.endswith("_decision"):  # the same words; the reward quoted in them within the same tolerance
                got, want = _NUMBER.split(row[key]), _NUMBER.split(value)
                assert got == want, (row["patient_id"], key)
                for g, w in zip(_NUMBER.findall(row[key]), _NUMBER.findall(value)):
                    assert float(g) == pytest.approx(float(w), rel=1e-3, abs=1e-5), (row["patient_id"], key)
            else:
                assert row[key] == value, (row["patient_id"], key)


_NUMBER = re.compile(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?")


def test_inference_ddp_report_equals_single_process(tmp_path: Path):
    """Each rank infers only its shard; rank 0 writes one report, one row per datalist entry in datalist order, equal
    to the single-process report (also with torch's padding sampler: the repeated sample is dropped)."""
    n = 11  # odd: the shards differ in size, and torch's sampler repeats sample 0 on rank 1
    network = _net(2)
    calib_data = DataLoader(Dataset(_samples(60, 4)), batch_size=20)
    calibration = _calibrate(network, calib_data, "cosine", "moments")
    torch.save(network.state_dict(), tmp_path / "net.pt")
    calibration.save(tmp_path / "calibration.pt")
    _spawn(_inference_worker, tmp_path, n)

    single = _infer(network, calibration, DataLoader(Dataset(_samples(n, 3, missing=True)), batch_size=3), tmp_path)
    ref_rows = _rows(tmp_path / "dymo_report.csv")
    assert [r["patient_id"] for r in ref_rows] == [f"p{i:03d}" for i in range(n)]
    assert [r["index"] for r in single.records] == list(range(n))
    shards = [torch.load(tmp_path / f"monai_shard_rank{r}.pt") for r in range(WORLD)]
    assert shards == [list(range(0, n, 2)), list(range(1, n, 2))]  # each rank inferred its shard only
    assert torch.load(tmp_path / "torch_shard_rank1.pt") == [*range(1, n, 2), 0]  # padded with a duplicate
    for name in ("monai", "torch"):
        _assert_same_rows(_rows(tmp_path / name / "dymo_report.csv"), ref_rows)
        merged = json.loads((tmp_path / name / "dymo_report.json").read_text())["patients"]
        assert [r["index"] for r in merged] == list(range(n))


# ---------------------------------------------------------------------------------------------------- bundle
@pytest.mark.slow
def test_bundle_multi_gpu_inference_and_calibration_with_torchrun(tmp_path: Path):
    """The PolyMNIST bundle's fragments under ``torchrun`` (2 CPU processes, gloo): the merged report and the
    calibration equal the single-process ones."""
    import subprocess
    import sys

    from monai.bundle import run

    from monai_dymo.data import build_polymnist_to_disk, generate_pattern_files

    root = Path(__file__).resolve().parents[1]
    bundle, shared = root / "bundles" / "polymnist_dymo", root.parent / "shared" / "data"
    mnist, backgrounds = shared / "mnist" / "mnist.npz", shared / "polymnist_backgrounds"
    if not mnist.is_file() or not backgrounds.is_dir():
        pytest.skip(f"PolyMNIST inputs not found at {mnist} / {backgrounds}")
    data = tmp_path / "polymnist"
    build_polymnist_to_disk(mnist, backgrounds, data, seed=0, max_samples=300, preview=False, progress=False)
    generate_pattern_files(300, ["m0", "m1", "m2", "m3", "m4"], [0.8], [0], data / "patterns")
    common = {"dataset_dir": str(data), "max_samples": 45, "num_threads": 1}
    cfg = [str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "dymo.yaml")]

    def overrides(out: str) -> dict:
        return {**common, "output_dir": str(tmp_path / out), "calibration_file": str(tmp_path / out / "calib.pt")}

    def torchrun(*configs: str, out: str) -> None:
        args = [f"--{k}={v}" for k, v in overrides(out).items()]
        files = str(cfg + [str(bundle / "configs" / c) for c in configs])
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle), *args]
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        # on failure show what the ranks said (the default CalledProcessError message truncates it)
        assert done.returncode == 0, f"torchrun {configs} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    def single(*configs: str, out: str) -> None:
        run(config_file=cfg + [str(bundle / "configs" / c) for c in configs], bundle_root=str(bundle), **overrides(out))

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    torchrun("calibrate.yaml", "multi_gpu_calibrate.yaml", out="two")
    single("calibrate.yaml", out="one")
    one, two = (SubsetCalibration.load(tmp_path / d / "calib.pt") for d in ("one", "two"))
    torch.testing.assert_close(two.prototypes[1:], one.prototypes[1:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two.sigma[1:], one.sigma[1:], atol=1e-6, rtol=1e-5)
    # the held-out certification (every rank runs it on the whole validation split) is the single-process one
    assert two.certification["margin"] == one.certification["margin"]
    assert [(t["fixed"], t["broken"]) for t in two.certification["tests"]] == [
        (t["fixed"], t["broken"]) for t in one.certification["tests"]]

    torchrun("inference.yaml", "multi_gpu_inference.yaml", out="two")
    single("inference.yaml", out="one")
    report = Path("inference_rate0.8_seed0") / "dymo_report.csv"
    ref = _rows(tmp_path / "one" / report)
    assert len(ref) == 45
    _assert_same_rows(_rows(tmp_path / "two" / report), ref)
