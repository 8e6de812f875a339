"""Temperature scaling, top-label calibration error and the reliability diagram on synthetic calibrated models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from monai_dymo.confidence import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    plot_reliability_diagram,
    reliability_bins,
)


def _calibrated(n: int = 20000, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[n, c]`` of a perfectly calibrated model and labels drawn from its own probabilities."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, c))
    p = softmax(z, axis=1)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(1)
    return z, np.minimum(y, c - 1)


def _correct(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    return prob.argmax(1) == y


def test_calibrated_model_has_small_ece_and_temperature_one():
    z, y = _calibrated()
    prob = apply_temperature(z, 1.0)
    assert expected_calibration_error(prob, _correct(prob, y)) < 0.03
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.1)


def test_temperature_recovers_overconfidence_and_lowers_nll_and_ece():
    z, y = _calibrated(seed=1)
    hot = 5.0 * z
    t = fit_temperature(hot, y)
    assert t == pytest.approx(5.0, rel=0.03)
    assert negative_log_likelihood(hot, y, t) < negative_log_likelihood(hot, y) - 0.5
    raw, cal = apply_temperature(hot, 1.0), apply_temperature(hot, t)
    ok = _correct(raw, y)
    assert (cal.argmax(1) == raw.argmax(1)).all()  # temperature never changes the prediction
    assert expected_calibration_error(cal, ok) < 0.03 < expected_calibration_error(raw, ok)
    assert fit_temperature(hot, y) == t  # deterministic


def test_nan_rows_and_impossible_classes_are_handled():
    z, y = _calibrated(4000, 3, seed=2)
    t = fit_temperature(3.0 * z, y)
    with_nan = np.concatenate([3.0 * z, np.full((10, 3), np.nan)])
    assert fit_temperature(with_nan, np.concatenate([y, np.zeros(10, int)])) == pytest.approx(t, rel=1e-4)
    impossible = np.concatenate([3.0 * z, np.full((4000, 1), -np.inf)], axis=1)  # a class nobody can have
    assert fit_temperature(impossible, y) == pytest.approx(t, rel=1e-4)
    assert np.isnan(apply_temperature(with_nan, t)[-1]).all()
    assert np.isfinite(apply_temperature(impossible, t)).all()


def test_reliability_bins_equal_width_and_confidence_input():
    conf = np.array([0.0, 0.05, 0.1, 0.15, 0.95, 1.0, np.nan])
    ok = np.array([False, False, True, True, True, False, True])
    bins = reliability_bins(conf, ok, bins=10)
    assert [b["count"] for b in bins] == [3, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # (lo, hi], 0 in the first bin, NaN out
    assert bins[0]["confidence"] == pytest.approx(0.05) and bins[0]["accuracy"] == pytest.approx(1 / 3)
    assert bins[2]["confidence"] is None and bins[2]["accuracy"] is None
    expected = (3 * abs(1 / 3 - 0.05) + 1 * abs(1 - 0.15) + 2 * abs(0.5 - 0.975)) / 6
    assert expected_calibration_error(conf, ok) == pytest.approx(expected)


def test_reliability_png_written(tmp_path):
    z, y = _calibrated(2000, 4, seed=3)
    prob = apply_temperature(3.0 * z, 1.0)
    path = plot_reliability_diagram(reliability_bins(prob, _correct(prob, y)), tmp_path / "rel.png", "overconfident")
    data = (tmp_path / "rel.png").read_bytes()
    assert path == str(tmp_path / "rel.png") and len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_ece_if_calibrated_is_the_floor_a_finite_cohort_shows():
    """Calibrated probabilities on N patients show about the ECE this returns (it shrinks like 1/sqrt(N)), and an
    overconfident model lies well above its 95th percentile."""
    from monai_dymo.confidence import ece_if_calibrated

    rng = np.random.default_rng(5)
    small, large = rng.uniform(0.4, 1.0, 400), rng.uniform(0.4, 1.0, 6400)
    floor_small, floor_large = ece_if_calibrated(small, draws=300), ece_if_calibrated(large, draws=300)
    assert 0.02 < floor_small["mean"] < 0.07 and floor_small["mean"] <= floor_small["q95"]
    assert floor_large["mean"] == pytest.approx(floor_small["mean"] / 4, rel=0.35)
    assert ece_if_calibrated(small, draws=50, seed=1) == ece_if_calibrated(small, draws=50, seed=1)
    observed = [expected_calibration_error(small, rng.random(400) < small) for _ in range(200)]
    assert np.mean(observed) == pytest.approx(floor_small["mean"], rel=0.15)  # truly calibrated: at the floor
    overconfident = expected_calibration_error(small, rng.random(400) < small - 0.2)
    assert overconfident > floor_small["q95"]
