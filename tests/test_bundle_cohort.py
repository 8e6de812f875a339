"""The cohort bundle end to end: every stage by ``python -m monai.bundle run`` on tiny cohorts (2D + 3D + clinical, and
clinical only), with the user's cohort given as one YAML file of data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.cohort_fixtures import make_tiny_cohort

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cohort_dymo"
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "meta_schema_20240725.json"
SMALL = ["--network_def#dim", "16", "--recovery_def#latent_dim", "8", "--num_threads", "1", "--cache", "memory"]


def stage_configs(*names: str) -> list[str]:
    """The bundle's config files of a stage, as every command lists them: common.yaml, dymo.yaml, then ``names``."""
    return [str(BUNDLE / "configs" / n) for n in ("common.yaml", "dymo.yaml", *names)]


def run_stage(stage: str, cohort_file: Path, bundle_root: Path, *args: str) -> subprocess.CompletedProcess:
    """One bundle stage; the configs come from the repository's bundle, outputs go under ``bundle_root``."""
    configs = [*stage_configs(f"{stage}.yaml"), str(cohort_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--bundle_root", str(bundle_root), "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *SMALL, *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_bundle")
    cfg = make_tiny_cohort(root / "data", n_train=18, n_val=6, n_test=9)
    cohort_file = root / "my_cohort.yaml"
    cohort_file.write_text(yaml.safe_dump({"cohort": cfg}))
    out = root / "bundle"
    logs = {}
    for stage, extra in (("prepare", ()), ("train_recovery", ("--max_epochs", "2")), ("train", ("--max_epochs", "2")),
                         ("calibrate", ())):
        logs[stage] = run_stage(stage, cohort_file, out, *extra)
    return cfg, cohort_file, out, logs


@pytest.mark.slow
def test_training_stages_write_every_artefact(trained):
    cfg, cohort_file, out, logs = trained
    models = out / "models" / "tiny"
    for name in ("clinical_stats.json", "recovery.pt", "fusion.pt", "calibration.pt"):
        assert (models / name).is_file(), name
    assert (out / "runs" / "tiny" / "prepared" / "missingness.csv").is_file()
    text = logs["prepare"].stdout + logs["prepare"].stderr
    assert "testing / ct (image3d): 5 of 9 observed; missing: absent 2, file not found 1, unreadable 1" in text
    train_log = logs["train"].stdout + logs["train"].stderr
    assert "val_balanced_accuracy" in train_log  # validation balanced accuracy every epoch, best checkpoint kept
    assert "training / ct:" in train_log  # one summary line per modality instead of a warning per patient
    assert "marked missing" not in train_log
    recovery_log = logs["train_recovery"].stdout + logs["train_recovery"].stderr
    assert "Iter: " in recovery_log and " loss: " in recovery_log and " recon: " in recovery_log  # the training loss
    for stage, proc in logs.items():  # quiet logs: no progress-bar redraws, no nvImageCodec warning
        assert "\r" not in proc.stdout + proc.stderr and "nvImageCodec" not in proc.stdout + proc.stderr, stage
    # calibrate certified the margin on the held-out half of the validation split (holdout_fraction 0.5, the default;
    # 3 of 6 patients: too few to certify anything)
    from monai_dymo import SubsetCalibration

    cert = SubsetCalibration.load(models / "calibration.pt").certification
    assert cert["num_patients"] == 3 and cert["source"].startswith("validation split")
    assert cert["source"].endswith("holdout_fraction 0.5")
    assert cert["margin"] == float("inf") and all(t["status"] in ("skipped", "not certified", "not tested")
                                                 for t in cert["tests"])
    assert "held-out certification on 3 patients" in logs["calibrate"].stdout


@pytest.mark.slow
def test_inference_report_has_one_row_per_datalist_entry(trained):
    cfg, cohort_file, out, _ = trained
    run_stage("inference", cohort_file, out)
    report = pd.read_csv(out / "runs" / "tiny" / "inference_testing" / "dymo_report.csv")
    datalist = json.loads(Path(cfg["datalist"]).read_text())["testing"]
    assert list(report["patient_id"]) == [e["patient_id"] for e in datalist]
    row = report.set_index("patient_id").loc[datalist[0]["patient_id"]]
    assert str(row["ct_reason"]).startswith("file not found")
    assert "ct" in str(row["recovered"])
    # what the clinical table held in each missing field: a blank cell told apart from a missing-value code
    table = pd.read_csv(cfg["clinical_csv"], dtype=str, keep_default_na=False).set_index("patient_id")
    notes = report.set_index("patient_id")["clinical_missing_values"].fillna("")
    checked = set()
    for pid in notes.index.difference(table.index):  # no row in the table: said so, not "blank"
        assert notes[pid].startswith("absent") and "no row" in notes[pid], notes[pid]
    for pid in table.index.intersection(notes.index):
        row = table.loc[pid]
        expected = ["age = blank"] * (row["age"] == "") + ["sex = 'unknown'"] * (row["sex"] == "unknown")
        assert notes[pid] == ", ".join(expected), pid
        checked.update(expected)
    assert checked == {"age = blank", "sex = 'unknown'"}  # both kinds occur in the test split


@pytest.mark.slow
def test_inference_on_another_datalist(trained, tmp_path):
    cfg, cohort_file, out, _ = trained
    datalist = json.loads(Path(cfg["datalist"]).read_text())
    new = {"testing": [dict(e, patient_id=f"new_{e['patient_id']}") for e in datalist["validation"][:3]]}
    for e in new["testing"]:
        e.pop("label")
        for key in ("ct", "xray"):
            if e.get(key):
                e[key] = str(Path(cfg["datalist"]).parent / e[key])
    path = tmp_path / "new_patients.json"
    path.write_text(json.dumps(new))
    run_stage("inference", cohort_file, out, "--datalist", str(path), "--report_dir", str(tmp_path / "report"))
    report = pd.read_csv(tmp_path / "report" / "dymo_report.csv")
    assert list(report["patient_id"]) == [e["patient_id"] for e in new["testing"]]
    # patients not in the clinical table: clinical marked missing with the reason, not a crash
    assert report["clinical_reason"].str.startswith("absent: patient new_").all()


@pytest.mark.slow
def test_evaluate_on_natural_missingness(trained):
    cfg, cohort_file, out, _ = trained
    proc = run_stage("evaluate", cohort_file, out)
    folder = out / "runs" / "tiny" / "evaluate_testing"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["patients"] == 9 and set(summary["accuracy"]) == {"dymo", "observed_only", "all_recovered"}
    per_patient = pd.read_csv(folder / "per_patient.csv")
    base = per_patient["pred_observed_only"] == per_patient["label"]
    dymo = per_patient["pred_dymo"] == per_patient["label"]
    assert summary["fixed"]["dymo"] == int((dymo & ~base).sum()) and summary["broken"]["dymo"] == int((~dymo & base).sum())
    assert summary["complete"]["patients"] == int(per_patient["complete"].sum()) > 0
    assert "DyMo fixed / broken" in proc.stdout and (folder / "accuracy.png").is_file()
    # each modality alone, on the patients who have it observed (a missing modality is never scored alone)
    assert set(summary["single_modality"]) == {"ct", "xray", "clinical"}
    for m, acc in summary["single_modality"].items():
        seen = per_patient[f"single_{m}"] >= 0
        assert summary["single_modality_patients"][m] == int(seen.sum())
        assert seen.tolist() == per_patient["observed"].fillna("").str.split(";").apply(lambda o: m in o).tolist()
        assert acc == round(100.0 * float((per_patient.loc[seen, f"single_{m}"] == per_patient.loc[seen, "label"]).mean()), 2)
    assert "| modality | patients | accuracy alone |" in (folder / "results.md").read_text()
    # and DyMo's per-patient report on the same patients, with pictures, as inference writes it
    pages = list((folder / "report" / "dymo_report_files" / "patients").glob("*.html"))
    assert (folder / "report" / "dymo_report.html").is_file() and len(pages) == 9
    assert any("<img" in p.read_text() for p in pages)
    report = pd.read_csv(folder / "report" / "dymo_report.csv")
    assert list(report["prediction"]) == list(per_patient["pred_dymo"])  # the same DyMo predictions
    assert set(per_patient["label_name"]) <= set(cfg["classes"])  # class names beside the indices
    assert proc.stdout.strip().splitlines()[-1].startswith("DyMo on tiny (testing): 9 patients")
    # nothing certified on 6 validation patients: recoveries never accepted, so DyMo is discarding; everybody referred
    assert summary["margin"] == "inf" and summary["margin_source"] == "certified"
    assert summary["fixed"]["dymo"] == summary["broken"]["dymo"] == 0
    assert summary["refer"]["coverage"] == 0.0 and summary["refer"]["referred"] == 9
    # few held-out patients: the guarantee in expectation (refer_guarantee auto), said in the statement
    assert summary["refer"]["guarantee"] == "expected" and "guarantee auto" in summary["refer"]["statement"]
    # the clinicians' figures on the calibrated probabilities (temperature fitted by calibrate, saved with it)
    from monai_dymo import SubsetCalibration

    temperature = SubsetCalibration.load(out / "models" / "tiny" / "calibration.pt").probability_temperature
    assert summary["probability_temperature"] == pytest.approx(temperature)
    assert summary["metrics"]["dymo"]["num_patients"] == 9 and 0 <= summary["ece"] <= 1
    assert "## Clinical metrics" in (folder / "results.md").read_text() and (folder / "reliability.png").is_file()
    assert "balanced accuracy" in proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_clinical_only_cohort_uses_the_imputer(tmp_path):
    cfg = make_tiny_cohort(tmp_path / "data", n_train=18, n_val=6, n_test=6)
    cfg["name"] = "tiny_clinical"
    cfg["modalities"] = [
        {"name": "demographics", "kind": "clinical", "continuous": ["age"]},
        {"name": "sex_group", "kind": "clinical", "categorical": ["sex"]},
    ]
    cohort_file = tmp_path / "clinical.yaml"
    cohort_file.write_text(yaml.safe_dump({"cohort": cfg}))
    out = tmp_path / "bundle"
    for stage, extra in (("prepare", ()), ("train_recovery", ()), ("train", ("--max_epochs", "2")), ("calibrate", ()),
                         ("inference", ())):
        run_stage(stage, cohort_file, out, *extra)
    assert (out / "models" / "tiny_clinical" / "recovery_imputer.joblib").is_file()
    report = pd.read_csv(out / "runs" / "tiny_clinical" / "inference_testing" / "dymo_report.csv")
    assert len(report) == 6


def run_stage_failing(stage: str, cohort_file: Path, bundle_root: Path, *args: str) -> list[str]:
    """A stage that must not start: its exit status is non-zero; returns the printed lines (stdout and stderr)."""
    configs = [*stage_configs(f"{stage}.yaml"), str(cohort_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--bundle_root", str(bundle_root), "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *SMALL, *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.slow
def test_folds_cross_validate_certify_on_the_held_out_part_and_evaluate_the_ensemble(tmp_path):
    """folds 2 (the cohort file's plan): prepare writes folds.json over the training + validation patients but the
    held-out half of the validation split, train runs once per fold (fusion_fold<f>.pt), calibrate writes oof.csv
    (every patient of the folds once, with its fold), certifies the ensemble on the held-out patients (out of fold with
    holdout_fraction null), evaluate runs the ensemble on the testing split."""
    import torch

    from monai_dymo import SubsetCalibration

    cfg = make_tiny_cohort(tmp_path / "data", n_train=24, n_val=6, n_test=6)
    cohort_file = tmp_path / "my_cohort.yaml"
    cohort_file.write_text(yaml.safe_dump({"cohort": {**cfg, "plan": {"folds": 2, "max_epochs": 1}}}))
    out = tmp_path / "bundle"
    models = out / "models" / "tiny"
    run_stage("prepare", cohort_file, out)
    record = json.loads((models / "folds.json").read_text())
    datalist = json.loads(Path(cfg["datalist"]).read_text())
    held_out = sorted(record["held_out"])
    assert len(held_out) == 3 and set(held_out) <= {e["patient_id"] for e in datalist["validation"]}
    pooled = [e["patient_id"] for e in datalist["training"] + datalist["validation"] if e["patient_id"] not in held_out]
    assert record["folds"] == 2 and sorted(record["patients"]) == sorted(pooled)  # the testing split is in no fold
    lines = run_stage_failing("train", cohort_file, out)
    assert lines[-1] == "monai-dymo: error: folds is 2: give the fold to train, --fold 0 .. --fold 1."
    run_stage("train_recovery", cohort_file, out, "--max_epochs", "1")
    for f in (0, 1):
        run_stage("train", cohort_file, out, "--fold", str(f))
    assert (models / "fusion_fold0.pt").is_file() and (models / "fusion_fold1.pt").is_file()
    assert not (models / "fusion.pt").exists()
    calibrate = run_stage("calibrate", cohort_file, out)
    oof = pd.read_csv(models / "oof.csv", dtype={"patient_id": str})
    assert sorted(oof["patient_id"]) == sorted(pooled) and oof["patient_id"].is_unique
    assert [record["patients"][p] for p in oof["patient_id"]] == oof["fold"].tolist()
    assert {f"prob_dymo_{k}" for k in range(3)} <= set(oof.columns)
    cal = SubsetCalibration.load(models / "calibration.pt")
    cert = cal.certification
    assert cert["num_patients"] == 3 and cert["source"].startswith("validation split")
    assert "in none of the 2 folds" in cert["source"]
    assert cal.proj_dim == 2 * torch.load(models / "fusion_fold0.pt", weights_only=True)["projection.weight"].shape[0]
    assert "out-of-fold predictions of 27 patients" in calibrate.stdout
    no_holdout = tmp_path / "no_holdout.yaml"
    no_holdout.write_text(yaml.safe_dump({"cohort": {**cfg, "plan": {"folds": 2, "max_epochs": 1}}, "holdout_fraction": None}))
    lines = run_stage_failing("calibrate", no_holdout, out)  # folds.json left out another part: refused
    assert lines[-1].startswith("monai-dymo: error: folds file") and "rerun prepare" in lines[-1]
    run_stage("prepare", no_holdout, out)
    assert json.loads((models / "folds.json").read_text())["held_out"] == []
    for f in (0, 1):
        run_stage("train", no_holdout, out, "--fold", str(f))
    run_stage("calibrate", no_holdout, out)
    cert = SubsetCalibration.load(models / "calibration.pt").certification
    assert cert["num_patients"] == 30 and cert["source"].startswith("out of fold: 2 folds")
    run_stage("evaluate", cohort_file, out, "--report_pages", "false")
    per_patient = pd.read_csv(out / "runs" / "tiny" / "evaluate_testing" / "per_patient.csv",
                              dtype={"patient_id": str})
    assert sorted(per_patient["patient_id"]) == sorted(e["patient_id"] for e in datalist["testing"])


@pytest.mark.slow
def test_input_errors_end_the_stage_with_one_line(tmp_path):
    """Under `python -m monai.bundle run` the last line is the project's message naming the file and field, not MONAI's
    `RuntimeError: Failed to evaluate ConfigExpression`."""
    cfg = make_tiny_cohort(tmp_path / "data", n_train=3, n_val=3, n_test=3, size=8)
    cfg["modalities"][0]["kind"] = "imgae3d"
    bad = tmp_path / "bad_kind.yaml"
    bad.write_text(yaml.safe_dump({"cohort": cfg}))
    lines = run_stage_failing("inference", bad, tmp_path / "bundle")
    assert lines[-1] == ("monai-dymo: error: cohort.modalities[0] ('ct'): unknown modality kind 'imgae3d'; use one "
                         "of ['image2d', 'image3d', 'clinical'].")
    assert not any("Traceback" in line or "Failed to evaluate" in line for line in lines)
    cfg["modalities"][0]["kind"] = "image3d"
    cfg["datalist"] = str(tmp_path / "nope" / "datalist.json")
    bad.write_text(yaml.safe_dump({"cohort": cfg}))
    lines = run_stage_failing("prepare", bad, tmp_path / "bundle")
    assert lines[-1] == f"monai-dymo: error: datalist not found: {tmp_path / 'nope' / 'datalist.json'}"


def test_stats_file_found_for_another_model_dir_and_eval_dir_per_model(tmp_path):
    """Training into another --model_dir uses the statistics prepare wrote into the cohort's default model folder;
    evaluate writes one folder per model folder."""
    from monai.bundle import ConfigParser

    cfg = make_tiny_cohort(tmp_path / "data", n_train=3, n_val=3, n_test=3, size=8)
    default = tmp_path / "bundle" / "models" / "tiny"
    default.mkdir(parents=True)
    (default / "clinical_stats.json").write_text("{}")

    def parsed(stage, **overrides):
        parser = ConfigParser()
        parser.read_config(stage_configs(f"{stage}.yaml"))
        parser["cohort"] = cfg
        parser["bundle_root"] = str(tmp_path / "bundle")
        for k, v in overrides.items():
            parser[k] = v
        return parser

    seed1 = tmp_path / "seed1"
    assert parsed("train", model_dir=str(seed1)).get_parsed_content("stats_file") == str(default / "clinical_stats.json")
    assert parsed("prepare", model_dir=str(seed1)).get_parsed_content("stats_file") == str(seed1 / "clinical_stats.json")
    seed1.mkdir()
    (seed1 / "clinical_stats.json").write_text("{}")  # its own statistics win
    assert parsed("train", model_dir=str(seed1)).get_parsed_content("stats_file") == str(seed1 / "clinical_stats.json")
    work = tmp_path / "bundle" / "runs" / "tiny"
    assert parsed("evaluate").get_parsed_content("eval_dir") == str(work / "evaluate_testing")
    assert parsed("evaluate", model_dir=str(seed1)).get_parsed_content("eval_dir") == str(work / "evaluate_testing_seed1")


@pytest.mark.slow
def test_inference_report_speaks_class_names_with_pictures_and_summary(trained):
    cfg, cohort_file, out, _ = trained
    proc = run_stage("inference", cohort_file, out)
    folder = out / "runs" / "tiny" / "inference_testing"
    report = pd.read_csv(folder / "dymo_report.csv", keep_default_na=False)
    assert set(report["label_name"]) <= set(cfg["classes"]) and set(report["prediction_name"]) <= set(cfg["classes"])
    for _, row in report.iterrows():
        assert row["label_name"] == cfg["classes"][int(row["label"])]
        assert row["prediction_name"] == cfg["classes"][int(row["prediction"])]
    missing = {f for v in report["clinical_missing_fields"] for f in v.split(";") if v and v != "none"}
    assert missing and missing <= {"age", "sex"}  # field names, never "field 2"
    doc = json.loads((folder / "dymo_report.json").read_text())
    s = doc["summary"]
    labelled = report[report["correct"] != ""]
    assert s["accuracy"] == round(100.0 * labelled["correct"].astype(int).sum() / len(labelled), 2)
    for m in ("ct", "xray", "clinical"):
        assert s["modalities"][m]["observed"] == int((report[f"{m}_status"] == "observed").sum())
        assert s["modalities"][m]["accepted"] == int((report[f"{m}_status"] == "accepted").sum())
    assert proc.stdout.strip().splitlines()[-1].startswith(f"DyMo summary: 9 patients; accuracy {s['accuracy']:.2f} %")
    # the clinicians' block on the labelled patients: metrics by class name, calibration, reliability diagram
    assert set(s["metrics"]["dymo"]["per_class"]) == set(cfg["classes"]) and s["ece"] is not None
    assert len(s["reliability"]) == 10 and (folder / "dymo_report_files" / "reliability.png").is_file()
    assert 'id="metrics"' in (folder / "dymo_report.html").read_text()
    # pictures on by default; the 2D picture keeps the file's orientation (the class stripe is vertical in the PNG)
    from PIL import Image

    img = folder / "dymo_report_files" / "img"
    observed_xray = report[report["xray_status"] == "observed"].index[0]
    pid = report.loc[observed_xray, "patient_id"]
    drawn = np.asarray(Image.open(next(img.glob(f"*_{pid}_xray_image.png"))).convert("L"), dtype=float)
    entry = next(e for e in json.loads(Path(cfg["datalist"]).read_text())["testing"] if e["patient_id"] == pid)
    src = np.asarray(Image.open(Path(cfg["datalist"]).parent / entry["xray"]).convert("L"), dtype=float)
    assert src.mean(0).std() > 3 * src.mean(1).std()  # the source: columns differ, rows alike
    assert drawn.mean(0).std() > 3 * drawn.mean(1).std()  # drawn the same way round
    assert len(list(img.glob("*_ct_axial.png"))) > 0


@pytest.mark.slow
def test_stage_errors_and_empty_runs_end_with_one_line(trained):
    cfg, cohort_file, out, _ = trained
    lines = run_stage_failing("inference", cohort_file, out, "--max_patients", "0")
    assert lines[-1] == "monai-dymo: error: max_patients must be at least 1 (or null for every patient), got 0."
    lines = run_stage_failing("inference", cohort_file, out, "--network_def#dim", "32")
    assert lines[-1].startswith(f"monai-dymo: error: weights {out / 'models' / 'tiny' / 'fusion.pt'} do not fit")


@pytest.mark.slow
def test_train_checkpoint_and_schedule_choices(trained, tmp_path):
    """The plan's `checkpoint: best` (the generic default) keeps the best epoch by balanced accuracy, `last` the final
    epoch (scored by accuracy here); an unknown schedule name ends the stage with one line."""
    import torch

    cfg, cohort_file, out, logs = trained
    text = logs["train"].stdout + logs["train"].stderr  # the fixture ran the default
    assert "saved final checkpoint" not in text and "Key metric: val_balanced_accuracy best value" in text
    assert "class weighting none: every training row weighs 1" in text  # balanced tiny cohort: the plan's rule
    last = run_stage("train", cohort_file, out, "--max_epochs", "2", "--checkpoint", "last", "--lr_schedule", "constant",
                     "--checkpoint_metric", "accuracy", "--class_weighting", "balanced",
                     "--model_dir", str(tmp_path / "last"))
    text = last.stdout + last.stderr
    assert "saved final checkpoint" in text and "Key metric: val_accuracy best value" in text
    assert "class weighting balanced: a 1.000 (6 patients)" in text
    default = torch.load(out / "models" / "tiny" / "fusion.pt", weights_only=True)
    chosen = torch.load(tmp_path / "last" / "fusion.pt", weights_only=True)
    assert default.keys() == chosen.keys()
    lines = run_stage_failing("train", cohort_file, out, "--max_epochs", "1", "--lr_schedule", "step",
                              "--model_dir", str(tmp_path / "step"))
    assert lines[-1] == "monai-dymo: error: lr_schedule must be one of cosine, constant, got 'step'."
    lines = run_stage_failing("train", cohort_file, out, "--max_epochs", "1", "--checkpoint", "Best",
                              "--model_dir", str(tmp_path / "typo"))
    assert lines[-1] == "monai-dymo: error: checkpoint must be one of best, last, got 'Best'."
    assert not (tmp_path / "typo" / "fusion.pt").exists()


@pytest.mark.slow
def test_train_ema_saves_the_averaged_weights(trained, tmp_path):
    """`ema_momentum` validates and saves the moving average of the weights (the default, 0.01); 0 switches it off: with
    a momentum near 1 the average is the last iterate (same seed, same run otherwise), with 0.3 it is not; a momentum outside (0, 1) ends the stage."""
    import torch

    cfg, cohort_file, out, logs = trained
    common = ("--max_epochs", "2", "--checkpoint", "last")
    weights = {}
    for name, extra in (("plain", ("--ema_momentum", "0")), ("near_one", ("--ema_momentum", "0.999999")), ("ema", ("--ema_momentum", "0.3"))):
        run_stage("train", cohort_file, out, *common, *extra, "--model_dir", str(tmp_path / name))
        weights[name] = torch.load(tmp_path / name / "fusion.pt", weights_only=True)
    assert weights["plain"].keys() == weights["ema"].keys()
    floats = [k for k, v in weights["plain"].items() if v.is_floating_point()]
    bad = [(k, float((weights["plain"][k] - weights["near_one"][k]).abs().max())) for k in floats if not torch.allclose(weights["plain"][k], weights["near_one"][k], atol=1e-4)]
    assert not bad, bad[:5]
    assert any(not torch.allclose(weights["plain"][k], weights["ema"][k], atol=1e-4) for k in floats)
    lines = run_stage_failing("train", cohort_file, out, "--max_epochs", "1", "--ema_momentum", "2",
                              "--model_dir", str(tmp_path / "bad"))
    assert lines[-1] == "monai-dymo: error: ema_momentum must be in (0, 1) or null, got 2."


@pytest.mark.slow
def test_metadata_verifies_offline():
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI bundle schema not found at {SCHEMA} (../shared/schemas)")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
         str(BUNDLE / "configs" / "metadata.json"), "--filepath", str(SCHEMA)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and "metadata is verified with no error" in proc.stdout + proc.stderr


SHIPPED = BUNDLE / "models" / "brain_mri_demo"
BRAINS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_mri_samples"


@pytest.mark.slow
def test_demo_runs_the_shipped_default_cohort_weights(tmp_path):
    """`monai-dymo demo`: generate a (small) default cohort and run inference with the shipped weights, no training."""
    if not BRAINS.is_dir():
        pytest.skip(f"brain MRI samples not found at {BRAINS}")
    from monai_dymo.cli import main as cli_main
    from monai_dymo.data.brain_cohort import generate_brain_cohort

    cohort_dir = tmp_path / "cohort"
    generate_brain_cohort(cohort_dir, source_dir=BRAINS, num_patients=12, size=32, seed=3)
    code = cli_main(["demo", "--cohort-dir", str(cohort_dir), "--output-dir", str(tmp_path / "out")])
    assert code == 0
    report = pd.read_csv(tmp_path / "out" / "inference_testing" / "dymo_report.csv", keep_default_na=False)
    testing = json.loads((cohort_dir / "datalist.json").read_text())["testing"]
    assert list(report["patient_id"]) == [e["patient_id"] for e in testing]
    assert (tmp_path / "out" / "inference_testing" / "dymo_report.html").is_file()
    for entry, (_, row) in zip(testing, report.iterrows()):
        for s in ("t1", "t1c", "t2", "flair"):
            if entry[s] is None:
                assert row[f"{s}_reason"].startswith("absent") and s in row["recovered"].split(";")


def test_shipped_default_weights_fit_the_default_configuration():
    """The shipped weights load into the networks that common.yaml builds (one-line errors otherwise)."""
    from monai.bundle import ConfigParser

    for name in ("fusion.pt", "recovery.pt", "calibration.pt", "clinical_stats.json"):
        assert (SHIPPED / name).is_file(), name
    parser = ConfigParser()
    parser.read_config(stage_configs())
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    parser.get_parsed_content("load_fusion_weights")
    parser.get_parsed_content("trained_recovery")
    calibration = parser.get_parsed_content("calibration")
    assert calibration.modalities == ("t1", "t1c", "t2", "flair", "clinical")
    size = sum(p.stat().st_size for p in SHIPPED.iterdir()) + sum(
        p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file() and "runs" not in p.parts and p.parent != SHIPPED
    )
    assert size < 10 * 2**20, f"the bundle is {size / 2**20:.1f} MiB"


def test_demo_plan_builds_the_shipped_network():
    """The demo cohort's plan block (common.yaml) builds exactly the network of the shipped fusion.pt: same state_dict
    keys and shapes, and the training choices it was trained with."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(stage_configs("train.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    own = parser.get_parsed_content("network_def").state_dict()
    shipped = torch.load(SHIPPED / "fusion.pt", map_location="cpu", weights_only=True)
    shipped = shipped.get("model", shipped)
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in shipped.items()}
    plan = parser.get_parsed_content("plan")
    network = (plan.backbone_3d, plan.logit_fusion, plan.histogram_bins_3d, plan.histogram_shells_3d)
    assert network == ("none", "product", 10, 8)
    trained_with = {"max_epochs": 60, "batch_size": 4, "checkpoint": "last", "checkpoint_metric": "accuracy",
                    "class_weighting": "none", "lr_schedule": "cosine", "unimodal_weight": 3.0}
    assert {k: parser.get_parsed_content(k) for k in trained_with} == trained_with


@pytest.mark.slow
def test_plan_written_by_prepare_cohort_file_overrides_and_command_line(tmp_path):
    """prepare writes plan.json; the stages read it (the network and train's keys); the cohort file's plan block wins
    over the rules, and the command line (a stage key, a network_def setting) over both."""
    from monai.bundle import ConfigParser

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=8)
    cohort_file = tmp_path / "my_cohort.yaml"
    cohort_file.write_text(yaml.safe_dump({"cohort": cfg}))
    proc = run_stage("prepare", cohort_file, tmp_path / "bundle")
    plan_file = tmp_path / "bundle" / "models" / "tiny" / "plan.json"
    doc = json.loads(plan_file.read_text())
    assert doc["choices"]["backbone_3d"] == "small" and doc["reasons"]["batch_size"].startswith("6 training patients")
    assert "plan written to" in proc.stdout + proc.stderr

    def parsed(cohort, **overrides):
        parser = ConfigParser()
        parser.read_config(stage_configs("train.yaml"))
        parser["cohort"] = cohort
        parser["bundle_root"] = str(tmp_path / "bundle")
        parser["device"] = "$torch.device('cpu')"
        for k, v in overrides.items():
            parser[k] = v
        return parser

    generic = parsed(cfg)
    assert generic.get_parsed_content("plan").fingerprint == doc["fingerprint"]  # read from plan.json
    assert [generic.get_parsed_content(k) for k in ("max_epochs", "batch_size", "checkpoint", "checkpoint_metric",
                                                     "lr_schedule")] == [60, 4, "best", "balanced_accuracy", "cosine"]
    assert list(generic.get_parsed_content("validate#key_metric")) == ["val_balanced_accuracy"]
    net = generic.get_parsed_content("network_def")
    assert net.logit_fusion == "transformer" and any("features" in k for k in net.state_dict())  # the small CNN
    own = parsed({**cfg, "plan": {"max_epochs": 9, "checkpoint_metric": "accuracy", "backbone_3d": "none",
                                  "histogram_bins_3d": 4, "logit_fusion": "product"}})
    assert own.get_parsed_content("max_epochs") == 9
    assert list(own.get_parsed_content("validate#key_metric")) == ["val_accuracy"]
    net = own.get_parsed_content("network_def")
    assert net.logit_fusion == "product" and not any(k.startswith("encoders.ct.encoder") for k in net.state_dict())
    command_line = {"max_epochs": 40, "batch_size": 2, "network_def#dim": 16, "network_def#logit_fusion": "product"}
    line = parsed({**cfg, "plan": {"max_epochs": 9}}, **command_line)
    assert (line.get_parsed_content("max_epochs"), line.get_parsed_content("batch_size")) == (40, 2)
    assert line.get_parsed_content("train#trainer").state.max_epochs == 40
    net = line.get_parsed_content("network_def")
    assert net.logit_fusion == "product" and net.dim == 16


def run_torchrun(configs: list[str], cohort_file: Path, bundle_root: Path, *args: str) -> None:
    files = [str(BUNDLE / "configs" / c) for c in configs] + [str(cohort_file)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", json.dumps(files), "--bundle_root", str(bundle_root),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *SMALL, *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.slow
def test_torchrun_calibration_inference_and_evaluation_equal_single_process(trained, tmp_path):
    """2 CPU processes (gloo): the calibration, the merged report and the evaluation equal the single-process ones."""
    import torch

    from monai_dymo import SubsetCalibration

    cfg, cohort_file, out, _ = trained
    models = out / "models" / "tiny"
    calib = tmp_path / "calibration_ddp.pt"
    run_torchrun(["common.yaml", "dymo.yaml", "calibrate.yaml", "multi_gpu_calibrate.yaml"], cohort_file, out,
                 "--calibration_file", str(calib))
    single, ddp = SubsetCalibration.load(models / "calibration.pt"), SubsetCalibration.load(calib)
    assert torch.equal(single.fallback, ddp.fallback)
    assert torch.allclose(single.prototypes.nan_to_num(), ddp.prototypes.nan_to_num(), atol=1e-6)
    # float32 sums in another order: small sigmas (few close samples) agree to about 1e-7 absolute
    torch.testing.assert_close(single.sigma.nan_to_num(), ddp.sigma.nan_to_num(), rtol=1e-4, atol=1e-7)

    run_stage("inference", cohort_file, out, "--report_dir", str(tmp_path / "single"))
    run_torchrun(["common.yaml", "dymo.yaml", "inference.yaml", "multi_gpu_inference.yaml"], cohort_file, out,
                 "--report_dir", str(tmp_path / "ddp"))
    a = pd.read_csv(tmp_path / "single" / "dymo_report.csv", keep_default_na=False)
    b = pd.read_csv(tmp_path / "ddp" / "dymo_report.csv", keep_default_na=False)
    datalist = json.loads(Path(cfg["datalist"]).read_text())["testing"]
    assert list(b["patient_id"]) == [e["patient_id"] for e in datalist]  # one row per entry, in datalist order
    for column in ("prediction", "observed", "recovered", "accepted", "rejected", "ct_reason", "clinical_reason"):
        assert list(a[column]) == list(b[column]), column

    run_torchrun(["common.yaml", "dymo.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"], cohort_file, out,
                 "--eval_dir", str(tmp_path / "eval_ddp"))
    rows = pd.read_csv(tmp_path / "eval_ddp" / "per_patient.csv")
    assert list(rows["patient_id"]) == [e["patient_id"] for e in datalist]


def test_large_files_list_every_shipped_file_with_its_sha256():
    import hashlib

    from monai.bundle import ConfigParser

    large = ConfigParser.load_config_file(str(BUNDLE / "large_files.yml"))["large_files"]
    listed = {entry["path"] for entry in large}
    assert listed == {f"models/brain_mri_demo/{p.name}" for p in SHIPPED.iterdir()}
    for entry in large:
        path = BUNDLE / entry["path"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == digest, f"{path}: update large_files.yml"
