"""Inference-time rules: margin provenance and the refer test's level, per-class / auto / expected refer rules, the
patients' reasons, and the summary (synthetic certification records; no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_dymo.certification import (
    certification_summary,
    certify,
    margin_on_holdout,
    margin_share,
    rare_class,
    refer_decisions,
    refer_for_margin,
    resolve_margin,
    rule_threshold,
)


def _outcomes(n: int = 3000, minority: float = 0.5, seed: int = 0) -> dict[str, np.ndarray]:
    """Two classes; nothing ever accepted (one modality, no reward), so DyMo's prediction is prefix 0's."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < minority).astype(np.int64)
    conf = rng.uniform(0.5, 1.0, n)
    wrong = rng.random(n) < np.where(label == 1, 0.9, 0.4) * (1 - conf)
    pred = np.where(wrong, 1 - label, label)
    return {"label": label, "prefix_prediction": np.stack([pred, np.full(n, -1)], 1),
            "prefix_probability": np.stack([conf, np.full(n, np.nan)], 1),
            "accepted_rewards": np.full((n, 1), np.nan), "missing": np.ones(n, dtype=np.int64), "num_classes": 2}


@pytest.fixture(scope="module")
def cert():
    return certify(_outcomes(), margins=(0.2, 0.1, 0.0), delta=0.05, source="synthetic")


def test_resolve_margin_sources(cert):
    assert resolve_margin("certified", cert) == (math.inf, "certified")  # nothing accepted: nothing to certify
    assert resolve_margin(0, cert) == (0.0, "method rule") and resolve_margin("0.1", cert) == (0.1, "fixed")
    assert resolve_margin(0.1, cert, margin_source="independent") == (0.1, "independent")
    with pytest.raises(ValueError, match="independent"):
        resolve_margin("certified", cert, margin_source="independent")
    with pytest.raises(ValueError, match="margin_source"):
        resolve_margin(0.1, cert, margin_source="trust me")
    with pytest.raises(ValueError, match=">= 0"):
        resolve_margin(-1, cert)


def test_margin_provenance_sets_the_refer_level(cert):
    finite = [m for m in cert["margins"] if math.isfinite(m)]
    share = 0.5 / len(finite)  # fixed before the data: inf 1/2, each tested finite margin 1/(2K)
    assert margin_on_holdout(cert, math.inf, "certified") and margin_on_holdout(cert, 0.1, "fixed")
    assert margin_on_holdout(cert, 0.0, "method rule") and margin_on_holdout(cert, math.inf, "fixed")
    assert not margin_on_holdout(cert, 0.05, "fixed")  # never tested: could not be read off the table
    assert not margin_on_holdout(cert, 0.1, "independent") and not margin_on_holdout(None, 0.1, "fixed")
    for margin, source, level in ((0.1, "fixed", 0.1 * share), (math.inf, "certified", 0.1 * 0.5),
                                  (0.1, "independent", 0.1), (0.05, "fixed", 0.1)):
        rule = refer_for_margin(cert, margin, source, 0.1, 0.1)
        assert rule["test_level"] == pytest.approx(level) and rule["margin_source"] == source
    expected = refer_for_margin(cert, 0.1, "fixed", 0.1, guarantee="expected")
    assert expected["risk_level"] == pytest.approx(0.1 * share) and expected["test_level"] is None
    assert margin_share(cert, math.inf) + len(finite) * margin_share(cert, 0.1) == pytest.approx(1.0)


def test_pooled_rule_and_reasons_state_the_guarantee(cert):
    rule = refer_for_margin(cert, 0.0, "independent", 0.1, 0.1)
    t = rule["threshold"]
    assert math.isfinite(t) and rule["guarantee"] == "pac" and not rule["per_class"] and rule["certify_delta"] is None
    (r1, why1), (r2, why2), (r3, why3) = refer_decisions([t + 0.01, t - 0.01, None], rule)
    assert (r1, r2, r3) == (False, True, True) and why3 == "not processed"
    assert why1.startswith(f"not referred: confidence {t + 0.01:.4f} >= threshold")
    assert "w.p. >= 0.9 over the held-out draw: population (not this run's) error among patients not referred <= 0.1" in why1
    assert "exchangeable" in why2 and len(why1) < 240
    assert rule_threshold(rule) == t


def test_per_class_rule_needs_predictions_and_names_the_class(cert):
    rule = refer_for_margin(cert, 0.0, "independent", 0.1, 0.1, per_class=True)
    assert rule["per_class"] and rule["threshold"] is None and rule["test_level"] == pytest.approx(0.05)
    t0, t1 = rule["thresholds"][0], rule["thresholds"][1]
    assert t0 > t1  # label-1 patients err more, and their errors are predicted 0
    with pytest.raises(ValueError, match="predictions"):
        refer_decisions([0.99], rule)
    p = (t0 + t1) / 2
    (r0, why0), (r1, why1) = refer_decisions([p, p], rule, prediction=[0, 1])
    assert (r0, r1) == (True, False)
    assert "error among patients predicted 0 not referred <= 0.1" in why0 and "every class" in why0
    assert "threshold" in why1 and "predicted 1" in why1
    assert rule_threshold(rule, 1) == t1 and math.isinf(rule_threshold(rule, 7))


def test_auto_per_class_on_a_rare_class_pays_for_the_choice():
    rare = certify(_outcomes(minority=0.1, seed=1), margins=(0.0,), delta=0.05)
    rule = refer_for_margin(rare, 0.5, "independent", 0.1, 0.1, per_class="auto")
    assert rule["per_class"] and rule["per_class_setting"] == "auto"
    assert rule["test_level"] == pytest.approx(0.1 / 2 / 2)  # half for the choice, then over 2 classes
    balanced = certify(_outcomes(minority=0.5, seed=2), margins=(0.0,), delta=0.05)
    rule = refer_for_margin(balanced, 0.5, "independent", 0.1, 0.1, per_class="auto")
    assert not rule["per_class"] and rule["test_level"] == pytest.approx(0.05)


def test_auto_per_class_from_training_counts_costs_no_level():
    outcomes = _outcomes(minority=0.5, seed=2)  # balanced held-out labels, but a rare class in training
    rare_in_training = certify(outcomes, margins=(0.0,), delta=0.05, class_counts=[90, 10])
    rule = refer_for_margin(rare_in_training, 0.5, "independent", 0.1, 0.1, per_class="auto")
    assert rule["per_class"] and rule["test_level"] == pytest.approx(0.1 / 2)  # over 2 classes, nothing for the choice
    common = certify(outcomes, margins=(0.0,), delta=0.05, class_counts=[60, 40])
    rule = refer_for_margin(common, 0.5, "independent", 0.1, 0.1, per_class="auto")
    assert not rule["per_class"] and rule["test_level"] == pytest.approx(0.1)
    assert rare_class([85, 15]) and not rare_class([10] * 10) and rare_class([30, 30, 30, 5])


def test_expected_rule_reasons_and_joint_statement_with_a_certified_margin(cert):
    rule = refer_for_margin(cert, 0.0, "independent", 0.1, guarantee="expected")
    assert rule["guarantee"] == "expected" and math.isfinite(rule["threshold"])
    _, why = refer_decisions([0.999], rule)[0]
    assert "in expectation over held-out draws: population (not this run's) rate of wrong-and-not-referred <= 0.1" in why
    # a certification whose margin 0.0 is certified: the reasons state both guarantees together
    joint = dict(cert, tests=[dict(t, status="certified") for t in cert["tests"]])
    rule = refer_for_margin(joint, 0.0, "fixed", 0.1, 0.1)
    assert rule["margin_certified"] and rule["certify_delta"] == 0.05
    _, why = refer_decisions([0.999], rule)[0]
    assert "with the certified margin, both w.p. >= 0.85" in why


def test_summary_shows_procedure_levels_and_reads_old_records(cert):
    text = certification_summary(cert)
    assert "fallback" in text and "family-wise delta 0.05" in text and "level" in text
    old = {"delta": 0.1, "margin": 0.2, "num_patients": 5, "source": "old",
           "tests": [{"margin": 0.2, "fixed": 5, "broken": 0, "changed": 5, "p_value": 1 / 32, "status": "certified"}]}
    assert "fixed_sequence" in certification_summary(old) and certification_summary(None) == "no held-out certification"
    assert refer_for_margin(old, 0.2, "certified") is None  # no outcomes: no refer rule
