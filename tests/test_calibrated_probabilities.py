"""Calibrated probabilities and the refer options end to end on the toy fusion network: the probability temperature
fitted on patients that do not certify, stored and loaded with the calibration, applied to the records, the refer
threshold and the evaluation; the refer guarantee chosen by the held-out count; per-class thresholds per patient; the
clinicians' metrics in evaluate's summary.json and in the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from monai_dymo.calibration import SubsetCalibration
from monai_dymo.certification import (
    AUTO_PAC_PATIENTS,
    certification_summary,
    certify,
    collect_outcomes,
    fit_probability_temperature,
    logits_at_margin,
    outcomes_at_margin,
    refer_decisions,
    refer_for_margin,
)
from monai_dymo.confidence import apply_temperature, ece_if_calibrated, expected_calibration_error, fit_temperature
from monai_dymo.evaluation import (
    compare_on_natural_missingness,
    natural_summary_line,
    summarise_natural,
    write_natural_comparison,
)
from monai_dymo.inferers import DyMoInferer
from monai_dymo.metrics import method_metrics
from monai_dymo.report import write_report
from monai_dymo.step import run_dymo

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CLASSES = ["glioma", "metastasis", "meningioma"]


def _loader(net, n: int, seed: int, batch: int = 16) -> list[dict]:
    """``n`` labelled patients with natural gaps; labels agree with the network's complete-data class 70 % of the
    time (so that the probabilities have something to calibrate)."""
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, 4, generator=g) for m in net.modalities}
    present = torch.rand(n, 3, generator=g) > 0.35
    present[~present.any(1), 0] = True
    with torch.no_grad():
        y = net.fuse(net.encode(x), torch.ones(n, 3, dtype=torch.bool))[0].argmax(-1)
    flip = torch.rand(n, generator=g) < 0.3
    y = torch.where(flip, torch.randint(0, 3, (n,), generator=g), y)
    return [{**{m: x[m][s:s + batch] for m in net.modalities}, "present": present[s:s + batch],
             "label": y[s:s + batch], "patient_id": [f"p{i:03d}" for i in range(s, min(s + batch, n))]}
            for s in range(0, n, batch)]


@pytest.fixture(scope="module")
def calibrated(toy_fusion):
    """The toy network with a calibration certified on 64 held-out patients and its probability temperature fitted
    on 64 others (who do not certify)."""
    net, calib = toy_fusion
    cal = SubsetCalibration.from_state_dict(calib.state_dict())  # the fixture's calibration stays untouched
    held, rest = _loader(net, 64, seed=1), _loader(net, 64, seed=2)
    cal.certification = certify(collect_outcomes(net, cal, held, progress=False), delta=0.1, source="toy holdout")
    fit_probability_temperature(cal, net, rest, margin=0.0, source="toy rest", progress=False)
    return net, cal, held, rest


# ---------------------------------------------------------------------------------------------------- the temperature
def test_outcomes_keep_the_prefix_logits_small_and_consistent(calibrated):
    net, cal, held, _ = calibrated
    out = collect_outcomes(net, cal, held, progress=False)
    logits = out["prefix_logits"]
    assert logits.dtype == np.float32 and logits.shape == (64, 4, 3)
    beyond = np.isnan(logits).any(-1)
    assert (beyond == (out["prefix_prediction"] < 0)).all()  # NaN padded beyond each path
    prob = torch.softmax(torch.as_tensor(logits[~beyond]), -1).amax(-1).double().numpy()
    assert np.allclose(prob, out["prefix_probability"][~beyond], atol=1e-6)
    stored = cal.certification["outcomes"]["prefix_logits"]
    assert stored.dtype == torch.float32  # the certification record stays small


def test_temperature_fitted_on_the_rest_stored_and_loaded(calibrated, tmp_path):
    net, cal, _, rest = calibrated
    out = collect_outcomes(net, cal, rest, progress=False)
    expected = fit_temperature(logits_at_margin(out, 0.0), out["label"])
    assert cal.probability_temperature == pytest.approx(expected) and cal.probability_temperature != 1.0
    fit = cal.certification["probability_temperature"]
    assert fit["patients"] == 64 and fit["source"] == "toy rest" and fit["approximate"] is False
    assert "probability temperature" in certification_summary(cal.certification)
    path = tmp_path / "calibration.pt"
    cal.save(path)
    back = SubsetCalibration.load(path)
    assert back.probability_temperature == cal.probability_temperature
    assert back.to("cpu").probability_temperature == cal.probability_temperature
    old = {k: v for k, v in cal.state_dict().items() if k != "probability_temperature"}  # an older file
    assert SubsetCalibration.from_state_dict(old).probability_temperature == 1.0
    # without a loader: on the certification's own outcomes (e.g. out of fold), recorded as approximate
    again = SubsetCalibration.from_state_dict(cal.state_dict())
    fit_probability_temperature(again, margin=0.0)
    held_out = {k: v.numpy() for k, v in cal.certification["outcomes"].items()}
    assert again.probability_temperature == pytest.approx(
        fit_temperature(logits_at_margin(held_out, 0.0), held_out["label"]))
    assert again.certification["probability_temperature"]["approximate"] is True
    assert "approximate" in certification_summary(again.certification)
    empty = fit_probability_temperature(SubsetCalibration.from_state_dict(cal.state_dict()), net, [], margin=0.0)
    assert empty.probability_temperature == again.probability_temperature  # no patient left outside: the same
    old_cert = {**cal.certification, "outcomes": {k: v for k, v in cal.certification["outcomes"].items()
                                                  if k != "prefix_logits"}}
    with pytest.raises(ValueError, match="prefix_logits"):
        fit_probability_temperature(SubsetCalibration.from_state_dict({**cal.state_dict(), "certification": old_cert}),
                                    margin=0.0)


def test_refer_threshold_is_learned_on_calibrated_probabilities(calibrated):
    _, cal, _, _ = calibrated
    T = cal.probability_temperature
    outcomes = {k: v.numpy() for k, v in cal.certification["outcomes"].items()}
    _, prob, _ = outcomes_at_margin(outcomes, 0.0, T)
    assert np.allclose(prob, apply_temperature(logits_at_margin(outcomes, 0.0), T).max(1))
    rule = refer_for_margin(cal.certification, 0.0, "independent", 0.7, guarantee="expected",
                            probability_temperature=T)
    # the same rule from outcomes that only carry those calibrated probabilities (the old-file path)
    k = outcomes_at_margin(outcomes, 0.0)[2]
    calibrated_prefix = np.full_like(outcomes["prefix_probability"], np.nan)
    calibrated_prefix[np.arange(len(k)), k] = prob
    old = {key: v for key, v in outcomes.items() if key != "prefix_logits"}
    old["prefix_probability"] = calibrated_prefix
    by_hand = refer_for_margin({**cal.certification, "outcomes": old}, 0.0, "independent", 0.7,
                               guarantee="expected")
    assert rule["threshold"] == by_hand["threshold"] and rule["holdout_coverage"] == by_hand["holdout_coverage"]
    assert rule["probability_temperature"] == T


def test_inferer_records_and_refer_use_the_calibrated_probabilities(calibrated):
    net, cal, held, _ = calibrated
    T = cal.probability_temperature
    inferer = DyMoInferer(cal, margin=0.0, refer_alpha=0.7, refer_guarantee="expected", refer_per_class=False)
    assert inferer.refer_rule["probability_temperature"] == T
    batch = held[0]
    inferer({m: batch[m] for m in net.modalities}, net, present=batch["present"])
    records = inferer.last_records()
    raw = inferer.last_result.logits
    calibrated_p = torch.softmax(raw / T, -1)
    t = inferer.refer_rule["threshold"]
    for b, rec in enumerate(records):
        assert rec["probabilities"] == pytest.approx(calibrated_p[b].tolist(), abs=1e-6)
        assert rec["probability"] == pytest.approx(float(calibrated_p[b].max()), abs=1e-6)
        assert rec["probability_temperature"] == T
        assert rec["refer"] == (not rec["probability"] >= t) and rec["refer_threshold"] == t
    # run_dymo with the rule decides the same
    res = run_dymo(net, cal, {m: batch[m] for m in net.modalities}, batch["present"], margin=0.0,
                   refer_rule=inferer.refer_rule)
    assert res.refer.tolist() == [r["refer"] for r in records]


# ---------------------------------------------------------------------------------------------------- refer options
def _synthetic(n: int) -> dict:
    rng = np.random.default_rng(n)
    label = rng.integers(0, 2, n)
    conf = rng.uniform(0.5, 1.0, n)
    pred = np.where(rng.random(n) < 0.8 * conf, label, 1 - label)
    return certify({"label": label, "prefix_prediction": np.stack([pred, np.full(n, -1)], 1),
                    "prefix_probability": np.stack([conf, np.full(n, np.nan)], 1),
                    "accepted_rewards": np.full((n, 1), np.nan), "missing": np.ones(n, dtype=np.int64),
                    "num_classes": 2}, margins=(0.0,), delta=0.1)


def test_refer_guarantee_auto_picks_by_the_held_out_count():
    small, large = _synthetic(AUTO_PAC_PATIENTS - 1), _synthetic(AUTO_PAC_PATIENTS)
    for cert, expected in ((small, "expected"), (large, "pac")):
        rule = refer_for_margin(cert, 0.5, "independent", 0.2, 0.1, guarantee="auto", num_classes=2)
        assert rule["guarantee"] == expected and rule["guarantee_setting"] == "auto"
        set_rule = refer_for_margin(cert, 0.5, "independent", 0.2, 0.1, guarantee=expected, num_classes=2)
        assert rule["threshold"] == set_rule["threshold"]  # the count costs no level
        assert f"{cert['num_patients']} held-out patients" in rule["statement"]
        _, why = refer_decisions([0.999], rule)[0]
        assert "guarantee auto" in why
    assert "in expectation" in refer_for_margin(small, 0.5, "independent", 0.2, guarantee="auto")["statement"]
    with pytest.raises(ValueError, match="guarantee"):
        refer_for_margin(small, 0.5, "independent", guarantee="sometimes")


def test_per_class_rule_gives_each_patient_its_class_threshold(calibrated, tmp_path):
    net, cal, held, _ = calibrated
    inferer = DyMoInferer(cal, margin=0.0, refer_alpha=0.7, refer_guarantee="expected", refer_per_class=True)
    rule = inferer.refer_rule
    assert rule["per_class"] and rule["threshold"] is None and rule["num_classes"] == 3
    records = []
    for batch in held:
        inferer({m: batch[m] for m in net.modalities}, net, present=batch["present"])
        records += [{**r, "label": int(y)} for r, y in zip(inferer.last_records(), batch["label"])]
    for rec in records:
        t = rule["thresholds"][rec["prediction"]]
        assert rec["refer_threshold"] == t and rec["refer_per_class"] is True
        assert rec["refer"] == (not rec["probability"] >= t)
        assert f"for predicted {rec['prediction']}" in rec["refer_reason"]
    written = write_report(records, tmp_path, list(net.modalities), class_names=CLASSES, max_patient_pages=3)
    trust = json.loads(open(written.paths["trust"]).read())
    assert trust["refer"]["per_class"] and trust["refer"]["threshold"] is None
    assert trust["refer"]["guarantee"] == "expected"
    predicted = {CLASSES[r["prediction"]] for r in records}
    assert set(trust["refer"]["thresholds"]) == predicted
    df = pd.read_csv(written.paths["csv"], keep_default_na=False)
    assert [float(v) for v in df["refer_threshold"]] == pytest.approx([r["refer_threshold"] for r in records])
    html = open(written.paths["html"]).read()
    assert "the threshold of its predicted class" in html and "every class" not in html  # expected: no pac wording
    page = next((tmp_path / "dymo_report_files" / "patients").glob("*.html")).read_text()
    assert "calibrated probability" in page and "(its predicted class" in page


# ---------------------------------------------------------------------------------------------------- evaluate, report
def test_evaluate_summary_has_clinical_metrics_calibration_and_refer(calibrated, tmp_path):
    net, cal, held, _ = calibrated
    T = cal.probability_temperature
    df = compare_on_natural_missingness(net, cal, held, margin=0.0, refer_alpha=0.7, refer_guarantee="expected",
                                        refer_per_class=False, progress=False)
    # the probabilities are the calibrated ones
    raw = torch.cat([run_dymo(net, cal, {m: b[m] for m in net.modalities}, b["present"], margin=0.0).logits
                     for b in held])
    probs = df[[f"prob_dymo_{k}" for k in range(3)]].to_numpy()
    assert np.allclose(probs, torch.softmax(raw / T, -1).numpy(), atol=1e-6)
    assert np.allclose(df["prob_dymo"], probs.max(1), atol=1e-6) and (df["probability_temperature"] == T).all()
    paths = write_natural_comparison(df, tmp_path, "toy", classes=CLASSES)
    s = json.loads(open(paths["summary"]).read())
    assert {"metrics", "ece", "refer", "reliability", "probability_temperature", "chance"} <= set(s)
    reference = method_metrics(df, CLASSES, bootstrap=1000, seed=0)
    for key in ("balanced_accuracy", "macro_f1", "auroc", "chance"):
        assert s["metrics"]["dymo"][key] == pytest.approx(reference["dymo"][key])
    assert s["metrics"]["dymo"]["confusion_matrix"] == reference["dymo"]["confusion_matrix"]
    assert s["metrics"]["dymo"]["ci95"]["balanced_accuracy"] == pytest.approx(
        reference["dymo"]["ci95"]["balanced_accuracy"])
    assert s["metrics"]["paired"]["dymo_vs_observed_only"]["p_value"] == pytest.approx(
        reference["paired"]["dymo_vs_observed_only"]["p_value"])
    correct = (df["pred_dymo"] == df["label"]).to_numpy()
    assert s["ece"] == pytest.approx(expected_calibration_error(probs, correct, 10))
    assert s["ece_if_calibrated"] == ece_if_calibrated(probs, 10, draws=1000, seed=0)
    assert s["probability_temperature"] == pytest.approx(T)
    labels = df["label"].to_numpy()
    assert s["chance"] == pytest.approx(round(100 * np.bincount(labels).max() / len(labels), 2))
    rule = refer_for_margin(cal.certification, 0.0, "method rule", 0.7, guarantee="expected", per_class=False,
                            num_classes=3, probability_temperature=T)
    kept = ~df["refer"].to_numpy(dtype=bool)
    r = s["refer"]
    assert r["guarantee"] == "expected" and r["per_class"] is False and r["alpha"] == 0.7
    assert r["threshold"] == pytest.approx(rule["threshold"]) and r["thresholds"] is None
    assert r["referred"] == int((~kept).sum()) and r["not_referred"] == int(kept.sum())
    assert r["coverage"] == pytest.approx(round(kept.mean(), 4))
    if kept.any():
        assert r["error_not_referred"] == pytest.approx(round(float((~correct[kept]).mean()), 4))
    assert r["statement"] == rule["statement"]
    md = open(paths["markdown"]).read()
    assert "## Clinical metrics" in md and "balanced accuracy" in md and "McNemar" in md
    assert "Chance (always answering the" in md and (tmp_path / "reliability.png").stat().st_size > 0
    line = natural_summary_line(summarise_natural(df, CLASSES), "toy")
    assert "balanced accuracy" in line and "AUROC" in line and "chance (majority class)" in line
    assert "McNemar p vs discarding" in line
    per_patient = pd.read_csv(paths["per_patient"])
    assert np.allclose(per_patient[[f"prob_dymo_{k}" for k in range(3)]].to_numpy(), probs)


def test_evaluate_per_class_refer_block_names_the_classes(calibrated):
    net, cal, held, _ = calibrated
    df = compare_on_natural_missingness(net, cal, held, margin=0.0, refer_alpha=0.7, refer_guarantee="expected",
                                        refer_per_class=True, progress=False)
    rule = df.attrs["refer_rule"]
    for pred, t in zip(df["pred_dymo"], df["refer_threshold"]):
        assert t == pytest.approx(rule["thresholds"][str(pred)]) or (math.isinf(t) and rule["thresholds"][str(pred)]
                                                                      is None)
    r = summarise_natural(df, CLASSES)["refer"]
    assert r["per_class"] and r["threshold"] is None and set(r["thresholds"]) == set(CLASSES)
    read_back = summarise_natural(pd.DataFrame(df.to_dict("records")), CLASSES)["refer"]  # the rule lost
    assert read_back["per_class"] and read_back["statement"] is None
    assert set(read_back["thresholds"]) == {CLASSES[c] for c in set(df["pred_dymo"])}


def test_report_summary_and_cohort_page_show_the_clinical_metrics(calibrated, tmp_path):
    net, cal, held, _ = calibrated
    inferer = DyMoInferer(cal, margin=0.0, refer_alpha=0.7, refer_guarantee="expected", refer_per_class=False)
    records = []
    for batch in held:
        inferer({m: batch[m] for m in net.modalities}, net, present=batch["present"])
        records += [{**r, "label": int(y)} for r, y in zip(inferer.last_records(), batch["label"])]
    written = write_report(records, tmp_path, list(net.modalities), class_names=CLASSES, max_patient_pages=2)
    s = json.loads(open(written.paths["json"]).read())["summary"]
    m = s["metrics"]["dymo"]
    y = np.array([r["label"] for r in records])
    pred = np.array([r["prediction"] for r in records])
    assert m["num_patients"] == len(records) and m["accuracy"] == pytest.approx((y == pred).mean())
    assert set(m["per_class"]) == set(CLASSES) and m["ci95"]["balanced_accuracy"] and m["auroc"] is not None
    assert m["chance"] == pytest.approx(np.bincount(y).max() / len(y))
    conf = np.array([r["probability"] for r in records])
    assert s["ece"] == pytest.approx(expected_calibration_error(conf, y == pred, 10))
    assert len(s["reliability"]) == 10 and s["probability_temperature"] == cal.probability_temperature
    html = open(written.paths["html"]).read()
    assert 'id="metrics"' in html and "balanced accuracy" in html and "reliability.png" in html
    assert "always the majority class" in html
    assert (tmp_path / "dymo_report_files" / "reliability.png").stat().st_size > 0
    # without labels: no metrics block, and the page still renders
    unlabelled = write_report([{k: v for k, v in r.items() if k != "label"} for r in records], tmp_path / "u",
                              list(net.modalities), class_names=CLASSES, max_patient_pages=0)
    assert "metrics" not in unlabelled.summary and 'id="metrics"' not in open(unlabelled.paths["html"]).read()
