"""The PolyMNIST bundle: metadata, shipped weights, and every config run end to end at CI size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata

import monai_dymo
from monai_dymo.cli import main as cli_main
from monai_dymo.data import build_polymnist_to_disk, generate_pattern_files, load_polymnist_npz

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "polymnist_dymo"
CONFIGS = BUNDLE / "configs"
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "data" / "mnist" / "mnist.npz"
BACKGROUNDS = SHARED / "data" / "polymnist_backgrounds"
SCHEMA = SHARED / "schemas" / "meta_schema_20240725.json"
MODALITIES = ["m0", "m1", "m2", "m3", "m4"]


def _configs(*names: str) -> list[str]:
    return [str(CONFIGS / "common.yaml"), *(str(CONFIGS / n) for n in names)]


def _run(*names: str, **overrides) -> None:
    run(config_file=_configs(*names), logging_file=str(CONFIGS / "logging.conf"), bundle_root=str(BUNDLE), **overrides)


@pytest.fixture(scope="module")
def tiny_polymnist(tmp_path_factory):
    """A CI-sized PolyMNIST (first 300 MNIST images of each split) with its missing patterns."""
    if not MNIST.is_file() or not BACKGROUNDS.is_dir():
        pytest.skip(f"PolyMNIST inputs not found at {MNIST} / {BACKGROUNDS}")
    out = tmp_path_factory.mktemp("polymnist")
    build_polymnist_to_disk(MNIST, BACKGROUNDS, out, seed=0, max_samples=300, preview=False, progress=False)
    n_test = int(load_polymnist_npz(out / "polymnist_test.npz")["labels"].shape[0])
    generate_pattern_files(n_test, MODALITIES, [0.4, 0.8], [0, 1], out / "patterns")
    return out


def test_metadata_verifies_offline(tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"bundle schema not found at {SCHEMA}")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 10
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "docs" / "README.md").is_file()


def test_shipped_weights_load_into_the_configured_networks():
    parser = ConfigParser()
    parser.read_config(_configs())
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    fusion = parser.get_parsed_content("fusion_network")
    recovery = parser.get_parsed_content("recovery_network")
    fusion.load_state_dict(torch.load(BUNDLE / "models" / "fusion.pt", weights_only=True))
    recovery.load_state_dict(torch.load(BUNDLE / "models" / "recovery.pt", weights_only=True))
    cal = parser.get_parsed_content("calibration")
    assert isinstance(cal, monai_dymo.SubsetCalibration)
    assert (cal.num_modalities, cal.num_classes) == (len(fusion.modalities), fusion.num_classes) == (5, 10)
    assert torch.isfinite(cal.sigma[1:]).all() and (cal.sigma[1:] > 0).all()


def _total_variation(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum())


def test_fusion_training_blurs_each_modality_independently(tiny_polymnist):
    parser = ConfigParser()
    parser.read_config(_configs("train_fusion.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20})
    raw = load_polymnist_npz(tiny_polymnist / "polymnist_train.npz", max_samples=20)["images"] / 255.0
    parser["blur_prob"] = 1.0
    item = parser.get_parsed_content("train_dataset")[3]
    for i, m in enumerate(MODALITIES):  # every modality blurred: smoother than the stored image
        assert _total_variation(item[m]) < _total_variation(torch.as_tensor(raw[3, i], dtype=torch.float32))
    parser["blur_prob"] = 0.5
    dataset = parser.get_parsed_content("train_dataset", instantiate=True, lazy=False)
    stored = torch.as_tensor(raw, dtype=torch.float32)
    blurred = torch.tensor(
        [[not torch.allclose(dataset[k][m], stored[k, i]) for i, m in enumerate(MODALITIES)] for k in range(20)]
    )
    assert 0 < int(blurred.sum()) < blurred.numel()
    assert len({tuple(r.tolist()) for r in blurred}) > 1  # the modalities of a sample are drawn independently


def test_metric_and_margin_settings_flow_through_the_configs(tiny_polymnist):
    # one `metric` setting: fusion network projection, its training loss and the fitted calibration
    parser = ConfigParser()
    parser.read_config(_configs("train_fusion.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20})
    parser["metric"] = "euclidean"
    net = parser.get_parsed_content("fusion_network")
    assert net.metric == "euclidean"
    assert parser.get_parsed_content("trainer").loss_function.metric == "euclidean"
    parser = ConfigParser()
    parser.read_config(_configs("calibrate.yaml"))
    parser.update(
        {"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20, "metric": "euclidean"}
    )
    assert parser.get_parsed_content("fitted_calibration").metric == "euclidean"
    # the reward margin: the shipped default and the paper's rule (0)
    parser = ConfigParser()
    parser.read_config(_configs("inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist)})
    assert parser.get_parsed_content("inferer").margin == pytest.approx(0.15)
    parser["margin"] = 0.0
    assert parser.get_parsed_content("inferer", lazy=False).margin == 0.0


def test_every_config_runs_at_ci_size(tiny_polymnist, tmp_path):
    common = {
        "dataset_dir": str(tiny_polymnist),
        "model_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "max_samples": 300,
        "num_threads": 1,
    }
    _run("train_recovery.yaml", max_epochs=1, **common)
    # continuing from given weights: with a zero learning rate the saved network is exactly the one it started from
    first = tmp_path / "models" / "recovery.pt"
    again = {**common, "model_dir": str(tmp_path / "continued")}
    _run("train_recovery.yaml", max_epochs=1, learning_rate=0.0, initial_weights=str(first), **again)
    start, end = torch.load(first, weights_only=True), torch.load(tmp_path / "continued" / "recovery.pt", weights_only=True)
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)
    _run("train_fusion.yaml", max_epochs=1, batch_size=64, **common)
    assert (tmp_path / "models" / "recovery.pt").is_file() and (tmp_path / "models" / "fusion.pt").is_file()
    _run("calibrate.yaml", **common)
    cal = monai_dymo.SubsetCalibration.load(tmp_path / "models" / "calibration.pt")
    assert cal.prototypes.shape[:2] == (32, 10)

    _run("inference.yaml", "evaluate.yaml", missing_rate=0.8, pattern_seed=1, **common)
    report = pd.read_csv(tmp_path / "runs" / "eval_rate0.8_seed1" / "dymo_report.csv", dtype=str, keep_default_na=False)
    n_test = int(load_polymnist_npz(tiny_polymnist / "polymnist_test.npz")["labels"].shape[0])
    assert len(report) == n_test and report["patient_id"].is_unique
    pattern = pd.read_csv(tiny_polymnist / "patterns" / "missing_rate0.8_seed1.csv")
    for m in MODALITIES:  # the report's observed modalities are exactly the pattern's
        observed = report[f"{m}_status"] == "observed"
        assert (observed.to_numpy() == (pattern[m].to_numpy() == 1)).all()
        assert set(report.loc[~observed, f"{m}_status"]) <= {"accepted", "rejected", "unused"}

    results_dir = tmp_path / "results"
    _run("compare.yaml", missing_rates=[0.4, 0.8], pattern_seeds=[0, 1], results_dir=str(results_dir), **common)
    results = pd.read_csv(results_dir / "results.csv")
    assert sorted(zip(results["rate"], results["seed"])) == [(0.4, 0), (0.4, 1), (0.8, 0), (0.8, 1)]
    for col in ("dymo", "observed_only", "all_recovered", "complete"):
        assert results[col].between(0, 1).all()
    assert (results_dir / "accuracy_vs_missing_rate.png").stat().st_size > 0
    assert "DyMo" in (results_dir / "results.md").read_text()


def test_demo_command_writes_a_report_with_the_shipped_weights(tiny_polymnist, tmp_path):
    code = cli_main(
        [
            "demo",
            "--dataset-dir",
            str(tiny_polymnist),
            "--output-dir",
            str(tmp_path),
            "--max-samples",
            "120",
            "--missing-rate",
            "0.6",
        ]
    )
    assert code == 0
    report = pd.read_csv(tmp_path / "inference_rate0.6_seed0" / "dymo_report.csv", dtype=str, keep_default_na=False)
    assert len(report) == 120
    assert set(report["error"]) == {""}
    records = json.loads((tmp_path / "inference_rate0.6_seed0" / "dymo_report.json").read_text())
    assert len(records) == 120 and all(set(r["selected"]) >= set(r["observed"]) for r in records)


def test_demo_command_names_a_missing_mnist_archive(tmp_path, capsys):
    code = cli_main(["demo", "--dataset-dir", str(tmp_path / "none"), "--mnist", str(tmp_path / "nope.npz")])
    assert code == 2
    assert "nope.npz" in capsys.readouterr().err
