"""Exact binomial tests and the multiple-testing procedures behind the held-out guarantees (numpy only).

Everything here works on per-patient vectors of one held-out split, drawn independently of everything chosen before
(network, calibration, margins, thresholds, weights, levels); held-out and new patients are assumed exchangeable
(i.i.d. from one population). "Population" below means that population, not the patients of any particular run.

**Margin** (:func:`certify_margin`). At margin ``m``, among held-out patients whose correctness differs between DyMo
and discarding the missing modalities, ``fixed`` went wrong -> right and ``broken`` right -> wrong. ``H0(m)``:
``P(fix | discordant) <= 1/2`` (accepting breaks at least as much as it fixes). Given ``n = fixed + broken`` the fixes
are ``Bin(n, theta_m)``, so the sign test ``p = P(Bin(n, 1/2) >= fixed)`` is exact: ``P(p <= c) <= c`` for every
``c`` under ``H0(m)``. The margins are ordered strict -> lenient before the data and tested by

- ``"fallback"`` (default; Wiens 2003, Wiens & Dmitrienko 2005): level ``delta * w_k`` with weights ``w`` fixed
  before the data (sum ``<= 1``), plus the level of the previous margin *when that one was rejected*; a margin that
  is not rejected (for instance with fewer discordant patients than could ever reject at its level) passes nothing
  on. The rejected (certified) set may have gaps.
- ``"fixed_sequence"`` (Learn-then-Test): every margin at ``delta``, stopping at the first one not rejected.

Both control the family-wise error rate under any dependence between the margins' tests: with probability
``>= 1 - delta`` over the held-out draw, *every* certified margin has ``P(fix | discordant) > 1/2``; the certified
margin in force (the most lenient certified) is one of them. Margins ``>= 1`` are left out before the data: rewards
are below 1, so DyMo equals discarding there and there is nothing to test. No margin is skipped on its observed count
(discordant patients or changed predictions): those counts are correlated with the fixes at the other margins (the
same patients), so the later tests would no longer be exact given the skip.

**Refer threshold, high probability** (``guarantee="pac"``, :func:`refer_threshold`). A patient is not referred
when the softmax probability of the final prediction is ``>= t``. ``H0(t)``: the population error among patients
with confidence ``>= t`` exceeds ``alpha``; exact binomial tail ``p = P(Bin(n_t, alpha) <= errors_t)`` (equivalently,
the Clopper-Pearson upper bound at level ``p`` is ``alpha``). Thresholds of a fixed grid are tested high -> low by a
fixed sequence that starts at :func:`refer_start` (``1 - alpha / 2``, from ``alpha`` only, before the data: above it a
calibrated classifier's error is at most half of ``alpha``; a classifier whose confidences all lie below it certifies
nothing, so such a model needs a lower ``start``, set before looking at the held-out patients), or by the fallback
procedure over the whole grid (equal weights by default: valid, but with much less power). The lowest certified
threshold is used. Guarantee: with probability ``>= 1 - delta`` over the held-out draw, the population error among
patients not referred is ``<= alpha`` (none certified: everybody referred).
:func:`refer_threshold_per_class` does this per *predicted* class (Mondrian) at ``delta / C`` each: with probability
``>= 1 - delta``, for every class ``c`` at once, the population error among patients predicted ``c`` and not
referred is ``<= alpha`` (union bound over the ``C`` classes).

**Refer threshold, in expectation** (``guarantee="expected"``, :func:`risk_control_threshold`). Conformal risk control
(Angelopoulos et al. 2022) with the monotone loss ``L_i(t) = 1[conf_i >= t and wrong_i]``: the lowest grid threshold
with ``(errors_t + 1) / (n + 1) <= alpha``. Guarantee: ``E[P(wrong and not referred)] <= alpha``, the expectation over
the held-out draw: it bounds the *joint* rate of wrong-and-not-referred among all patients, not the error among those
not referred. Per predicted class (:func:`risk_control_threshold_per_class`): ``E[P(wrong and not referred | predicted
c)] <= alpha`` for every class. A conditional (error among those not referred) version in expectation needs conformal
selection over a batch of new patients and is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MARGINS",
    "DEFAULT_REFER_THRESHOLDS",
    "PROCEDURES",
    "binomial_sf",
    "binomial_cdf",
    "fixes_breaks_pvalue",
    "risk_pvalue",
    "min_sample_size",
    "clopper_pearson_upper",
    "sequential_test",
    "certify_margin",
    "margin_weights",
    "refer_start",
    "refer_threshold",
    "refer_threshold_per_class",
    "risk_control_threshold",
    "risk_control_threshold_per_class",
    "holdout_indices",
]

#: margins tested from strict to lenient (rewards are below 1, so 1.0 never accepts anything)
DEFAULT_MARGINS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01, 0.0)
#: confidence thresholds tested from high to low (fixed before seeing any data)
DEFAULT_REFER_THRESHOLDS: tuple[float, ...] = tuple(
    sorted({round(1.0 - 10.0 ** (-e / 10), 8) for e in range(10, 61)} | {round(x / 100, 2) for x in range(0, 91)},
           reverse=True)
)
#: the multiple-testing procedures over an ordered family of hypotheses
PROCEDURES: tuple[str, ...] = ("fallback", "fixed_sequence")


# ---------------------------------------------------------------------------------------------------- binomial tails
def binomial_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Bin(n, p)``, exact (``math.comb`` sums; ``p = 1/2`` in integer arithmetic)."""
    k, n = int(k), int(n)
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5 and n <= 20000:
        return _half_sf(k, n)
    return _sf_log(k, n, float(p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Bin(n, p)``, exact up to float rounding."""
    k, n = int(k), int(n)
    if p == 0.5 and 0 <= k < n <= 20000:
        return _half_sf(n - k, n)  # symmetric
    return _cdf_log(k, n, float(p))


@lru_cache(maxsize=1 << 16)
def _half_sf(k: int, n: int) -> float:
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def _log_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))


def _sf_log(k: int, n: int, p: float) -> float:
    return min(1.0, math.exp(_logsumexp([_log_pmf(i, n, p) for i in range(k, n + 1)])))


@lru_cache(maxsize=1 << 16)
def _cdf_log(k: int, n: int, p: float) -> float:
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.exp(_logsumexp([_log_pmf(i, n, p) for i in range(0, k + 1)])))


def fixes_breaks_pvalue(fixed: int, broken: int) -> float:
    """One-sided exact sign test of ``H0``: accepting breaks at least as many predictions as it fixes.

    ``p = P(Bin(fixed + broken, 1/2) >= fixed)``; 1 when there is no discordant patient."""
    n = int(fixed) + int(broken)
    return 1.0 if n == 0 else binomial_sf(int(fixed), n, 0.5)


def risk_pvalue(errors: int, n: int, alpha: float) -> float:
    """Exact binomial p-value of ``H0``: error rate ``> alpha`` given ``errors`` among ``n``:
    ``P(Bin(n, alpha) <= errors)`` (1 when ``n = 0``)."""
    return 1.0 if int(n) == 0 else _cdf_log(int(errors), int(n), float(alpha))


def min_sample_size(delta: float, p0: float) -> int:
    """Fewest samples with which a one-sided binomial test at level ``delta`` can reject (all outcomes favourable):
    ``ceil(log(delta) / log(1 - p0))`` (``p0 = 1/2`` for the sign test, ``alpha`` for the refer test)."""
    if not 0 < delta < 1 or not 0 < p0 < 1:
        raise ValueError(f"delta and p0 must be in (0, 1), got {delta}, {p0}.")
    return max(1, math.ceil(math.log(delta) / math.log1p(-p0) - 1e-12))


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided ``1 - delta`` Clopper-Pearson upper bound of a binomial proportion (bisection on the exact tail)."""
    if errors >= n:
        return 1.0
    lo, hi = errors / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _cdf_log(errors, n, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


# ---------------------------------------------------------------------------------------------------- procedures
def _check_level(name: str, value: float) -> float:
    value = float(value)
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value}.")
    return value


def _check_procedure(procedure: str) -> str:
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}.")
    return procedure


def _check_decreasing(values: Sequence[float], what: str, order: str) -> list[float]:
    values = [float(v) for v in values]
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{what} must be strictly decreasing ({order}), got {values}.")
    return values


def _check_weights(weights: Sequence[float], num: int, total: bool = True) -> np.ndarray:
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.shape[0] != num or (w < 0).any() or not np.isfinite(w).all() or (total and w.sum() > 1 + 1e-9):
        raise ValueError(f"weights must be {num} non-negative numbers summing to at most 1, got {w.tolist()}.")
    return w


def sequential_test(
    p_value: Callable[[int], float],
    num: int,
    delta: float,
    procedure: str = "fallback",
    weights: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Test ``num`` hypotheses in their given order (fixed before the data) with family-wise error rate ``<= delta``.

    Args:
        p_value: ``k -> p`` of hypothesis ``k``; called only for the hypotheses tested.
        procedure: ``"fallback"`` (level ``delta * w_k`` plus the previous level when the previous hypothesis was
            rejected) or ``"fixed_sequence"`` (level ``delta`` while all earlier ones are rejected; stop at the first
            one not rejected).
        weights: ``[num]`` non-negative, sum ``<= 1`` (default ``1 / num`` each). ``fixed_sequence`` only leaves out
            the hypotheses of weight 0 (any non-negative numbers).

    Returns:
        Per hypothesis ``{"level", "p_value", "status"}``: status ``certified`` (rejected), ``not certified``,
        ``not tested`` (after a fixed sequence stopped) or ``skipped`` (weight 0 in a fixed sequence; level and
        p-value None).
    """
    _check_procedure(procedure)
    delta = _check_level("delta", delta)
    fixed = procedure == "fixed_sequence"
    w = np.full(num, 1.0 / max(1, num)) if weights is None else _check_weights(weights, num, total=not fixed)
    out: list[dict[str, Any]] = []
    carried, stopped = 0.0, False
    for k in range(num):
        if procedure == "fixed_sequence":
            if w[k] == 0:
                out.append({"level": None, "p_value": None, "status": "skipped"})
                continue
            if stopped:
                out.append({"level": delta, "p_value": None, "status": "not tested"})
                continue
            level = delta
        else:
            level = delta * float(w[k]) + carried
        p = float(p_value(k))
        rejected = level > 0 and p <= level
        out.append({"level": level, "p_value": p, "status": "certified" if rejected else "not certified"})
        carried = level if rejected else 0.0
        stopped = not rejected
    return out


# ---------------------------------------------------------------------------------------------------- margin
def _as_array(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype)


def margin_weights(margins: Sequence[float]) -> list[float]:
    """Default fallback weights: equal over the margins below 1, 0 for margins ``>= 1`` (rewards are below 1, so
    DyMo equals discarding there). Depends on the margins only, never on data."""
    live = [float(m) < 1.0 for m in margins]
    k = sum(live)
    return [(1.0 / k if ok else 0.0) for ok in live] if k else [0.0] * len(live)


def certify_margin(
    correct_discard: Any,
    correct_at_margin: Any,
    margins: Sequence[float],
    delta: float = 0.1,
    changed_at_margin: Any | None = None,
    *,
    procedure: str = "fallback",
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Certify reward margins: exact sign tests under a family-wise error procedure (module docstring).

    Args:
        correct_discard: bool ``[N]``, prediction correct when the missing modalities are discarded.
        correct_at_margin: bool ``[K, N]``, DyMo's prediction correct at ``margins[k]``.
        margins: ``K`` margins, strictly decreasing (strict -> lenient).
        delta: family-wise error rate.
        changed_at_margin: bool ``[K, N]``, DyMo's prediction differs from discarding's; reported only.
        procedure: ``"fallback"`` or ``"fixed_sequence"``.
        weights: ``[K]`` fallback weights fixed before the data (default :func:`margin_weights`); with
            ``fixed_sequence`` only their zeros count (those margins are left out).

    Returns:
        ``{"margin": most lenient certified margin or inf, "delta", "procedure", "weights", "test", "tests": [{"margin",
        "fixed", "broken", "n", "changed", "p_value", "level", "min_n", "status"}]}``; ``min_n`` is the fewest
        discordant patients that could reject at that level.
    """
    margins = _check_decreasing(margins, "margins", "strict -> lenient")
    delta = _check_level("delta", delta)
    _check_procedure(procedure)
    base = _as_array(correct_discard, bool).reshape(-1)
    dymo = _as_array(correct_at_margin, bool).reshape(len(margins), -1)
    if dymo.shape[1] != base.shape[0]:
        raise ValueError(f"correct_at_margin has {dymo.shape[1]} patients, correct_discard {base.shape[0]}.")
    changed = dymo != base[None] if changed_at_margin is None else _as_array(changed_at_margin, bool)
    changed = changed.reshape(dymo.shape)
    w = margin_weights(margins) if weights is None else _check_weights(weights, len(margins)).tolist()
    fixed = (dymo & ~base[None]).sum(1)
    broken = (~dymo & base[None]).sum(1)
    steps = sequential_test(lambda k: fixes_breaks_pvalue(int(fixed[k]), int(broken[k])), len(margins), delta,
                            procedure, w)
    tests, chosen = [], math.inf
    for k, (m, s) in enumerate(zip(margins, steps)):
        if s["status"] == "certified":
            chosen = m
        level = s["level"]
        tests.append({"margin": m, "fixed": int(fixed[k]), "broken": int(broken[k]), "n": int(fixed[k] + broken[k]),
                      "changed": int(changed[k].sum()), "p_value": s["p_value"], "level": level,
                      "min_n": min_sample_size(level, 0.5) if level else None, "status": s["status"]})
    rule = ("fallback (Wiens 2003): level delta * weight, plus the previous margin's level when that one was "
            "certified" if procedure == "fallback" else "fixed sequence: level delta, stop at the first margin not "
            "certified")
    return {
        "margin": chosen,
        "delta": delta,
        "procedure": procedure,
        "weights": [float(x) for x in w],
        "test": f"{rule}; margins strict -> lenient; exact one-sided sign test of H0: P(fix | discordant) <= 1/2 "
        "among held-out patients whose correctness differs from discarding; family-wise error <= delta",
        "tests": tests,
    }


# ---------------------------------------------------------------------------------------------------- refer (pac)
def refer_start(alpha: float) -> float:
    """First threshold of the refer fixed sequence: ``1 - alpha / 2``, where a calibrated classifier's error among
    patients above it would be at most half of ``alpha``. Fixed before the data (``alpha`` only)."""
    return 1.0 - _check_level("alpha", alpha) / 2


def _counts_above(conf: np.ndarray, wrong: np.ndarray, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(n_t, errors_t)`` over ``conf >= t`` for every threshold (one sort)."""
    order = np.argsort(conf, kind="stable")
    sorted_conf = conf[order]
    tail_wrong = np.concatenate([np.cumsum(wrong[order][::-1])[::-1], [0]])  # errors among sorted[i:]
    first = np.searchsorted(sorted_conf, np.asarray(thresholds, dtype=float), side="left")
    return conf.size - first, tail_wrong[first]


def _inputs(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = _as_array(confidence, float).reshape(-1)
    ok = _as_array(correct, bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} differ in shape.")
    return conf, ok


def refer_threshold(
    confidence: Any,
    correct: Any,
    alpha: float = 0.1,
    delta: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
    *,
    procedure: str = "fixed_sequence",
    start: float | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Lowest confidence threshold whose population error among patients not referred is ``<= alpha``, certified
    with probability ``>= 1 - delta`` (module docstring).

    Args:
        confidence: ``[N]`` softmax probability of the final prediction; correct: bool ``[N]``.
        thresholds: strictly decreasing grid, fixed before the data.
        procedure: ``"fixed_sequence"`` (from ``start``, default :func:`refer_start`) or ``"fallback"`` (whole grid,
            ``weights`` default equal).

    Returns:
        ``{"threshold" (inf when none is certified: everybody referred), "alpha", "delta", "guarantee": "pac",
        "procedure", "start", "coverage" (held-out fraction not referred), "error_not_referred" (held-out),
        "upper_bound" (Clopper-Pearson at level delta at the chosen threshold), "n", "thresholds_tested"}``.
    """
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    _check_procedure(procedure)
    grid = _check_decreasing(thresholds, "thresholds", "high -> low")
    conf, ok = _inputs(confidence, correct)
    if procedure == "fixed_sequence":
        start = refer_start(alpha) if start is None else float(start)
        w = [1.0 if t <= start else 0.0 for t in grid]
    else:
        start = None
        w = None if weights is None else list(weights)
    n_t, err_t = _counts_above(conf, ~ok, grid)
    steps = sequential_test(lambda k: risk_pvalue(int(err_t[k]), int(n_t[k]), alpha), len(grid), delta, procedure, w)
    certified = [t for t, s in zip(grid, steps) if s["status"] == "certified"]
    chosen = min(certified) if certified else math.inf
    keep = conf >= chosen
    n_keep, err = int(keep.sum()), int((~ok[keep]).sum())
    return {
        "threshold": chosen,
        "alpha": alpha,
        "delta": delta,
        "guarantee": "pac",
        "procedure": procedure,
        "start": start,
        "coverage": n_keep / max(1, conf.size),
        "error_not_referred": err / n_keep if n_keep else None,
        "upper_bound": clopper_pearson_upper(err, n_keep, delta) if n_keep else None,
        "n": int(conf.size),
        "thresholds_tested": sum(s["p_value"] is not None for s in steps),
    }


def _class_vector(prediction: Any, size: int) -> np.ndarray:
    pred = _as_array(prediction, np.int64).reshape(-1)
    if pred.shape[0] != size:
        raise ValueError(f"prediction has {pred.shape[0]} patients, confidence {size}.")
    return pred


def refer_threshold_per_class(
    confidence: Any,
    correct: Any,
    prediction: Any,
    num_classes: int,
    alpha: float = 0.1,
    delta: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
    **kwargs: Any,
) -> dict[str, Any]:
    """One threshold per predicted class (Mondrian): :func:`refer_threshold` on the patients predicted ``c`` at level
    ``delta / num_classes``, so that with probability ``>= 1 - delta`` every class's population error among patients
    predicted ``c`` and not referred is ``<= alpha`` (union bound). ``num_classes`` must be fixed before the data (the
    classifier's classes). Returns ``{"thresholds": {c: t}, "classes": {c: refer_threshold result}, "alpha", "delta",
    "level", "num_classes", "guarantee": "pac", "coverage", "n"}``."""
    conf, ok = _inputs(confidence, correct)
    pred = _class_vector(prediction, conf.size)
    num_classes = int(num_classes)
    if num_classes < 1 or (pred.size and (pred.min() < 0 or pred.max() >= num_classes)):
        raise ValueError(f"predictions must be classes 0..{num_classes - 1}.")
    level = _check_level("delta", delta) / num_classes
    classes = {c: refer_threshold(conf[pred == c], ok[pred == c], alpha, level, thresholds, **kwargs)
               for c in range(num_classes)}
    kept = sum(r["coverage"] * r["n"] for r in classes.values())
    return {"thresholds": {c: r["threshold"] for c, r in classes.items()}, "classes": classes, "alpha": float(alpha),
            "delta": float(delta), "level": level, "num_classes": num_classes, "guarantee": "pac",
            "coverage": kept / max(1, conf.size), "n": int(conf.size)}


# ---------------------------------------------------------------------------------------------------- refer (expected)
def risk_control_threshold(
    confidence: Any,
    correct: Any,
    alpha: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
) -> dict[str, Any]:
    """Conformal risk control of the joint rate of wrong-and-not-referred (module docstring): the lowest grid
    threshold with ``(errors_t + 1) / (n + 1) <= alpha`` (``errors_t``: wrong held-out patients with confidence
    ``>= t``); inf (everybody referred) when there is none. Guarantee: ``E[P(wrong and not referred)] <= alpha`` over
    the held-out draw. Returns ``{"threshold", "alpha", "guarantee": "expected", "coverage", "joint_rate" (held-out
    fraction wrong and not referred), "error_not_referred", "n"}``."""
    alpha = _check_level("alpha", alpha)
    grid = _check_decreasing(thresholds, "thresholds", "high -> low")
    conf, ok = _inputs(confidence, correct)
    n_t, err_t = _counts_above(conf, ~ok, grid)
    feasible = (err_t + 1) / (conf.size + 1) <= alpha  # upward closed in t: errors_t grows as t decreases
    chosen = min((t for t, f in zip(grid, feasible) if f), default=math.inf)
    keep = conf >= chosen
    n_keep, err = int(keep.sum()), int((~ok[keep]).sum())
    return {"threshold": chosen, "alpha": alpha, "guarantee": "expected", "coverage": n_keep / max(1, conf.size),
            "joint_rate": err / max(1, conf.size), "error_not_referred": err / n_keep if n_keep else None,
            "n": int(conf.size)}


def risk_control_threshold_per_class(
    confidence: Any,
    correct: Any,
    prediction: Any,
    num_classes: int,
    alpha: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
) -> dict[str, Any]:
    """Mondrian conformal risk control: :func:`risk_control_threshold` on the patients predicted ``c``, for every
    class. Guarantee: ``E[P(wrong and not referred | predicted c)] <= alpha`` for each class ``c`` (the held-out
    patients predicted ``c`` and a new one predicted ``c`` are exchangeable). Returns ``{"thresholds": {c: t},
    "classes", "alpha", "num_classes", "guarantee": "expected", "coverage", "n"}``."""
    conf, ok = _inputs(confidence, correct)
    pred = _class_vector(prediction, conf.size)
    classes = {c: risk_control_threshold(conf[pred == c], ok[pred == c], alpha, thresholds)
               for c in range(int(num_classes))}
    kept = sum(r["coverage"] * r["n"] for r in classes.values())
    return {"thresholds": {c: r["threshold"] for c, r in classes.items()}, "classes": classes, "alpha": float(alpha),
            "num_classes": int(num_classes), "guarantee": "expected", "coverage": kept / max(1, conf.size),
            "n": int(conf.size)}


# ---------------------------------------------------------------------------------------------------- holdout
def holdout_indices(num_samples: int, fraction: float | None, seed: int = 0) -> np.ndarray:
    """Indices of the held-out part of a split: all when ``fraction`` is None / 1, else a seeded random
    ``round(fraction * N)`` of them (sorted). Drawn from ``N`` and the seed only, so the part is untouched by any
    choice made on the rest."""
    if fraction is None or float(fraction) >= 1.0:
        return np.arange(num_samples)
    if not 0 < float(fraction) < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1], got {fraction}.")
    n = max(1, int(round(float(fraction) * num_samples)))
    return np.sort(np.random.default_rng(seed).permutation(num_samples)[:n])
