"""The PolyMNIST bundle: metadata, shipped weights, and every config run end to end at CI size."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_metadata

import monai_dymo
from monai_dymo.cli import main as cli_main
from monai_dymo.data import build_polymnist_to_disk, generate_pattern_files, load_polymnist_npz
from monai_dymo.networks import example_fusion_inputs

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "polymnist_dymo"
CONFIGS = BUNDLE / "configs"
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "data" / "mnist" / "mnist.npz"
BACKGROUNDS = SHARED / "data" / "polymnist_backgrounds"
SCHEMA = SHARED / "schemas" / "meta_schema_20240725.json"
MODALITIES = ["m0", "m1", "m2", "m3", "m4"]


def _configs(*names: str) -> list[str]:
    return [str(CONFIGS / "common.yaml"), str(CONFIGS / "dymo.yaml"), *(str(CONFIGS / n) for n in names)]


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
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == [*MODALITIES, "present"]  # the network's real inputs, in its order
    assert all(fmt["inputs"][m]["num_channels"] == 3 and fmt["inputs"][m]["spatial_shape"] == [28, 28] for m in MODALITIES)
    assert fmt["inputs"]["present"]["channel_def"] == {str(i): m for i, m in enumerate(MODALITIES)}
    assert fmt["outputs"]["pred"]["type"] == "logits" and fmt["outputs"]["pred"]["num_channels"] == 10
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "docs" / "README.md").is_file()
    assert "MNIST" in (BUNDLE / "docs" / "data_license.txt").read_text()


def test_large_files_list_every_shipped_weight_with_its_sha256():
    large = ConfigParser.load_config_file(str(BUNDLE / "large_files.yml"))["large_files"]
    listed = {entry["path"]: entry for entry in large}
    assert set(listed) == {f"models/{p.name}" for p in (BUNDLE / "models").glob("*.pt")}
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256"
        digest = hashlib.sha256((BUNDLE / path).read_bytes()).hexdigest()
        assert entry["hash_val"] == digest, f"{path}: update large_files.yml (sha256sum {path})"


def test_verify_net_config_and_ckpt_export_of_the_fusion_network(tmp_path):
    _run("verify_net.yaml")  # raises if metadata and network disagree
    ts = tmp_path / "fusion.ts"
    ckpt_export(
        net_id="export_network_def",
        filepath=str(ts),
        ckpt_file=str(BUNDLE / "models" / "fusion.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=_configs("export.yaml"),
        bundle_root=str(BUNDLE),
        device="$torch.device('cpu')",
    )
    scripted = torch.jit.load(str(ts))
    parser = ConfigParser()
    parser.read_config(_configs())
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    network = monai_dymo.load_weights(parser.get_parsed_content("network"), BUNDLE / "models" / "fusion.pt").eval()
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    inputs, present = example_fusion_inputs(meta["network_data_format"], batch_size=4)
    with torch.no_grad():
        assert torch.allclose(scripted(inputs, present), network(inputs, present)[0], atol=1e-5)


def test_shipped_weights_load_into_the_configured_networks():
    parser = ConfigParser()
    parser.read_config(_configs())
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    fusion = parser.get_parsed_content("network")
    recovery = parser.get_parsed_content("recovery")
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
    parser.read_config(_configs("train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20})
    raw = load_polymnist_npz(tiny_polymnist / "polymnist_train.npz", max_samples=20)["images"] / 255.0
    parser["blur_prob"] = 1.0
    item = parser.get_parsed_content("train#dataset")[3]
    for i, m in enumerate(MODALITIES):  # every modality blurred: smoother than the stored image
        assert _total_variation(item[m]) < _total_variation(torch.as_tensor(raw[3, i], dtype=torch.float32))
    parser["blur_prob"] = 0.5
    dataset = parser.get_parsed_content("train#dataset", instantiate=True, lazy=False)
    stored = torch.as_tensor(raw, dtype=torch.float32)
    blurred = torch.tensor(
        [[not torch.allclose(dataset[k][m], stored[k, i]) for i, m in enumerate(MODALITIES)] for k in range(20)]
    )
    assert 0 < int(blurred.sum()) < blurred.numel()
    assert len({tuple(r.tolist()) for r in blurred}) > 1  # the modalities of a sample are drawn independently


def test_metric_and_margin_settings_flow_through_the_configs(tiny_polymnist):
    # one `metric` setting: fusion network projection, its training loss and the fitted calibration
    parser = ConfigParser()
    parser.read_config(_configs("train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20})
    parser["metric"] = "euclidean"
    net = parser.get_parsed_content("network")
    assert net.metric == "euclidean"
    assert parser.get_parsed_content("train#trainer").loss_function.metric == "euclidean"
    parser = ConfigParser()
    parser.read_config(_configs("calibrate.yaml"))
    parser.update(
        {"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "max_samples": 20, "metric": "euclidean"}
    )
    assert parser.get_parsed_content("fitted_calibration").metric == "euclidean"
    # the reward margin: certified on held-out data by default (the shipped calibration file's), the paper's rule (0)
    # and a fixed number as options
    parser = ConfigParser()
    parser.read_config(_configs("inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist)})
    inferer = parser.get_parsed_content("inferer")
    shipped = monai_dymo.SubsetCalibration.load(BUNDLE / "models" / "calibration.pt").certification
    assert inferer.margin_source == "certified" and inferer.margin == shipped["margin"]
    assert inferer.refer_rule is not None and inferer.refer_alpha == 0.1
    parser["margin"] = 0.0
    inferer = parser.get_parsed_content("inferer", lazy=False)
    assert inferer.margin == 0.0 and inferer.margin_source == "method rule"
    parser["margin"] = 0.15
    assert parser.get_parsed_content("inferer", lazy=False).margin_source == "fixed"


def test_holdout_fraction_keeps_certification_patients_out_of_the_checkpoint_choice(tiny_polymnist):
    def parsed(config: str, key: str):
        parser = ConfigParser()
        parser.read_config(_configs(config))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_polymnist), "holdout_fraction": 0.5})
        return parser.get_parsed_content(key)

    checkpoint = parsed("train.yaml", "validate#dataloader").dataset
    certify = parsed("calibrate.yaml", "certify_loader").dataset
    n_val = int(load_polymnist_npz(tiny_polymnist / "polymnist_val.npz")["labels"].shape[0])
    a, b = set(checkpoint.indices), set(certify.indices)
    assert not a & b and len(a | b) == n_val and abs(len(a) - len(b)) <= 1


@pytest.mark.slow
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
    # a long run leaves a checkpoint per epoch, so that it can be stopped and continued at any epoch
    assert (tmp_path / "runs" / "recovery" / "model_epoch=1.pt").is_file()
    _run("train.yaml", max_epochs=1, batch_size=64, **common)
    assert (tmp_path / "models" / "recovery.pt").is_file() and (tmp_path / "models" / "fusion.pt").is_file()
    _run("calibrate.yaml", **common)
    cal = monai_dymo.SubsetCalibration.load(tmp_path / "models" / "calibration.pt")
    assert cal.prototypes.shape[:2] == (32, 10)
    # certified on the held-out half of the validation split (holdout_fraction 0.5, the default): one test per
    # margin, strict to lenient, with counts and p-values
    cert = cal.certification
    n_val = int(load_polymnist_npz(tiny_polymnist / "polymnist_val.npz")["labels"].shape[0])
    assert cert["num_patients"] == round(n_val / 2) and [t["margin"] for t in cert["tests"]] == cert["margins"]
    certified = [t["margin"] for t in cert["tests"] if t["status"] == "certified"]
    assert cert["margin"] == (min(certified) if certified else float("inf"))
    # the probability temperature is fitted on the other half (the samples that do not certify) and saved
    fit = cert["probability_temperature"]
    assert fit["patients"] == n_val - cert["num_patients"] and not fit["approximate"]
    assert cal.probability_temperature == fit["value"] > 0

    _run("inference.yaml", "evaluate.yaml", missing_rate=0.8, pattern_seed=1, **common)
    report = pd.read_csv(tmp_path / "runs" / "eval_rate0.8_seed1" / "dymo_report.csv", dtype=str, keep_default_na=False)
    n_test = int(load_polymnist_npz(tiny_polymnist / "polymnist_test.npz")["labels"].shape[0])
    assert len(report) == n_test and report["patient_id"].is_unique
    assert set(report["refer"]) <= {"yes", "no"} and set(report["margin_source"]) == {"certified"}
    trust = json.loads((tmp_path / "runs" / "eval_rate0.8_seed1" / "dymo_report_trust.json").read_text())
    assert trust["refer"]["coverage"] == pytest.approx((report["refer"] == "no").mean())
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
            "polymnist-demo",
            "--dataset-dir",
            str(tiny_polymnist),
            "--output-dir",
            str(tmp_path),
            "--max-samples",
            "120",
            "--missing-rate",
            "0.55",
            "--seed",
            "17",
        ]
    )
    assert code == 0  # any rate in [0, 1] and any seed: the pattern file is generated for them
    report = pd.read_csv(tmp_path / "inference_rate0.55_seed17" / "dymo_report.csv", dtype=str, keep_default_na=False)
    assert len(report) == 120
    assert set(report["error"]) == {""}
    assert (tiny_polymnist / "patterns" / "missing_rate0.55_seed17.csv").is_file()
    records = json.loads((tmp_path / "inference_rate0.55_seed17" / "dymo_report.json").read_text())["patients"]
    assert len(records) == 120 and all(set(r["selected"]) >= set(r["observed"]) for r in records)
    html = (tmp_path / "inference_rate0.55_seed17" / "dymo_report.html").read_text()
    pages = list((tmp_path / "inference_rate0.55_seed17" / "dymo_report_files" / "patients").glob("*.html"))
    pictures = list((tmp_path / "inference_rate0.55_seed17" / "dymo_report_files" / "img").glob("*.png"))
    assert "Legend" in html and len(pages) == 100 and len(pictures) == 5 * 100  # 5 modalities per page, 2D each


def test_demo_command_names_a_missing_mnist_archive(tmp_path, capsys):
    code = cli_main(["polymnist-demo", "--dataset-dir", str(tmp_path / "none"), "--mnist", str(tmp_path / "nope.npz")])
    assert code == 2
    assert "nope.npz" in capsys.readouterr().err


# ---------------------------------------------------------------------------- experiment tracking (--tracking mlflow)
def _mlflow_runs(output_dir: Path):
    """The runs of MONAI's default experiment in the default tracking store of ``--tracking mlflow``
    (a SQLite database ``<output_dir>/mlruns.db``; MLflow 3 refuses the old ``file:`` store)."""
    mlflow = pytest.importorskip("mlflow")
    from monai.utils import path_to_sqlite_uri

    client = mlflow.tracking.MlflowClient(tracking_uri=path_to_sqlite_uri(str(output_dir / "mlruns.db")))
    experiment = client.get_experiment_by_name("monai_experiment")
    assert experiment is not None, "no MLflow experiment was created"
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_inference_with_mlflow_tracking_keeps_the_report_writer(tiny_polymnist, tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "runs"
    _run(
        "inference.yaml",
        tracking="mlflow",
        dataset_dir=str(tiny_polymnist),
        output_dir=str(out),
        max_samples=40,
        missing_rate=0.4,
        num_threads=1,
    )
    report = pd.read_csv(out / "inference_rate0.4_seed0" / "dymo_report.csv", dtype=str, keep_default_na=False)
    assert len(report) == 40  # the bundle's SelectionReportWriter still ran
    _, runs = _mlflow_runs(out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # closed by the evaluator's MLFlowHandler
    assert "epoch_length" in runs[0].data.params


@pytest.mark.slow
def test_training_with_mlflow_tracking_keeps_every_bundle_handler(tiny_polymnist, tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "runs"
    common = {
        "tracking": "mlflow",
        "dataset_dir": str(tiny_polymnist),
        "model_dir": str(tmp_path / "models"),
        "output_dir": str(out),
        "max_samples": 40,
        "max_epochs": 1,
        "num_threads": 1,
    }
    _run("train_recovery.yaml", batch_size=20, val_samples=20, **common)
    assert (tmp_path / "models" / "recovery.pt").is_file()  # CheckpointSaver of train#handlers
    assert any((out / "recovery").glob("events.out.tfevents.*"))  # TensorBoard of train#/validate#handlers
    client, runs = _mlflow_runs(out)
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert "train_loss" in metrics  # the trainer's MLFlowHandler (train#handlers)
    assert "recovery_mse" in metrics  # the validator's MLFlowHandler (validate#handlers)

    _run("train.yaml", batch_size=20, **common)
    assert (tmp_path / "models" / "fusion.pt").is_file()
    assert (out / "fusion" / "fusion_final.pt").is_file()
    _, runs = _mlflow_runs(out)
    assert len(runs) == 2 and all("train_loss" in r.data.metrics for r in runs)


# ---------------------------------------------------------------------------- errors that name their cause
def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def test_bundle_refuses_an_out_of_range_missing_rate(tiny_polymnist, tmp_path):
    with pytest.raises(Exception) as err:
        _run("inference.yaml", dataset_dir=str(tiny_polymnist), output_dir=str(tmp_path), missing_rate=1.5)
    cause = _root_cause(err.value)
    assert isinstance(cause, ValueError) and "missing rate" in str(cause)
    assert "1.5" in str(cause) and "[0, 1]" in str(cause)


@pytest.mark.slow
def test_bundle_run_ends_with_the_one_line_message(tmp_path):
    """`python -m monai.bundle run`: the last line printed is the project's message, the exit status non-zero."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(_configs("inference.yaml")),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "runs"),
           "--missing_rate", "1.5"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode != 0
    assert lines[-1].startswith("monai-dymo: error: ") and "missing rate" in lines[-1] and "1.5" in lines[-1], lines[-3:]
    assert not any(line.startswith("RuntimeError") for line in lines)


def _bundle_with_other_fusion_weights(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the bundle whose fusion.pt holds the weights of a narrower network."""
    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    (bundle / "models").mkdir()
    for name in ("recovery.pt", "calibration.pt"):
        (bundle / "models" / name).symlink_to(BUNDLE / "models" / name)
    other = monai_dymo.networks.build_polymnist_fusion(modalities=MODALITIES, num_classes=10, dim=32, num_heads=4)
    bad = bundle / "models" / "fusion.pt"
    torch.save(other.state_dict(), bad)
    return bundle, bad


def test_fusion_weights_that_do_not_fit_give_one_line(tiny_polymnist, tmp_path, capsys):
    bundle, bad = _bundle_with_other_fusion_weights(tmp_path)
    with pytest.raises(Exception) as err:  # bundle run: the root cause is one line naming the file and parameter
        run(config_file=[str(bundle / "configs" / n) for n in ("common.yaml", "dymo.yaml", "inference.yaml")],
            bundle_root=str(bundle), dataset_dir=str(tiny_polymnist), output_dir=str(tmp_path / "runs"))
    cause = _root_cause(err.value)
    assert isinstance(cause, ValueError) and "\n" not in str(cause)
    assert str(bad) in str(cause) and "parameter '" in str(cause)
    code = cli_main(["polymnist-demo", "--bundle", str(bundle), "--dataset-dir", str(tiny_polymnist), "--output-dir",
                     str(tmp_path / "cli"), "--max-samples", "20", "--missing-rate", "0.4"])
    assert code == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("monai-dymo:")]
    assert len(err_lines) == 1 and str(bad) in err_lines[0] and "do not fit" in err_lines[0]


@pytest.mark.slow
def test_fusion_training_is_the_reference_recipe_and_continues_from_given_weights(tiny_polymnist, tmp_path):
    common = {"dataset_dir": str(tiny_polymnist), "max_samples": 300, "num_threads": 1, "batch_size": 64}
    parser = ConfigParser()
    parser.read_config(_configs("train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), **common})
    net = parser.get_parsed_content("network")  # docs/method.md §7: dim 128, 4 tokens per modality
    tokens = net.encode({m: torch.zeros(2, 3, 28, 28) for m in MODALITIES})
    assert all(tokens[m].shape == (2, 4, 128) for m in MODALITIES)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["weight_decay"] == 0
    assert parser["max_epochs"] == 100 and parser["early_stop_patience"] == 20
    assert type(parser.get_parsed_content("lr_scheduler")) is torch.optim.lr_scheduler.ConstantLR  # no schedule

    first = {**common, "model_dir": str(tmp_path / "first"), "output_dir": str(tmp_path / "runs1")}
    _run("train.yaml", max_epochs=1, **first)
    start = torch.load(tmp_path / "first" / "fusion.pt", weights_only=True)  # the best validation epoch
    # continuing with a zero learning rate: the trained parameters are exactly those it started from
    again = {**common, "model_dir": str(tmp_path / "again"), "output_dir": str(tmp_path / "runs2")}
    _run(
        "train.yaml",
        max_epochs=1,
        learning_rate=0.0,
        prototype_warmup_epochs=1,
        initial_weights=str(tmp_path / "first" / "fusion.pt"),
        **again,
    )
    end = torch.load(tmp_path / "runs2" / "fusion" / "fusion_final.pt", weights_only=True)
    params = [name for name, _ in net.named_parameters()]
    assert params and all(torch.equal(start[k], end[k]) for k in params)
    fresh = parser.get_parsed_content("network_def", lazy=False).state_dict()
    assert not all(torch.equal(fresh[k], end[k]) for k in params)  # not a fresh initialisation
