"""Evidence for the guarantees: repeated synthetic held-out draws from populations whose truth is known
(:mod:`monai_dymo.certification.simulation`). Each claim is checked as ``value <= target + 2 Monte Carlo SE`` at the
default settings; the benchmark ``benchmarks/bench_certification_simulation.py`` runs the same at 2,000 draws."""

from __future__ import annotations

import math

import pytest

from monai_dymo.certification.simulation import (
    data_reuse_violations,
    expected_risk,
    expected_risk_per_class,
    margin_violations,
    refer_per_class_violations,
    refer_violations,
    true_fix_share,
)


def test_population_has_nulls_on_both_sides_of_the_alternatives():
    shares = {m: true_fix_share(m) for m in (0.5, 0.3, 0.1, 0.02, 0.01, 0.0)}
    assert shares[0.5] == pytest.approx(0.5) and shares[0.01] < 0.5 and shares[0.0] < 0.5
    assert shares[0.3] > 0.5 and shares[0.1] > 0.5 and shares[0.02] > 0.5
    assert true_fix_share(0.2, global_null=True) == pytest.approx(0.5) and math.isnan(true_fix_share(1.0))


@pytest.mark.parametrize("procedure", ["fallback", "fixed_sequence"])
def test_margin_family_wise_error_is_within_delta(procedure):
    check = margin_violations(draws=800, procedure=procedure, seed=11)
    assert check.ok, check
    null = margin_violations(draws=600, procedure=procedure, global_null=True, seed=12)
    assert null.ok, null


def test_refer_pac_error_among_not_referred_is_within_delta_and_not_vacuous():
    check, coverage = refer_violations(draws=400, seed=13)
    assert check.ok, check
    assert coverage > 0.08  # the best threshold (0.8) keeps 25 %; the certified one keeps a good part of it


def test_refer_per_class_holds_for_every_class_where_pooled_does_not():
    per_class, pooled = refer_per_class_violations(draws=300, seed=14)
    assert per_class.ok, per_class
    assert pooled.value > 0.5  # the pooled rule controls the mixture, and the minority class pays for it


def test_conformal_risk_control_bounds_the_expected_joint_rate():
    check = expected_risk(draws=600, seed=15)
    assert check.ok, check
    assert check.value > 0.8 * check.target  # and it is tight, not vacuous
    per_class = expected_risk_per_class(draws=400, seed=16)
    assert per_class.ok, per_class


def test_choosing_on_the_certification_patients_breaks_the_guarantee_and_the_holdout_keeps_it():
    reused = data_reuse_violations(draws=600, seed=17)
    assert reused.value > 4 * reused.target  # best of 20 null checkpoints certified most of the time
    held = data_reuse_violations(draws=600, holdout_fraction=0.5, seed=17)
    assert held.ok, held
