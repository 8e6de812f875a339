"""Inference-time rules from a held-out certification: the margin in force and where it came from, the refer rule at
that margin, and each patient's refer decision with the guarantee behind it.

**Margin provenance.** A margin chosen with the held-out patients (``margin: certified``, or a number typed after
seeing the certification, which tested its margins on those patients) makes the refer rule's data depend on that
choice. A margin that equals one of the certification's tested margins (or inf) is therefore treated as chosen on the
held-out patients unless declared ``margin_source="independent"`` (fixed without looking at them). The refer rule
then runs at a share of ``delta`` (``pac``) or ``alpha`` (``expected``) fixed before the data
(:func:`margin_share`): half for inf (recoveries never accepted, what a small held-out split certifies) and the other
half split evenly over the ``K`` tested margins, so that it holds whichever of them was chosen (union bound; for the
expectation, the loss at the chosen margin is at most the sum over the candidates, each controlled at its share). A
margin outside that set could not have been picked from the certification's table.

**Guarantees** (held-out and new patients exchangeable; "population" = the patients the held-out split was drawn
from, not those of any run): see :mod:`.statistics`. With ``per_class="auto"`` the pooled or per-class rule is picked
from the training split's class counts stored with the certification (per class when a class has under
``min(20 %, 0.8 / C)`` of them): no held-out label is read, so it costs no level. Without those counts it is picked
from the held-out labels; that choice looks at the data, so each candidate then runs at half the level and the stated
guarantee (per class or pooled, ``pac``; pooled joint rate, ``expected``) still holds at the full level. With ``guarantee="auto"`` the guarantee is picked from the number of
held-out patients only (``pac`` from :data:`AUTO_PAC_PATIENTS` on, else ``expected``), fixed before any label is read:
it costs no level. When the margin in force is certified, the margin's and the refer rule's ``pac`` guarantees hold
together with probability ``>= 1 - (certify_delta + refer_delta)``.

**Calibrated probabilities.** The rule thresholds the top-class ``softmax(logits / probability_temperature)``: learned
on the held-out outcomes' ``prefix_logits`` at that temperature (outcomes without them, from older files, give their
stored ``prefix_probability``), and the rule records the temperature so that it is applied at the same one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from monai_dymo.errors import DyMoInputError

from .outcomes import outcomes_at_margin
from .statistics import (
    DEFAULT_MARGINS,
    DEFAULT_REFER_THRESHOLDS,
    refer_threshold,
    refer_threshold_per_class,
    risk_control_threshold,
    risk_control_threshold_per_class,
)

__all__ = [
    "GUARANTEES",
    "GUARANTEE_SETTINGS",
    "AUTO_CLASS_FRACTION",
    "AUTO_PAC_PATIENTS",
    "margin_label",
    "resolve_margin",
    "margin_on_holdout",
    "margin_share",
    "rare_class",
    "refer_for_margin",
    "rule_threshold",
    "refer_decisions",
    "certification_summary",
]

#: ``pac``: with probability >= 1 - delta, population error among patients not referred <= alpha; ``expected``:
#: E[population rate of wrong and not referred] <= alpha
GUARANTEES: tuple[str, ...] = ("pac", "expected")
#: the ``guarantee`` settings of :func:`refer_for_margin`: one of :data:`GUARANTEES`, or ``"auto"``
GUARANTEE_SETTINGS: tuple[str, ...] = (*GUARANTEES, "auto")
#: ``per_class="auto"`` refers per predicted class when some class has under ``min(this, 0.8 / C)`` of the patients
AUTO_CLASS_FRACTION = 0.2
#: ``guarantee="auto"`` gives ``pac`` from this many held-out patients on, ``expected`` below (a rule on the count only)
AUTO_PAC_PATIENTS = 200


def margin_label(margin: float) -> str:
    return "inf (recoveries never accepted)" if math.isinf(margin) else format(margin, "g")


def resolve_margin(
    margin: float | str, certification: Mapping[str, Any] | None, margin_source: str | None = None
) -> tuple[float, str]:
    """``(margin in force, margin_source)`` for the ``margin`` setting: ``"certified"`` (the calibration file's
    certified margin; inf when none was certified), ``0`` (``"method rule"``, docs/method.md's) or a number
    (``"fixed"``). ``margin_source="independent"`` declares a number fixed without looking at the held-out patients
    (source ``"independent"``); see :func:`margin_on_holdout` for what the source changes."""
    if margin_source not in (None, "independent"):
        raise DyMoInputError(f"margin_source must be None or 'independent', got {margin_source!r}.")
    if isinstance(margin, str):
        key = margin.strip().lower()
        if key == "certified":
            if margin_source == "independent":
                raise DyMoInputError("the certified margin is chosen on the held-out patients; it cannot be "
                                     "'independent'.")
            if certification is None:
                raise DyMoInputError(
                    "margin 'certified' needs a calibration file with a held-out certification (run the bundle's "
                    "calibrate or certify config), or set the margin to 0 (docs/method.md's rule) or a number."
                )
            return float(certification["margin"]), "certified"
        try:
            margin = float(key)
        except ValueError:
            raise DyMoInputError(f"margin must be 'certified' or a number >= 0, got {margin!r}.") from None
    margin = float(margin)
    if math.isnan(margin) or margin < 0:
        raise DyMoInputError(f"margin must be 'certified' or a number >= 0, got {margin}.")
    if margin_source == "independent":
        return margin, "independent"
    return margin, ("method rule" if margin == 0 else "fixed")


def _tested_margins(certification: Mapping[str, Any]) -> list[float]:
    margins = certification.get("margins") or [t["margin"] for t in certification.get("tests", [])] or DEFAULT_MARGINS
    return [float(m) for m in margins]


def margin_share(certification: Mapping[str, Any], margin: float) -> float:
    """The share of the refer rule's level spent on ``margin`` when it may have been chosen on the held-out patients,
    fixed before the data: 1/2 for inf, ``1 / (2 K)`` for each of the ``K`` tested finite margins (the shares of every
    candidate sum to 1)."""
    finite = [m for m in _tested_margins(certification) if not math.isinf(m)]
    return 0.5 if math.isinf(margin) or not finite else 0.5 / len(finite)


def rare_class(counts: Sequence[int]) -> bool:
    """Whether some class has under ``min(AUTO_CLASS_FRACTION, 0.8 / C)`` of the patients counted in ``counts``."""
    counts = np.asarray(counts, dtype=float)
    limit = min(AUTO_CLASS_FRACTION, 0.8 / max(1, counts.size))
    return bool((counts < limit * max(1.0, counts.sum())).any())


def margin_on_holdout(certification: Mapping[str, Any] | None, margin: float, margin_source: str) -> bool:
    """True when the margin may have been chosen with the certification's held-out patients: ``certified``, or any
    source but ``independent`` whose value equals a tested margin or inf."""
    if certification is None or margin_source == "independent":
        return False
    if margin_source == "certified":
        return True
    return math.isinf(margin) or any(math.isclose(margin, m, rel_tol=0, abs_tol=1e-12)
                                     for m in _tested_margins(certification))


def _margin_certified(certification: Mapping[str, Any], margin: float) -> bool:
    return any(t.get("status") == "certified" and math.isclose(float(t["margin"]), margin, rel_tol=0, abs_tol=1e-12)
               for t in certification.get("tests", []))


def _num_classes(certification: Mapping[str, Any], outcomes: Mapping[str, np.ndarray], num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    if certification.get("num_classes") is not None:
        return int(certification["num_classes"])
    pred = outcomes["prefix_prediction"]
    return int(max(np.max(outcomes["label"]), np.max(pred[pred >= 0]))) + 1


def _statement(guarantee: str, per_class: bool, alpha: float, delta: float) -> str:
    """The guarantee in words; ``{c}`` is filled with the patient's predicted class."""
    who = "patients predicted {c} not referred" if per_class else "patients not referred"
    if guarantee == "pac":
        every = ", every class at once" if per_class else ""
        return (f"w.p. >= {1 - delta:g} over the held-out draw{every}: population (not this run's) error among "
                f"{who} <= {alpha:g}")
    among = " among patients predicted {c}" if per_class else ""
    return (f"in expectation over held-out draws: population (not this run's) rate of wrong-and-not-referred{among} "
            f"<= {alpha:g}")


def refer_for_margin(
    certification: Mapping[str, Any] | None,
    margin: float,
    margin_source: str,
    alpha: float = 0.1,
    delta: float = 0.1,
    thresholds: Sequence[float] = DEFAULT_REFER_THRESHOLDS,
    *,
    per_class: bool | Literal["auto"] = False,
    guarantee: Literal["pac", "expected", "auto"] = "pac",
    num_classes: int | None = None,
    procedure: str = "fixed_sequence",
    start: float | None = None,
    probability_temperature: float = 1.0,
) -> dict[str, Any] | None:
    """The refer rule for DyMo at ``margin`` from the held-out outcomes of ``certification`` (None without one).

    Args:
        margin, margin_source: from :func:`resolve_margin`.
        alpha, delta: target error (``pac``: error among patients not referred; ``expected``: joint rate of wrong and
            not referred) and failure probability (``pac`` only).
        per_class: one threshold per predicted class (True), one for all (False), or ``"auto"``: per class when a
            class has under ``min(AUTO_CLASS_FRACTION, 0.8 / C)`` of the certification's ``training_class_counts``
            (else of the held-out labels, each candidate then at half the level).
        guarantee: ``"pac"`` or ``"expected"`` (:mod:`.statistics`), or ``"auto"``: ``pac`` when the held-out
            patients number at least :data:`AUTO_PAC_PATIENTS`, else ``expected`` (the count only, no label read).
        num_classes: the classifier's classes (default: the certification's, else the largest class seen + 1).
        procedure, start: of :func:`~.statistics.refer_threshold` (``pac``).
        probability_temperature: the rule thresholds ``softmax(logits / probability_temperature)`` (the
            calibration's); learned on the held-out ``prefix_logits`` at that temperature.

    Returns:
        ``{"threshold"`` (None when per class), ``"thresholds"`` (per class: ``{c: t}``), ``"alpha", "delta",
        "guarantee", "guarantee_setting", "guarantee_reason"`` (why that guarantee), ``"per_class", "test_level"``
        (``pac``: level of each class's / the pooled sequence), ``"probability_temperature"``,
        ``"risk_level"`` (``expected``: the alpha used), ``"margin", "margin_source", "margin_on_holdout",
        "margin_certified", "certify_delta"`` (the margin certificate's delta when the margin in force is certified,
        else None), ``"statement"`` (the guarantee in words), ``"holdout_coverage", "holdout_error_not_referred",
        "holdout_patients"}`` and the procedure's own fields.
    """
    if certification is None or "outcomes" not in certification:
        return None
    if guarantee not in GUARANTEE_SETTINGS:
        raise DyMoInputError(f"the refer guarantee must be one of {GUARANTEE_SETTINGS}, got {guarantee!r}.")
    if not probability_temperature > 0:
        raise ValueError(f"probability_temperature must be > 0, got {probability_temperature}.")
    if per_class not in (True, False, "auto"):
        raise DyMoInputError(f"the refer per_class setting must be True, False or 'auto', got {per_class!r}.")
    outcomes = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                for k, v in certification["outcomes"].items()}
    pred, prob, _ = outcomes_at_margin(outcomes, margin, probability_temperature)
    labels = np.asarray(outcomes["label"]).reshape(-1)
    guarantee_setting = guarantee
    if guarantee == "auto":  # the count of held-out patients only: decided before any label is read
        guarantee = "pac" if labels.size >= AUTO_PAC_PATIENTS else "expected"
        guarantee_reason = (f"guarantee auto: {labels.size} held-out patients "
                            + (f">= {AUTO_PAC_PATIENTS}, so pac" if guarantee == "pac"
                               else f"< {AUTO_PAC_PATIENTS}, so in expectation"))
    else:
        guarantee_reason = f"guarantee {guarantee} (set)"
    correct = pred == labels
    C = _num_classes(certification, outcomes, num_classes)
    on_holdout = margin_on_holdout(certification, margin, margin_source)
    level_share = margin_share(certification, margin) if on_holdout else 1.0
    auto = per_class == "auto"
    training_counts = certification.get("training_class_counts")
    auto_on_holdout = auto and training_counts is None
    if auto:
        counts = training_counts if training_counts is not None else np.bincount(labels.astype(np.int64), minlength=C)[:C]
        per_class = rare_class(counts)
    # the auto choice from held-out labels looks at them: each candidate at half the level
    share = (1.0 / level_share) * (2 if auto_on_holdout else 1)
    if guarantee == "pac":
        kw = {"procedure": procedure, "start": start}
        if per_class:
            out = refer_threshold_per_class(prob, correct, pred, C, alpha, delta / share, thresholds, **kw)
            test_level = out.pop("level")
        else:
            out = refer_threshold(prob, correct, alpha, delta / share, thresholds, **kw)
            test_level = out["delta"]
        risk_level = None
    else:
        risk_level = float(alpha) / share
        out = (risk_control_threshold_per_class(prob, correct, pred, C, risk_level, thresholds) if per_class
               else risk_control_threshold(prob, correct, risk_level, thresholds))
        test_level = None
    certified_margin = on_holdout and _margin_certified(certification, margin)
    stated_per_class = per_class and not (auto_on_holdout and guarantee == "expected")
    statement = _statement(guarantee, stated_per_class, float(alpha), float(delta))
    if guarantee_setting == "auto":
        statement += f" ({guarantee_reason})"
    out.update({
        "threshold": None if per_class else out["threshold"],
        "alpha": float(alpha),
        "delta": float(delta),
        "guarantee": guarantee,
        "guarantee_setting": guarantee_setting,
        "guarantee_reason": guarantee_reason,
        "probability_temperature": float(probability_temperature),
        "per_class": bool(per_class),
        "per_class_setting": "auto" if auto else bool(per_class),
        "num_classes": C,
        "test_level": test_level,
        "risk_level": risk_level,
        "margin": float(margin),
        "margin_source": margin_source,
        "margin_on_holdout": on_holdout,
        "margin_certified": certified_margin,
        "certify_delta": float(certification["delta"]) if certified_margin else None,
        "statement": statement,
        "holdout_coverage": out.pop("coverage"),
        "holdout_patients": out.pop("n"),
    })
    if not per_class:
        out["holdout_error_not_referred"] = out.pop("error_not_referred")
    else:
        kept = [(r["coverage"] * r["n"], r.get("error_not_referred")) for r in out["classes"].values()]
        n_keep = sum(k for k, _ in kept)
        out["holdout_error_not_referred"] = (sum(k * e for k, e in kept if e is not None) / n_keep) if n_keep else None
    return out


def rule_threshold(rule: Mapping[str, Any], prediction: int | None = None) -> float:
    """The confidence threshold that applies to a patient with ``prediction`` (needed when the rule is per class;
    an unknown class gets inf: referred)."""
    if rule.get("per_class"):
        if prediction is None:
            raise ValueError("this refer rule has one threshold per predicted class: pass the predictions.")
        return float(rule["thresholds"].get(int(prediction), math.inf))
    return float(rule["threshold"])


def _joint(rule: Mapping[str, Any]) -> str:
    cd = rule.get("certify_delta")
    if cd is None:
        return " (assuming exchangeable held-out and new patients)"
    if rule.get("guarantee", "pac") == "pac":
        return (f"; with the certified margin, both w.p. >= {1 - cd - float(rule['delta']):g} "
                "(assuming exchangeable held-out and new patients)")
    return f"; certified margin w.p. >= {1 - cd:g} (assuming exchangeable held-out and new patients)"


def refer_decisions(
    probability: Sequence[float | None], rule: Mapping[str, Any] | None, prediction: Sequence[int | None] | None = None
) -> list[tuple[bool | None, str]]:
    """Per patient ``(refer, refer_reason)`` for the final softmax probabilities (and predicted classes, needed for a
    per-class rule) under ``rule`` (:func:`refer_for_margin`); ``(None, why)`` when there is no rule."""
    if rule is None:
        return [(None, "no refer rule: the calibration file has no held-out certification")] * len(probability)
    per_class = bool(rule.get("per_class"))
    if per_class and prediction is None:
        raise ValueError("this refer rule has one threshold per predicted class: pass the predictions.")
    statement = rule.get("statement") or _statement(rule.get("guarantee", "pac"), per_class, float(rule["alpha"]),
                                                    float(rule["delta"]))
    tail = _joint(rule)
    out: list[tuple[bool | None, str]] = []
    for i, p in enumerate(probability):
        c = None if prediction is None else prediction[i]
        if p is None or not math.isfinite(float(p)) or (per_class and c is None):
            out.append((True, "not processed"))
            continue
        t = rule_threshold(rule, c)
        who = f" for predicted {int(c)}" if per_class else ""
        said = statement.format(c=int(c)) if per_class else statement
        if math.isinf(t):
            out.append((True, f"referred: no confidence threshold certified{who} ({said} could not be shown){tail}"))
        elif float(p) >= t:
            out.append((False, f"not referred: confidence {float(p):.4f} >= threshold {t:.4g}{who}; {said}{tail}"))
        else:
            out.append((True, f"referred: confidence {float(p):.4f} < threshold {t:.4g}{who}; {said}{tail}"))
    return out


def certification_summary(certification: Mapping[str, Any] | None) -> str:
    """Human-readable lines: the certified margin, the procedure, every margin's counts, level and p-value, and the
    probability temperature's fit when there is one."""
    if certification is None:
        return "no held-out certification"
    procedure = certification.get("procedure", "fixed_sequence")
    lines = [
        f"held-out certification on {certification.get('num_patients')} patients ({certification.get('source')}), "
        f"{procedure}, family-wise delta {certification['delta']:g}: certified margin "
        f"{margin_label(float(certification['margin']))}",
        "  margin  fixed  broken  changed  level     p-value   status",
    ]
    for t in certification["tests"]:
        level = "-" if t.get("level") is None else format(t["level"], ".3g")
        p = "-" if t.get("p_value") is None else format(t["p_value"], ".3g")
        lines.append(f"  {t['margin']:<6g}  {t['fixed']:>5}  {t['broken']:>6}  {t.get('changed', ''):>7}  "
                     f"{level:<8}  {p:<8}  {t['status']}")
    fit = certification.get("probability_temperature")
    if fit:
        lines.append(
            f"probability temperature {fit['value']:.4g} (calibrated probabilities softmax(logits / T)), fitted at "
            f"margin {margin_label(float(fit['margin']))} on {fit['patients']} labelled patients: {fit['source']}"
            + ("; approximate: the same patients learn the refer threshold" if fit.get("approximate") else ""))
    return "\n".join(lines)
