"""The report's guarantees: the reward margin in force and why, and the refer flag.

Self-contained pieces used by :mod:`.tables` (CSV columns), :mod:`.writer` (the summary block and
``<prefix>_trust.json``) and :mod:`.html` (one section with the risk-coverage figure), so that the rest of the report
code does not need to know about them. Records carry ``margin`` / ``margin_source`` and, with a refer rule, ``refer`` /
``refer_reason`` / ``refer_threshold`` (the threshold that applied to the patient: its predicted class's under a
per-class rule) / ``refer_alpha`` / ``refer_delta`` / ``refer_guarantee`` / ``refer_per_class``, and
``probability_temperature`` (added by :meth:`monai_dymo.inferers.DyMoInferer.last_records`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from .figures import new_figure, save_figure
from .records import is_correct

__all__ = [
    "TRUST_COLUMNS",
    "trust_row",
    "trust_summary",
    "guarantee_text",
    "plot_risk_coverage",
    "trust_section_html",
    "patient_trust_html",
]

TRUST_COLUMNS: list[tuple[str, str, str]] = [
    ("margin", "text", "reward margin in force: a recovered modality was accepted only if its reward was above it "
     "('inf': recoveries never accepted)"),
    ("margin_source", "text", "why that margin: 'certified' (chosen on held-out data by fixed-sequence binomial "
     "tests, see the bundle docs), 'method rule' (0, docs/method.md §4.5), 'fixed' (set by the user)"),
    ("refer", "text", "yes: have this prediction checked by a person (its calibrated probability is below the "
     "threshold validated on held-out data); no: not referred; blank: no refer rule"),
    ("refer_threshold", "float", "the confidence threshold that applied to this patient: the rule's single threshold, "
     "or under a per-class rule the threshold of the class predicted for this patient; 'inf': none certified "
     "(referred); blank: no refer rule, or a per-class rule and no prediction"),
    ("refer_reason", "text", "why referred or not, with the threshold and the guarantee"),
]


def _margin_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return "inf" if math.isinf(float(v)) else format(float(v), "g")


def trust_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV cells of :data:`TRUST_COLUMNS` for one record."""
    refer = rec.get("refer")
    return {
        "margin": _margin_text(rec.get("margin")),
        "margin_source": rec.get("margin_source") or "",
        "refer": "" if refer is None else ("yes" if refer else "no"),
        "refer_threshold": _margin_text(rec.get("refer_threshold")),
        "refer_reason": rec.get("refer_reason") or "",
    }


def _threshold_value(t: Any) -> float | str | None:
    """A threshold for JSON: a float, ``"inf"`` (none certified), or None (no threshold)."""
    if t is None:
        return None
    return _margin_text(t) if math.isinf(float(t)) else float(t)


def trust_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``{"margin", "margin_source", "probability_temperature", "refer": {alpha, delta, guarantee, per_class,
    threshold (None under a per-class rule), thresholds ({predicted class: threshold} of the classes predicted in this
    run, per-class rule only), coverage, error_not_referred, labelled_not_referred, referred, not_referred,
    patients}}`` of this run (``error_not_referred`` only over patients with a label; None without labels); None when
    the records carry no margin."""
    first = next((r for r in records if r.get("margin_source") is not None), None)
    if first is None:
        return None
    out: dict[str, Any] = {"margin": _margin_text(first.get("margin")), "margin_source": first["margin_source"],
                           "probability_temperature": first.get("probability_temperature"), "refer": None}
    flagged = [r for r in records if r.get("refer") is not None]
    if flagged:
        kept = [r for r in flagged if not r["refer"]]
        judged = [is_correct(r) for r in kept]
        judged = [j for j in judged if j is not None]
        per_class = bool(first.get("refer_per_class"))
        thresholds = None
        if per_class:
            thresholds = {}
            for r in records:
                name = r.get("prediction_name") if r.get("prediction_name") is not None else r.get("prediction")
                if name is not None and r.get("refer_threshold") is not None:
                    thresholds.setdefault(str(name), _threshold_value(r["refer_threshold"]))
        out["refer"] = {
            "alpha": first.get("refer_alpha"),
            "delta": first.get("refer_delta"),
            "guarantee": first.get("refer_guarantee"),
            "per_class": per_class,
            "threshold": None if per_class else _threshold_value(first.get("refer_threshold")),
            "thresholds": thresholds,
            "coverage": len(kept) / len(records) if records else None,
            "error_not_referred": (1 - sum(judged) / len(judged)) if judged else None,
            "labelled_not_referred": len(judged),
            "referred": len(flagged) - len(kept),
            "not_referred": len(kept),
            "patients": len(records),
        }
    return out


def guarantee_text(refer: Mapping[str, Any]) -> str:
    """The refer rule's guarantee in words for the cohort page, from :func:`trust_summary`'s ``refer`` block."""
    alpha, delta = refer.get("alpha"), refer.get("delta")
    among = "patients predicted each class and not referred" if refer.get("per_class") else "patients not referred"
    if refer.get("guarantee") == "expected":
        where = " among patients predicted each class" if refer.get("per_class") else ""
        return (f"so that, in expectation over held-out draws, the population rate of wrong-and-not-referred{where} is "
                f"at most {alpha:g}")
    every = ", for every class at once" if refer.get("per_class") else ""
    return (f"so that the population error among {among} is at most {alpha:g} with probability at least "
            f"{1 - float(delta):g}{every}")


def _threshold_html(refer: Mapping[str, Any]) -> str:
    if not refer.get("per_class"):
        return f"<b>{escape(str(refer.get('threshold')))}</b>"
    items = ", ".join(f"{escape(str(c))}: {escape(_margin_text(t) if t is not None else '')}"
                      for c, t in (refer.get("thresholds") or {}).items())
    return f"the threshold of its predicted class ({items or 'no class predicted'})"


def _risk_coverage(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, coverage, error)`` over the labelled processed records, thresholds at every confidence."""
    pairs = [(float(r["probability"]), bool(is_correct(r))) for r in records
             if r.get("probability") is not None and is_correct(r) is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    conf = np.array([p for p, _ in pairs])
    wrong = np.array([not ok for _, ok in pairs], dtype=float)
    order = np.argsort(-conf, kind="stable")
    conf, wrong = conf[order], wrong[order]
    k = np.arange(1, conf.size + 1)
    return conf, k / conf.size, np.cumsum(wrong) / k


def plot_risk_coverage(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str | None:
    """Risk-coverage curve of this run (error among patients not referred against the fraction not referred, as the
    confidence threshold goes down) with the refer rule's point and ``alpha``; None without labelled records."""
    _, cov, err = _risk_coverage(records)
    if cov.size == 0:
        return None
    s = trust_summary(records) or {}
    refer = s.get("refer") or {}
    fig = new_figure(5.2, 3.6)
    ax = fig.add_subplot()
    ax.plot(100 * cov, 100 * err, color="#3b75af", linewidth=1.8, label="this run (labelled patients)")
    if refer.get("alpha") is not None:
        ax.axhline(100 * refer["alpha"], color="#a40e26", linestyle="--", linewidth=1,
                   label=f"alpha = {refer['alpha']:g}")
    if refer.get("coverage") is not None and refer.get("error_not_referred") is not None:
        ax.plot([100 * refer["coverage"]], [100 * refer["error_not_referred"]], "o", color="#d1495b", markersize=8,
                label=f"refer threshold {refer['threshold']:.4g}" if isinstance(refer["threshold"], float)
                else "refer rule (per predicted class)" if refer.get("per_class") else "refer threshold")
    ax.set_xlabel("coverage: patients not referred (%)")
    ax.set_ylabel("error among not referred (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def trust_section_html(records: Sequence[Mapping[str, Any]], files_dir: str, out_dir: str) -> str:
    """The cohort page's ``<section id="trust">``: margin in force and why, refer counts and guarantee, and the
    risk-coverage figure (written to ``files_dir/risk_coverage.png``); empty string when the records carry none."""
    s = trust_summary(records)
    if s is None:
        return ""
    parts = [f'<section id="trust"><h2>Guarantees</h2><p>Reward margin in force: <b>{escape(s["margin"])}</b> '
             f'({escape(str(s["margin_source"]))}).</p>']
    if s.get("probability_temperature") is not None:
        parts.append(f"<p>Probabilities are calibrated: softmax(logits / T), temperature T = "
                     f"{float(s['probability_temperature']):.4g} fitted on labelled held-out patients.</p>")
    refer = s.get("refer")
    if refer:
        err = refer["error_not_referred"]
        parts.append(
            f"<p>Refer flag: a prediction is referred when its calibrated probability is below "
            f"{_threshold_html(refer)}, learned on held-out data {escape(guarantee_text(refer))} (exchangeable "
            f"patients). This run: {refer['referred']} of {refer['patients']} referred, coverage "
            f"{100 * refer['coverage']:.1f} %"
            + (f", error among the {refer['labelled_not_referred']} labelled patients not referred {100 * err:.2f} %"
               if err is not None else "")
            + ".</p>"
        )
        png = plot_risk_coverage(records, os.path.join(files_dir, "risk_coverage.png"))
        if png:
            rel = os.path.relpath(png, out_dir).replace(os.sep, "/")
            parts.append(f'<figure><img src="{escape(rel)}" alt="risk-coverage curve"><figcaption class=muted>'
                         "Error among patients not referred against coverage, as the confidence threshold goes down; "
                         "dot: the refer rule of this run.</figcaption></figure>")
    parts.append("</section>")
    return "".join(parts)


def patient_trust_html(rec: Mapping[str, Any]) -> str:
    """A patient page's line: refer yes / no beside the calibrated probability and the threshold that applied, with
    its reason (stating the guarantee), and the margin in force (empty without them)."""
    parts = []
    if rec.get("refer") is not None:
        flag = "<b class=warn>yes</b>" if rec["refer"] else "no"
        p, t = rec.get("probability"), rec.get("refer_threshold")
        facts = []
        if p is not None:
            facts.append(f"calibrated probability {float(p):.4f}")
        if t is not None:
            facts.append(f"threshold {_margin_text(t) if math.isinf(float(t)) else format(float(t), '.4g')}"
                         + (" (its predicted class's)" if rec.get("refer_per_class") else ""))
        said = f" ({escape(', '.join(facts))})" if facts else ""
        parts.append(f"<p><b>Refer:</b> {flag}{said} &mdash; {escape(str(rec.get('refer_reason') or ''))}</p>")
    if rec.get("margin_source") is not None:
        parts.append(f"<p class=muted>Reward margin in force: {escape(_margin_text(rec.get('margin')))} "
                     f"({escape(str(rec['margin_source']))}).</p>")
    return "".join(parts)
