"""Synthetic held-out draws with a known population, to check what :mod:`.statistics` guarantees (numpy only).

Each ``*_violations`` function repeats: draw a held-out split from a population whose truth is known in closed form,
run the procedure, and record whether its claim is false for that population. It returns a :class:`Check` with the
rate (or mean, for the expected-risk rule) over ``draws`` and its Monte Carlo standard error; the guarantee is met
(up to Monte Carlo error) when ``value <= target + 2 * se``. For a rate, ``se = sqrt(target (1 - target) / draws)``:
the standard error of a procedure exactly at its level.

Populations:

- margins: 60 % of patients have an accepted recovery with reward ``r ~ U(0, 1)``; once accepted, the patient's
  correctness flips by reward band: ``r >= 0.4`` fix = break = 0.15 (the null holds exactly), ``0.1 <= r < 0.4`` fix
  0.3 / break 0.05, ``r < 0.1`` break 0.9. ``P(fix | discordant)`` is then ``1/2`` at margins ``>= 0.4``, above at
  0.3 .. 0.02 and below at 0.01 and 0: nulls on both sides of the alternatives. ``global_null`` sets every band to
  fix = break.
- refer: confidence ``c ~ U(0.2, 1)``, wrong with probability ``1 - c``: the population error among ``c >= t`` is
  ``(1 - t) / 2`` and the joint rate ``P(c >= t, wrong) = (1 - t)^2 / 1.6``. Per class: 85 % predicted class 0 with
  ``c ~ U(0.5, 1)`` wrong w.p. ``0.8 (1 - c)``; 15 % class 1 wrong w.p. ``1.6 (1 - c)`` (errors ``0.4 (1 - t)`` and
  ``0.8 (1 - t)``).
- data reuse: 20 checkpoints, none better than discarding (each patient discordant w.p. 0.1, fix or break 50/50);
  the best by ``fixed - broken`` is certified on the patients that chose it, or on an untouched holdout part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .statistics import (
    DEFAULT_MARGINS,
    certify_margin,
    holdout_indices,
    refer_threshold,
    refer_threshold_per_class,
    risk_control_threshold,
    risk_control_threshold_per_class,
)

__all__ = [
    "Check",
    "true_fix_share",
    "margin_violations",
    "refer_violations",
    "refer_per_class_violations",
    "expected_risk",
    "expected_risk_per_class",
    "data_reuse_violations",
    "all_checks",
]

# reward bands [lo, hi): (P(fix), P(break)) once accepted
_BANDS = ((0.4, 1.0, 0.15, 0.15), (0.1, 0.4, 0.30, 0.05), (0.0, 0.1, 0.0, 0.9))
_NULL_BANDS = ((0.4, 1.0, 0.15, 0.15), (0.1, 0.4, 0.15, 0.15), (0.0, 0.1, 0.15, 0.15))
_ACCEPTING = 0.6


@dataclass(frozen=True)
class Check:
    """One simulated guarantee: ``value`` (violation rate, or mean joint rate) against ``target`` over ``draws``;
    ``power``: how useful the result was (margins: rate of certifying some margin; refer: mean held-out coverage)."""

    name: str
    procedure: str
    value: float
    target: float
    se: float
    draws: int
    power: float = float("nan")

    @property
    def bound(self) -> float:
        return self.target + 2 * self.se

    @property
    def ok(self) -> bool:
        return self.value <= self.bound


def _rate_check(name: str, procedure: str, hits: np.ndarray, target: float, power: float = math.nan) -> Check:
    d = int(hits.size)
    return Check(name, procedure, float(hits.mean()), float(target), math.sqrt(target * (1 - target) / d), d, power)


def true_fix_share(margin: float, global_null: bool = False) -> float:
    """Population ``P(fix | discordant)`` at ``margin`` (nan when nobody is discordant there)."""
    fix = brk = 0.0
    for lo, hi, pf, pb in _NULL_BANDS if global_null else _BANDS:
        mass = _ACCEPTING * max(0.0, hi - max(margin, lo))
        fix, brk = fix + mass * pf, brk + mass * pb
    return fix / (fix + brk) if fix + brk > 0 else math.nan


def _margin_draw(rng: np.random.Generator, n: int, margins: np.ndarray, global_null: bool) -> tuple[np.ndarray, ...]:
    """``(correct_discard [n], correct_at_margin [K, n])`` of one held-out split."""
    r = np.where(rng.random(n) < _ACCEPTING, rng.random(n), -np.inf)
    u = rng.random(n)
    fix = np.zeros(n, dtype=bool)
    brk = np.zeros(n, dtype=bool)
    for lo, hi, pf, pb in _NULL_BANDS if global_null else _BANDS:
        band = (r >= lo) & (r < hi)
        fix |= band & (u < pf)
        brk |= band & (u >= pf) & (u < pf + pb)
    base = np.where(fix, False, np.where(brk, True, rng.random(n) < 0.7))
    accepted = r[None, :] > margins[:, None]
    return base, np.where(accepted, np.where(fix, True, np.where(brk, False, base))[None, :], base[None, :])


def margin_violations(draws: int = 1000, n: int = 400, delta: float = 0.1, procedure: str = "fallback",
                      global_null: bool = False, seed: int = 0) -> Check:
    """Rate of certifying a margin where ``P(fix | discordant) <= 1/2`` (any certified margin: the family-wise
    error, which bounds the rate for the margin put in force)."""
    margins = np.asarray(DEFAULT_MARGINS)
    null = np.array([not true_fix_share(m, global_null) > 0.5 for m in margins])
    rng = np.random.default_rng(seed)
    hits = np.zeros(draws, dtype=bool)
    some = np.zeros(draws, dtype=bool)
    for d in range(draws):
        base, at = _margin_draw(rng, n, margins, global_null)
        out = certify_margin(base, at, margins, delta, procedure=procedure)
        hits[d] = any(t["status"] == "certified" and null[k] for k, t in enumerate(out["tests"]))
        some[d] = math.isfinite(out["margin"])
    return _rate_check("margin, global null" if global_null else "margin", procedure, hits, delta, float(some.mean()))


def refer_violations(draws: int = 500, n: int = 1000, alpha: float = 0.1, delta: float = 0.1,
                     procedure: str = "fixed_sequence", seed: int = 1) -> tuple[Check, float]:
    """``(rate of a threshold whose population error among patients not referred exceeds alpha, mean held-out
    coverage)``."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(draws, dtype=bool)
    coverage = np.zeros(draws)
    for d in range(draws):
        c = rng.uniform(0.2, 1.0, n)
        out = refer_threshold(c, rng.random(n) < c, alpha, delta, procedure=procedure)
        t = out["threshold"]
        hits[d] = math.isfinite(t) and (1 - max(t, 0.2)) / 2 > alpha
        coverage[d] = out["coverage"]
    return _rate_check("refer pac, pooled", procedure, hits, delta, float(coverage.mean())), float(coverage.mean())


def _class_draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = (rng.random(n) < 0.15).astype(np.int64)
    c = rng.uniform(0.5, 1.0, n)
    slope = np.where(pred == 1, 1.6, 0.8)
    return c, rng.random(n) >= slope * (1 - c), pred


def refer_per_class_violations(draws: int = 500, n: int = 2000, alpha: float = 0.1, delta: float = 0.1,
                               seed: int = 2) -> tuple[Check, Check]:
    """``(per-class rule: rate of some predicted class with population error among its patients not referred above
    alpha, pooled rule judged per class on the same draws)``: the pooled rule controls the mixture only."""
    rng = np.random.default_rng(seed)
    slopes = (0.4, 0.8)  # population error among class c with confidence >= t: slope_c * (1 - t), t >= 0.5
    hits = np.zeros(draws, dtype=bool)
    pooled_hits = np.zeros(draws, dtype=bool)
    coverage = np.zeros((draws, 2))
    for d in range(draws):
        c, ok, pred = _class_draw(rng, n)
        out = refer_threshold_per_class(c, ok, pred, 2, alpha, delta)
        hits[d] = any(math.isfinite(t) and slopes[k] * (1 - max(t, 0.5)) > alpha
                      for k, t in out["thresholds"].items())
        pooled = refer_threshold(c, ok, alpha, delta)
        t = pooled["threshold"]
        pooled_hits[d] = math.isfinite(t) and max(s * (1 - max(t, 0.5)) for s in slopes) > alpha
        coverage[d] = out["coverage"], pooled["coverage"]
    return (_rate_check("refer pac, per class", "fixed_sequence", hits, delta, float(coverage[:, 0].mean())),
            _rate_check("refer pac, pooled, judged per class", "fixed_sequence", pooled_hits, delta,
                        float(coverage[:, 1].mean())))


def _mean_check(name: str, values: np.ndarray, target: float, power: float = math.nan) -> Check:
    d = int(values.size)
    return Check(name, "conformal risk control", float(values.mean()), float(target),
                 float(values.std(ddof=1) / math.sqrt(d)), d, power)


def expected_risk(draws: int = 1000, n: int = 500, alpha: float = 0.05, seed: int = 3) -> Check:
    """Mean over draws of the population joint rate ``P(wrong and not referred)`` at the chosen threshold."""
    rng = np.random.default_rng(seed)
    risk = np.zeros(draws)
    coverage = np.zeros(draws)
    for d in range(draws):
        c = rng.uniform(0.2, 1.0, n)
        out = risk_control_threshold(c, rng.random(n) < c, alpha)
        t = out["threshold"]
        risk[d] = 0.0 if math.isinf(t) else (1 - max(t, 0.2)) ** 2 / 1.6
        coverage[d] = out["coverage"]
    return _mean_check("refer expected, pooled", risk, alpha, float(coverage.mean()))


def expected_risk_per_class(draws: int = 1000, n: int = 2000, alpha: float = 0.05, seed: int = 4) -> Check:
    """Largest over classes of the mean over draws of ``P(wrong and not referred | predicted c)``."""
    rng = np.random.default_rng(seed)
    risk = np.zeros((draws, 2))
    coverage = np.zeros(draws)
    for d in range(draws):
        c, ok, pred = _class_draw(rng, n)
        out = risk_control_threshold_per_class(c, ok, pred, 2, alpha)
        coverage[d] = out["coverage"]
        for k, slope in enumerate((0.8, 1.6)):  # P(c >= t, wrong | class) = slope * (1 - t)^2 for c ~ U(0.5, 1)
            t = out["thresholds"][k]
            risk[d, k] = 0.0 if math.isinf(t) else slope * (1 - max(t, 0.5)) ** 2
    checks = [_mean_check(f"refer expected, per class (worst: {k})", risk[:, k], alpha, float(coverage.mean()))
              for k in range(2)]
    return max(checks, key=lambda ch: ch.value - ch.bound)


def data_reuse_violations(draws: int = 1000, n: int = 400, checkpoints: int = 20, delta: float = 0.1,
                          holdout_fraction: float | None = None, seed: int = 5) -> Check:
    """Rate of certifying the best of ``checkpoints`` null checkpoints. ``holdout_fraction`` None: chosen and certified
    on the same patients; else chosen on the rest and certified on :func:`holdout_indices`."""
    rng = np.random.default_rng(seed)
    held = holdout_indices(n, holdout_fraction, seed=1000)
    rest = np.setdiff1d(np.arange(n), held) if holdout_fraction is not None else held
    hits = np.zeros(draws, dtype=bool)
    for d in range(draws):
        u = rng.random((checkpoints, n))
        fix, brk = u < 0.05, (u >= 0.05) & (u < 0.1)
        base = np.where(fix[0] | brk[0], brk[0], rng.random(n) < 0.7)  # the discard prediction's correctness
        best = int(np.argmax(fix[:, rest].sum(1) - brk[:, rest].sum(1)))
        ok = np.where(fix[best], True, np.where(brk[best], False, base))
        base_b = np.where(fix[best] | brk[best], brk[best], base)
        out = certify_margin(base_b[held], ok[held][None], [0.0], delta)
        hits[d] = out["tests"][0]["status"] == "certified"
    name = "data reuse: same patients" if holdout_fraction is None else f"data reuse: holdout {holdout_fraction:g}"
    return _rate_check(name, "fallback", hits, delta)


def all_checks(draws: int = 2000, seed: int = 0) -> list[Check]:
    """Every check at ``draws`` repetitions (the benchmark's table)."""
    out = [margin_violations(draws, procedure=p, seed=seed) for p in ("fallback", "fixed_sequence")]
    out += [margin_violations(draws, procedure=p, global_null=True, seed=seed + 1) for p in ("fallback",
                                                                                            "fixed_sequence")]
    out += [refer_violations(draws, procedure=p, seed=seed + 2)[0] for p in ("fixed_sequence", "fallback")]
    out += list(refer_per_class_violations(draws, seed=seed + 3))
    out += [expected_risk(draws, seed=seed + 4), expected_risk_per_class(draws, seed=seed + 5)]
    out += [data_reuse_violations(draws, seed=seed + 6), data_reuse_violations(draws, holdout_fraction=0.5,
                                                                               seed=seed + 6)]
    return out
