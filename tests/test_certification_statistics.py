"""The numpy-only statistics: no torch import, the fallback / fixed-sequence levels, the refer start, per-class
thresholds at delta / C, and conformal risk control on hand cases."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from monai_dymo.certification.statistics import (
    DEFAULT_REFER_THRESHOLDS,
    holdout_indices,
    refer_start,
    refer_threshold,
    refer_threshold_per_class,
    risk_control_threshold,
    risk_control_threshold_per_class,
    risk_pvalue,
    sequential_test,
)


def test_statistics_and_simulation_import_without_torch():
    code = ("import sys, monai_dymo.certification.statistics, monai_dymo.certification.simulation; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fallback_levels_carry_only_after_a_rejection():
    p = [0.5, 0.01, 0.02, 0.2, 0.001]
    steps = sequential_test(lambda k: p[k], 5, 0.1, "fallback", [0.2] * 5)
    # 0.02 (0.5 > 0.02: no), 0.02 (0.01: yes), 0.04 (0.02: yes), 0.06 (0.2: no), 0.02 (0.001: yes)
    assert [s["level"] for s in steps] == pytest.approx([0.02, 0.02, 0.04, 0.06, 0.02])
    assert [s["status"] for s in steps] == ["not certified", "certified", "certified", "not certified", "certified"]
    fs = sequential_test(lambda k: p[k], 5, 0.1, "fixed_sequence", [0, 1, 1, 1, 1])
    assert [s["status"] for s in fs] == ["skipped", "certified", "certified", "not certified", "not tested"]
    with pytest.raises(ValueError, match="procedure"):
        sequential_test(lambda k: p[k], 5, 0.1, "holm")


def test_refer_fixed_sequence_starts_at_a_data_free_threshold():
    assert refer_start(0.1) == pytest.approx(0.95)
    grid = [0.99, 0.9, 0.8, 0.7]
    conf = np.array([0.995] * 5 + [0.95] * 40 + [0.85] * 40 + [0.75] * 40)
    ok = np.ones(conf.size, dtype=bool)
    ok[-20:] = False  # half wrong below 0.8
    out = refer_threshold(conf, ok, 0.1, 0.1, grid, start=0.95)
    # 0.99 lies above the start (5 patients: could not pass anyway); 0.9: 45/0, 0.8: 85/0, 0.7: 125/20 -> stop
    assert out["threshold"] == 0.8 and out["thresholds_tested"] == 3 and out["start"] == 0.95
    assert out["coverage"] == pytest.approx(85 / 125) and out["error_not_referred"] == 0.0
    # a start above everything with too few patients stops at once: everybody referred
    assert math.isinf(refer_threshold(conf, ok, 0.1, 0.1, grid, start=1.0)["threshold"])
    fb = refer_threshold(conf, ok, 0.1, 0.1, grid, procedure="fallback")  # level 0.025 each, from the top
    assert fb["start"] is None and fb["thresholds_tested"] == 4 and fb["threshold"] == 0.8
    assert risk_pvalue(0, 45, 0.1) <= 0.025  # 0.9 passes at its own level


def test_per_class_thresholds_run_at_delta_over_classes():
    rng = np.random.default_rng(0)
    pred = np.repeat([0, 1, 2], [600, 300, 0])
    conf = rng.uniform(0.5, 1.0, pred.size)
    ok = rng.random(pred.size) >= np.where(pred == 1, 0.8, 0.2) * (1 - conf)
    out = refer_threshold_per_class(conf, ok, pred, 3, 0.1, 0.3)
    assert out["level"] == pytest.approx(0.1) and set(out["thresholds"]) == {0, 1, 2}
    assert math.isinf(out["thresholds"][2])  # no patient predicted 2: referred
    for c in (0, 1):
        alone = refer_threshold(conf[pred == c], ok[pred == c], 0.1, 0.1)
        assert out["thresholds"][c] == alone["threshold"]
    assert out["thresholds"][1] > out["thresholds"][0]  # class 1 errs more: a stricter threshold
    with pytest.raises(ValueError, match="classes"):
        refer_threshold_per_class(conf, ok, pred, 1)  # predictions of class 1 with one class


def test_conformal_risk_control_hand_case():
    # n = 9, alpha = 0.2: (errors above t + 1) / 10 <= 0.2, i.e. at most one error among those not referred
    conf = np.array([0.99, 0.97, 0.95, 0.93, 0.91, 0.89, 0.87, 0.85, 0.83])
    ok = np.array([True, True, False, True, True, False, True, True, True])
    grid = [0.98, 0.96, 0.94, 0.92, 0.90, 0.88, 0.86]
    out = risk_control_threshold(conf, ok, 0.2, grid)
    assert out["threshold"] == 0.90 and out["guarantee"] == "expected"  # 0.88 would keep two errors
    assert out["joint_rate"] == pytest.approx(1 / 9) and out["coverage"] == pytest.approx(5 / 9)
    # alpha below 1 / (n + 1): nothing can be guaranteed, everybody referred
    assert math.isinf(risk_control_threshold(conf, ok, 0.09, grid)["threshold"])
    per = risk_control_threshold_per_class(conf, ok, np.zeros(9, dtype=int), 2, 0.2, grid)
    assert per["thresholds"] == {0: 0.90, 1: math.inf}


def test_default_grid_and_holdout_indices():
    g = DEFAULT_REFER_THRESHOLDS
    assert all(b < a for a, b in zip(g, g[1:])) and g[-1] == 0.0
    assert holdout_indices(10, None).tolist() == list(range(10))
    a, b = holdout_indices(100, 0.3, 7), holdout_indices(100, 0.3, 7)
    assert a.tolist() == b.tolist() and len(a) == 30
