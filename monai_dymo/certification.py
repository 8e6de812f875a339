"""Guarantees on held-out data: a certified reward margin and a refer flag with a validated error rate (issue 18).

Everything here works on per-patient *outcome vectors* of a held-out split that the fusion network did not train on;
nothing imports the networks (:func:`collect_outcomes` takes any object with ``encode`` / ``fuse`` / ``modalities``,
as :mod:`monai_dymo.selection` does).

**Outcomes.** One run of the selection with margin 0 (the method page's rule) gives, per patient, the greedy path: the
rewards ``r_1 > 0, r_2 > 0, ...`` of the accepted recoveries in order. Under a margin ``delta`` the rewards of every
candidate are the same (they do not depend on the margin) and the patient stops at the first step whose best reward
is ``<= delta``, so its final set is the prefix of the margin-0 path of length ``k(delta)`` = number of leading
accepted rewards ``> delta``. :func:`collect_outcomes` stores the prediction and its softmax probability for every
prefix ``k = 0..steps`` (prefix 0 = discarding the missing modalities), so any margin is evaluated offline.

**Certified margin** (:func:`certify_margin`). Margins are tested from strict to lenient (fixed-sequence testing,
Learn-then-Test). At margin ``delta``, among the held-out patients whose correctness differs between DyMo and
discarding, ``fixed`` went wrong -> right and ``broken`` right -> wrong. Null hypothesis ``H0(delta)``: accepting
breaks at least as many predictions as it fixes (``P(fix | discordant) <= 1/2``); exact one-sided binomial (sign)
test ``p = P(Bin(n, 1/2) >= fixed)``, ``n = fixed + broken``; ``H0`` is rejected (the margin certified) when
``p <= delta_test``. The sequence stops at the first margin not certified; the certified margin is the most lenient
one certified before that; none certified means recoveries are never accepted (margin ``inf``). With exchangeable
patients the probability that the certified margin is one where accepting breaks at least as much as it fixes is at
most ``delta_test``. A margin at which fewer than ``ceil(log2(1 / delta_test))`` held-out predictions *change* (a
label-free count) cannot be certified by any outcome; it is skipped (neither certified nor stopping the sequence).

**Refer threshold** (:func:`refer_threshold`). A patient is not referred when the softmax probability of DyMo's final
prediction is ``>= t``. Thresholds of a fixed grid are tested from high to low: ``H0(t)``: the error among patients
not referred exceeds ``alpha``; exact binomial tail ``p = P(Bin(n_t, alpha) <= errors_t)`` (the Clopper-Pearson upper
bound of the error is ``<= alpha`` at level ``delta`` exactly when ``p <= delta``); stop at the first threshold not
certified; the lowest certified threshold is used (largest coverage); none certified: everybody is referred. A
threshold with fewer patients above it than :func:`start_sample_size` (the smallest count at which a held-out error of
``alpha / 2`` would be certified, and at least ``10 / alpha``; on a small split at most half of its patients, but
never fewer than can reject at all; label-free) is skipped, so that the sequence neither starts nor stops among a
handful of very confident patients. When the margin itself was chosen on the same held-out patients (``margin:
certified``) the refer test runs at ``delta / K`` (``K`` margins that the certification could have returned: a union
bound), so the refer guarantee holds whichever margin was chosen.

**Validity.** Each test is exact conditional on its count (``n`` discordant patients, ``n_t`` patients not referred):
with independent exchangeable patients, fixes given ``n`` are binomial with ``P(fix) <= 1/2`` under ``H0`` and errors
given ``n_t`` are binomial with rate ``> alpha`` under ``H0``. Which hypotheses are skipped depends on label-free
counts only (predictions, confidences), never on labels. The fixed-sequence order is fixed before seeing data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_MARGINS",
    "DEFAULT_REFER_THRESHOLDS",
    "binomial_sf",
    "binomial_cdf",
    "fixes_breaks_pvalue",
    "risk_pvalue",
    "min_sample_size",
    "start_sample_size",
    "clopper_pearson_upper",
    "certify_margin",
    "refer_threshold",
    "outcomes_at_margin",
    "collect_outcomes",
    "certify",
    "resolve_margin",
    "refer_for_margin",
    "refer_decisions",
    "holdout_indices",
    "holdout_part",
    "margin_label",
    "certify_calibration",
    "certification_summary",
]

#: margins tested from strict to lenient (rewards are at most 1, so 1.0 never accepts anything)
DEFAULT_MARGINS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01, 0.0)
#: confidence thresholds tested from high to low (fixed before seeing any data)
DEFAULT_REFER_THRESHOLDS: tuple[float, ...] = tuple(
    sorted({round(1.0 - 10.0 ** (-e / 10), 8) for e in range(10, 61)} | {round(x / 100, 2) for x in range(0, 91)},
           reverse=True)
)


# ---------------------------------------------------------------------------------------------------- binomial tails
def binomial_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Bin(n, p)``, exact (``math.comb`` sums; ``p = 1/2`` in integer arithmetic)."""
    k, n = int(k), int(n)
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5:
        return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n) if n <= 20000 else _sf_log(k, n, p)
    return _sf_log(k, n, p)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Bin(n, p)``, exact up to float rounding."""
    k, n = int(k), int(n)
    if p == 0.5 and 0 <= k < n:
        return float(sum(math.comb(n, i) for i in range(0, k + 1)) / 2**n)
    return _cdf_log(k, n, p)


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


def start_sample_size(delta: float, alpha: float) -> int:
    """Fewest patients above a threshold for the refer test to be run there: the smallest ``n`` at which a held-out
    error of ``alpha / 2`` would be certified, ``P(Bin(n, alpha) <= floor(n alpha / 2)) <= delta`` (label-free, so
    that the sequence does not start, and stop, at thresholds with a handful of patients), and at least ``10 / alpha``
    (about ten errors expected at the bound)."""
    n = max(min_sample_size(delta, alpha), math.ceil(10 / alpha))
    while risk_pvalue(int(math.floor(n * alpha / 2)), n, alpha) > delta:
        n += max(1, n // 50)
    return n


# ---------------------------------------------------------------------------------------------------- LTT procedures
def _as_bool(x: Any) -> np.ndarray:
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).astype(bool)


def certify_margin(
    correct_discard: Any,
    correct_at_margin: Any,
    margins: Sequence[float],
    delta: float = 0.1,
    changed_at_margin: Any | None = None,
) -> dict[str, Any]:
    """Fixed-sequence (Learn-then-Test) certification of the reward margin.

    Args:
        correct_discard: bool ``[N]``, prediction correct when the missing modalities are discarded.
        correct_at_margin: bool ``[K, N]``, DyMo's prediction correct at ``margins[k]``.
        margins: ``K`` margins, strictly decreasing (strict -> lenient).
        delta: level of each test (and of the whole procedure).
        changed_at_margin: bool ``[K, N]``, DyMo's prediction differs from discarding's (label-free; used to skip
            margins without power). Default: the discordant patients (then only margins with none are skipped).

    Returns:
        ``{"margin": most lenient certified margin or inf, "delta", "test", "tests": [{"margin", "fixed", "broken",
        "n", "changed", "p_value", "status"}]}`` with status ``certified`` / ``not certified`` / ``skipped`` /
        ``not tested`` (after the stop).
    """
    margins = [float(m) for m in margins]
    if any(b >= a for a, b in zip(margins, margins[1:])):
        raise ValueError(f"margins must be strictly decreasing (strict -> lenient), got {margins}.")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    base = _as_bool(correct_discard)
    dymo = _as_bool(correct_at_margin).reshape(len(margins), -1)
    if dymo.shape[1] != base.shape[0]:
        raise ValueError(f"correct_at_margin has {dymo.shape[1]} patients, correct_discard {base.shape[0]}.")
    changed = dymo != base[None] if changed_at_margin is None else _as_bool(changed_at_margin).reshape(dymo.shape)
    need = min_sample_size(delta, 0.5)
    tests, chosen, stopped = [], math.inf, False
    for k, m in enumerate(margins):
        fixed = int((dymo[k] & ~base).sum())
        broken = int((~dymo[k] & base).sum())
        n_changed = int(changed[k].sum())
        p = fixes_breaks_pvalue(fixed, broken)
        if stopped:
            status = "not tested"
        elif n_changed < need:
            status = "skipped"
        elif p <= delta:
            status, chosen = "certified", m
        else:
            status, stopped = "not certified", True
        tests.append({"margin": m, "fixed": fixed, "broken": broken, "n": fixed + broken, "changed": n_changed,
                      "p_value": p, "status": status})
    return {
        "margin": chosen,
        "delta": float(delta),
        "test": "fixed-sequence over margins (strict -> lenient), exact one-sided binomial sign test of "
        "H0: broken >= fixed among discordant held-out patients; reject when p <= delta",
        "min_changed": need,
        "tests": tests,
    }


def refer_threshold(
    confidence: Any,
    correct: Any,
    alpha: float = 0.1,
    delta: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
) -> dict[str, Any]:
    """Lowest confidence threshold with error among patients not referred ``<= alpha`` certified at level ``delta``.

    Fixed-sequence over ``thresholds`` (strictly decreasing); see the module docstring. Returns ``{"threshold" (inf when
    none is certified: everybody referred), "alpha", "delta", "coverage" (held-out fraction not referred),
    "error_not_referred" (held-out), "upper_bound" (Clopper-Pearson upper bound at level delta of the chosen
    threshold's error), "n"}``.
    """
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"refer alpha and delta must be in (0, 1), got {alpha}, {delta}.")
    thresholds = [float(t) for t in thresholds]
    if any(b >= a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError("thresholds must be strictly decreasing (high -> low).")
    conf = np.asarray(confidence.cpu() if isinstance(confidence, torch.Tensor) else confidence, dtype=float)
    ok = _as_bool(correct)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} differ in shape.")
    # start where the test has power, but on a small held-out split no later than at half of it
    need = min(start_sample_size(delta, alpha), max(min_sample_size(delta, alpha), math.ceil(conf.size / 2)))
    chosen, tested = math.inf, 0
    for t in thresholds:
        keep = conf >= t
        n = int(keep.sum())
        if n < need:
            continue
        tested += 1
        if risk_pvalue(int((~ok[keep]).sum()), n, alpha) <= delta:
            chosen = t
        else:
            break
    keep = conf >= chosen
    n_keep = int(keep.sum())
    err = int((~ok[keep]).sum())
    return {
        "threshold": chosen,
        "alpha": float(alpha),
        "delta": float(delta),
        "coverage": n_keep / max(1, conf.size),
        "error_not_referred": err / n_keep if n_keep else None,
        "upper_bound": clopper_pearson_upper(err, n_keep, delta) if n_keep else None,
        "n": int(conf.size),
        "thresholds_tested": tested,
    }


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


# ---------------------------------------------------------------------------------------------------- outcomes
def outcomes_at_margin(outcomes: Mapping[str, Any], margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prediction[N], probability[N], accepted[N])`` of DyMo at ``margin`` from the stored held-out outcomes:
    patient ``b`` keeps the leading accepted recoveries whose reward is ``> margin``."""
    rewards = np.asarray(outcomes["accepted_rewards"], dtype=float)  # [N, M], NaN padded
    pred = np.asarray(outcomes["prefix_prediction"])  # [N, M + 1]
    prob = np.asarray(outcomes["prefix_probability"], dtype=float)
    above = np.nan_to_num(rewards, nan=-np.inf) > margin
    k = np.cumprod(above, axis=1).sum(axis=1) if above.shape[1] else np.zeros(above.shape[0], dtype=int)
    rows = np.arange(pred.shape[0])
    return pred[rows, k], prob[rows, k], k


def _hide(images: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        m: torch.where(present[:, i].reshape(-1, *([1] * (x.ndim - 1))), x, torch.zeros_like(x))
        for i, (m, x) in enumerate(images.items())
    }


@torch.no_grad()
def collect_outcomes(
    network: Any,
    calibration: Any,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
    present_key: str = "present",
    label_key: str = "label",
    progress: bool = True,
    drop_observed: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out outcome vectors for :func:`certify`: one margin-0 selection per patient and the prediction of every
    prefix of its path.

    ``network``: any object with ``encode`` / ``fuse`` / ``modalities``; ``loader``: batches with one tensor per
    modality, ``present`` ``[B, M]`` and ``label``. Missing modalities are zeroed before the recovery. Patients with
    nothing observed are left out. ``drop_observed > 0`` additionally hides each observed modality with that
    probability (seeded by ``seed``; at least one observed modality is kept), to get more patients with something to
    recover on a cohort whose natural missingness is rare. Returns numpy arrays ``label [N]``,
    ``prefix_prediction [N, M + 1]`` (-1 padded),
    ``prefix_probability [N, M + 1]`` (NaN padded), ``accepted_rewards [N, M]`` (NaN padded), ``missing [N]``.
    """
    from tqdm.auto import tqdm

    from .presence import align_present
    from .selection import select_modalities

    modalities = tuple(str(m) for m in network.modalities)
    M = len(modalities)
    if device is None:
        params = list(network.parameters()) if hasattr(network, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
    cal = calibration.to(device)
    labels, preds, probs, rewards, missing = [], [], [], [], []
    gen = torch.Generator().manual_seed(int(seed))
    for batch in tqdm(loader, desc="held-out outcomes", disable=not progress, leave=False):
        x = {m: torch.as_tensor(batch[m]).to(device) for m in modalities}
        present = align_present(batch[present_key], modalities, "collect_outcomes").to(device).bool()
        y = torch.as_tensor(batch[label_key]).reshape(-1).long().to(device)
        valid = present.any(1)
        if not bool(valid.all()):
            idx = valid.nonzero().squeeze(1)
            x, present, y = {m: t.index_select(0, idx) for m, t in x.items()}, present[idx], y[idx]
        if present.shape[0] == 0:
            continue
        if drop_observed > 0:
            u = torch.rand(present.shape, generator=gen).to(device)
            dropped = present & (u < float(drop_observed))
            keep_one = ~(present & ~dropped).any(1)
            if bool(keep_one.any()):  # keep the observed modality with the largest u
                best = torch.where(present, u, torch.full_like(u, -1.0)).argmax(1)
                dropped[keep_one, best[keep_one]] = False
            present = present & ~dropped
        hidden = _hide(x, present)
        rec = dict(recovery(hidden, present)) if recovery is not None and not bool(present.all()) else hidden
        tokens = network.encode(rec)
        res = select_modalities(network.fuse, tokens, present, cal, temperature=temperature, modalities=modalities)
        B = present.shape[0]
        steps = res.steps
        # subset of prefix k: observed + recoveries accepted at steps < k
        acc_step = torch.where(res.accepted, res.accept_step, torch.full_like(res.accept_step, M + 1))
        rows_b, rows_k = [], []
        for k in range(int(steps.max()) + 1 if B else 0):
            b = (steps >= k).nonzero().squeeze(1)
            rows_b.append(b)
            rows_k.append(torch.full_like(b, k))
        rb, rk = torch.cat(rows_b), torch.cat(rows_k)
        subset = present[rb] | (acc_step[rb] < rk[:, None])
        logits, _ = network.fuse({m: t.index_select(0, rb) for m, t in tokens.items()}, subset)
        p = torch.softmax(logits.float(), -1)
        pmax, pred = p.max(-1)
        pred_t = torch.full((B, M + 1), -1, dtype=torch.long, device=device)
        prob_t = torch.full((B, M + 1), float("nan"), dtype=torch.float64, device=device)
        pred_t[rb, rk] = pred
        prob_t[rb, rk] = pmax.double()
        rew = torch.full((B, M), float("nan"), dtype=torch.float64, device=device)
        if res.rewards.shape[0]:
            bb, mm = res.accepted.nonzero(as_tuple=True)
            tt = res.accept_step[bb, mm]
            rew[bb, tt] = res.rewards[tt, bb, mm]
        labels.append(y.cpu())
        preds.append(pred_t.cpu())
        probs.append(prob_t.cpu())
        rewards.append(rew.cpu())
        missing.append((~present).sum(1).cpu())
    if not labels:
        raise ValueError("the held-out loader gave no patient with an observed modality.")
    return {
        "label": torch.cat(labels).numpy(),
        "prefix_prediction": torch.cat(preds).numpy(),
        "prefix_probability": torch.cat(probs).numpy(),
        "accepted_rewards": torch.cat(rewards).numpy(),
        "missing": torch.cat(missing).numpy(),
    }


def holdout_indices(num_samples: int, fraction: float | None, seed: int = 0) -> np.ndarray:
    """Indices of the held-out part of a split: all when ``fraction`` is None / 1, else a seeded random
    ``round(fraction * N)`` of them (sorted)."""
    if fraction is None or float(fraction) >= 1.0:
        return np.arange(num_samples)
    if not 0 < float(fraction) < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1], got {fraction}.")
    n = max(1, int(round(float(fraction) * num_samples)))
    return np.sort(np.random.default_rng(seed).permutation(num_samples)[:n])


def holdout_part(dataset: Any, fraction: float | None, seed: int = 1000, part: str = "holdout") -> Any:
    """``part="holdout"``: the patients of ``dataset`` kept for certification (:func:`holdout_indices`); ``"rest"``:
    the others, e.g. for choosing the best checkpoint, so that certification runs on patients that chose nothing.
    With ``fraction`` None (or 1) both are the whole dataset (returned as is)."""
    if fraction is None or float(fraction) >= 1.0:
        return dataset
    if part not in ("holdout", "rest"):
        raise ValueError(f"part must be 'holdout' or 'rest', got {part!r}.")
    keep = holdout_indices(len(dataset), fraction, seed)
    if part == "rest":
        keep = np.setdiff1d(np.arange(len(dataset)), keep)
    return torch.utils.data.Subset(dataset, keep.tolist())


def certify(
    outcomes: Mapping[str, Any],
    margins: Sequence[float] = DEFAULT_MARGINS,
    delta: float = 0.1,
    source: str = "",
) -> dict[str, Any]:
    """Certify the margin on held-out ``outcomes`` (:func:`collect_outcomes`); returns the certification record saved
    with the calibration (:meth:`~monai_dymo.calibration.SubsetCalibration.certification`): the margin result of
    :func:`certify_margin` plus ``outcomes`` (label and prefix predictions: no identifiers, no images), ``margins``,
    ``source`` (how the held-out patients were drawn) and ``num_patients``."""
    y = np.asarray(outcomes["label"])
    pred0 = np.asarray(outcomes["prefix_prediction"])[:, 0]
    at = [outcomes_at_margin(outcomes, m)[0] for m in margins]
    result = certify_margin(pred0 == y, np.stack([p == y for p in at]), margins, delta,
                            changed_at_margin=np.stack([p != pred0 for p in at]))
    return {
        **result,
        "margins": [float(m) for m in margins],
        "source": str(source),
        "num_patients": int(y.shape[0]),
        "outcomes": {k: torch.as_tensor(np.asarray(v)) for k, v in outcomes.items()},
    }


# ---------------------------------------------------------------------------------------------------- at inference
def margin_label(margin: float) -> str:
    return "inf (recoveries never accepted)" if math.isinf(margin) else format(margin, "g")


def resolve_margin(margin: float | str, certification: Mapping[str, Any] | None) -> tuple[float, str]:
    """``(margin in force, margin_source)`` for the ``margin`` setting: ``"certified"`` (the calibration file's
    certified margin; inf when none was certified), ``0`` (the method page's rule) or a fixed number."""
    if isinstance(margin, str):
        key = margin.strip().lower()
        if key != "certified":
            try:
                margin = float(key)
            except ValueError:
                raise ValueError(f"margin must be 'certified' or a number >= 0, got {margin!r}.") from None
        else:
            if certification is None:
                raise ValueError(
                    "margin 'certified' needs a calibration file with a held-out certification (run the bundle's "
                    "calibrate or certify config), or set the margin to 0 (the method page's rule) or a number."
                )
            m = float(certification["margin"])
            return m, "certified"
    margin = float(margin)
    if math.isnan(margin) or margin < 0:
        raise ValueError(f"margin must be 'certified' or a number >= 0, got {margin}.")
    return margin, ("method rule" if margin == 0 else "fixed")


def refer_for_margin(
    certification: Mapping[str, Any] | None,
    margin: float,
    margin_source: str,
    alpha: float = 0.1,
    delta: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
) -> dict[str, Any] | None:
    """The refer rule for DyMo at ``margin`` from the held-out outcomes of ``certification`` (None without one).

    With ``margin_source == "certified"`` the test level is ``delta / (K + 1)`` (``K`` margins tested, plus inf)."""
    if certification is None or "outcomes" not in certification:
        return None
    outcomes = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                for k, v in certification["outcomes"].items()}
    pred, prob, _ = outcomes_at_margin(outcomes, margin)
    level = float(delta)
    if margin_source == "certified":
        level = level / (len(certification.get("margins", DEFAULT_MARGINS)) + 1)
    out = refer_threshold(prob, pred == np.asarray(outcomes["label"]), alpha, level, thresholds)
    out["delta"] = float(delta)
    out["test_level"] = level
    out["holdout_coverage"] = out.pop("coverage")
    out["holdout_error_not_referred"] = out.pop("error_not_referred")
    out["holdout_patients"] = out.pop("n")
    return out


def refer_decisions(
    probability: Sequence[float | None], rule: Mapping[str, Any] | None
) -> list[tuple[bool | None, str]]:
    """Per patient ``(refer, refer_reason)`` for the final softmax probabilities under ``rule``
    (:func:`refer_for_margin`); ``(None, why)`` when there is no rule."""
    if rule is None:
        return [(None, "no refer rule: the calibration file has no held-out certification")] * len(probability)
    t, a, d = float(rule["threshold"]), rule["alpha"], rule["delta"]
    guarantee = f"error among patients not referred <= {a:g} with probability >= {1 - d:g} on held-out data"
    out = []
    for p in probability:
        if p is None or not math.isfinite(float(p)):
            out.append((True, "not processed"))
        elif math.isinf(t):
            out.append((True, f"no confidence threshold certified ({guarantee} could not be shown): all referred"))
        elif float(p) >= t:
            out.append((False, f"confidence {float(p):.4f} >= threshold {t:.4g} ({guarantee})"))
        else:
            out.append((True, f"confidence {float(p):.4f} < threshold {t:.4g} ({guarantee} above it)"))
    return out


def certify_calibration(
    calibration: Any,
    network: Any,
    loader: Iterable[Mapping[str, Any]],
    *,
    margins: Sequence[float] = DEFAULT_MARGINS,
    delta: float = 0.1,
    source: str = "",
    **kwargs: Any,
) -> Any:
    """Collect the held-out outcomes of ``network`` on ``loader`` (:func:`collect_outcomes`, ``kwargs`` passed on),
    certify the margin (:func:`certify`) and attach the result to ``calibration`` (saved with it); returns it."""
    outcomes = collect_outcomes(network, calibration, loader, **kwargs)
    calibration.certification = certify(outcomes, margins, delta, source)
    return calibration


def certification_summary(certification: Mapping[str, Any] | None) -> str:
    """Human-readable lines: the certified margin and every margin's counts and p-value."""
    if certification is None:
        return "no held-out certification"
    lines = [
        f"held-out certification on {certification.get('num_patients')} patients ({certification.get('source')}), "
        f"delta {certification['delta']:g}: certified margin {margin_label(float(certification['margin']))}",
        "  margin  fixed  broken  changed  p-value   status",
    ]
    for t in certification["tests"]:
        lines.append(f"  {t['margin']:<6g}  {t['fixed']:>5}  {t['broken']:>6}  {t['changed']:>7}  "
                     f"{t['p_value']:<8.3g}  {t['status']}")
    return "\n".join(lines)
