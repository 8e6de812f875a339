"""Summaries of the natural comparison: the clinicians' figures per method, calibration, the refer block, the one-line
summary and the files evaluate writes (``summary.json``, ``results.md``, ``per_patient.csv``, plots)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_dymo.evaluation.natural import NATURAL_METHODS, single_modality_accuracy



def _class_names(per_patient: pd.DataFrame, classes: Sequence[Any] | None) -> list[str]:
    """Class names by index: ``classes``, else ``"0".."C-1"`` with ``C`` from the ``prob_dymo_<k>`` columns (or the
    largest class seen + 1)."""
    if classes is not None:
        return [str(c) for c in classes]
    cols = [c for c in per_patient.columns if c.startswith("prob_dymo_") and c[len("prob_dymo_"):].isdigit()]
    C = len(cols) or int(max(per_patient["label"].max(),
                             *(per_patient[f"pred_{m}"].max() for m in NATURAL_METHODS))) + 1
    return [str(k) for k in range(C)]


def _threshold_value(t: Any) -> float | str | None:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return None
    return "inf" if math.isinf(float(t)) else float(t)


def _refer_summary(df: pd.DataFrame, correct_dymo: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """The ``refer`` block of :func:`summarise_natural` from the per-patient refer columns (and the rule in
    ``df.attrs["refer_rule"]`` when the frame came from :func:`compare_on_natural_missingness`)."""
    rule = df.attrs.get("refer_rule") or {}
    kept = ~df["refer"].astype(bool).to_numpy()
    per_class = bool(rule.get("per_class", df["refer_per_class"].iloc[0] if "refer_per_class" in df else False))
    thresholds = None
    if per_class:
        if rule.get("thresholds") is not None:
            thresholds = {names[int(c)] if 0 <= int(c) < len(names) else str(c): _threshold_value(t)
                          for c, t in rule["thresholds"].items()}
        else:  # the classes predicted in this run
            pred = df["pred_dymo"].to_numpy()
            thresholds = {names[int(c)]: _threshold_value(df.loc[pred == c, "refer_threshold"].iloc[0])
                          for c in sorted(set(pred[pred >= 0].tolist())) if 0 <= int(c) < len(names)}
    guarantee = rule.get("guarantee", df["refer_guarantee"].iloc[0] if "refer_guarantee" in df else None)
    statement = rule.get("statement")
    return {
        "guarantee": None if guarantee is None or pd.isna(guarantee) else str(guarantee),
        "per_class": per_class,
        "alpha": float(df["refer_alpha"].iloc[0]),
        "delta": float(df["refer_delta"].iloc[0]),
        "threshold": None if per_class else _threshold_value(df["refer_threshold"].iloc[0]),
        "thresholds": thresholds,
        "referred": int((~kept).sum()),
        "not_referred": int(kept.sum()),
        "coverage": round(float(kept.mean()), 4),
        "error_not_referred": round(float((~correct_dymo[kept]).mean()), 4) if kept.any() else None,
        "statement": None if statement is None else statement.replace("{c}", "c"),
    }


def summarise_natural(per_patient: pd.DataFrame, classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Accuracy (%) of every method on the same patients, paired counts against discarding, a complete-data column
    only where complete patients exist, and the clinicians' figures.

    Returns ``{"patients", "incomplete", "accuracy": {method: %}, "fixed"/"broken": {method: n}`` (relative to
    ``observed_only``: wrong -> right / right -> wrong), ``"complete": {"patients", "accuracy"}`` or ``None``,
    ``"accepted_any"``: patients that accepted at least one recovery, ``"single_modality"``: modality name ->
    accuracy (%) of the fusion network on that modality alone over the patients who have it observed (None when
    nobody has it), ``"single_modality_patients"``: modality name -> that patient count, ``"chance"``: the
    majority-class rate (%) of the labels, ``"metrics"``: :func:`monai_dymo.metrics.method_metrics` (1000 bootstrap
    replicates, seed 0), ``"ece"`` / ``"reliability"``: top-label expected calibration error and reliability bins (10
    bins) of DyMo's calibrated probabilities (``prob_dymo_<k>``; None without them), ``"ece_if_calibrated"``:
    :func:`~monai_dymo.confidence.ece_if_calibrated` of the same probabilities (the ECE calibrated probabilities would
    show on these patients), ``"probability_temperature"``,
    ``"margin"`` / ``"margin_source"``, and with a refer flag ``"refer": {"guarantee", "per_class", "alpha",
    "delta", "threshold"`` (None under a per-class rule), ``"thresholds"`` (per-class rule: ``{class name:
    threshold}``), ``"referred", "not_referred", "coverage", "error_not_referred"`` (measured on these patients),
    ``"statement"`` (the guarantee in words; None when the frame lost the rule, e.g. read back from CSV)``}``.
    ``classes``: class names by index (default ``"0".."C-1"``).
    """
    from monai_dymo.confidence import ece_if_calibrated, expected_calibration_error, reliability_bins
    from monai_dymo.metrics import method_metrics

    df = per_patient
    names = _class_names(df, classes)
    y = df["label"].to_numpy()
    correct = {m: df[f"pred_{m}"].to_numpy() == y for m in NATURAL_METHODS}
    base = correct["observed_only"]
    counts = np.bincount(y.astype(int), minlength=len(names))
    out: dict[str, Any] = {
        "patients": int(len(df)),
        "incomplete": int((~df["complete"]).sum()),
        "accuracy": {m: round(100.0 * float(c.mean()), 2) for m, c in correct.items()},
        "fixed": {m: int((correct[m] & ~base).sum()) for m in ("dymo", "all_recovered")},
        "broken": {m: int((~correct[m] & base).sum()) for m in ("dymo", "all_recovered")},
        "accepted_any": int((df["accepted"] != "").sum()),
        "calibration_fallback": int(df["calibration_fallback"].sum()),
        "complete": None,
        "chance": round(100.0 * float(counts.max()) / max(1, len(y)), 2),
        "majority_class": names[int(counts.argmax())] if int(counts.argmax()) < len(names) else str(counts.argmax()),
    }
    single = single_modality_accuracy(df)
    out["single_modality"] = {m: v["accuracy"] for m, v in single.items()}
    out["single_modality_patients"] = {m: v["patients"] for m, v in single.items()}
    out["metrics"] = method_metrics(df, names, bootstrap=1000, seed=0)
    prob_cols = [f"prob_dymo_{k}" for k in range(len(names))]
    done = df["pred_dymo"].to_numpy() >= 0
    out["ece"] = out["reliability"] = out["ece_if_calibrated"] = None
    if all(c in df for c in prob_cols) and done.any():
        prob = df[prob_cols].to_numpy(dtype=float)[done]
        out["reliability"] = reliability_bins(prob, correct["dymo"][done], 10)
        out["ece"] = expected_calibration_error(prob, correct["dymo"][done], 10)
        out["ece_if_calibrated"] = ece_if_calibrated(prob, 10, draws=1000, seed=0)
    out["probability_temperature"] = (float(df["probability_temperature"].iloc[0])
                                      if "probability_temperature" in df else None)
    if "margin" in df:
        m = float(df["margin"].iloc[0])
        out["margin"] = "inf" if math.isinf(m) else m
        out["margin_source"] = str(df["margin_source"].iloc[0])
    if "refer" in df:
        out["refer"] = _refer_summary(df, correct["dymo"], names)
    complete = df["complete"].to_numpy()
    if complete.any():
        out["complete"] = {"patients": int(complete.sum()),
                           "accuracy": round(100.0 * float(correct["dymo"][complete].mean()), 2)}
    return out


def natural_summary_line(summary: Mapping[str, Any], title: str = "DyMo evaluation") -> str:
    """One line of :func:`summarise_natural`'s figures (printed at the end of an evaluate run)."""
    acc = summary["accuracy"]
    line = (
        f"{title}: {summary['patients']} patients ({summary['incomplete']} incomplete); accuracy DyMo "
        f"{acc['dymo']:.2f} %, discard missing {acc['observed_only']:.2f} %, all recovered {acc['all_recovered']:.2f} %;"
        f" DyMo fixed / broken {summary['fixed']['dymo']} / {summary['broken']['dymo']}"
    )
    dymo = (summary.get("metrics") or {}).get("dymo") or {}
    if dymo.get("num_patients"):
        ci = dymo.get("ci95") or {}
        bal = ci.get("balanced_accuracy")
        line += f"; DyMo balanced accuracy {100 * dymo['balanced_accuracy']:.1f} %" + (
            f" [{100 * bal[0]:.1f}, {100 * bal[1]:.1f}]" if bal else "")
        auc = ci.get("auroc")
        line += ", AUROC " + ("n/a" if dymo["auroc"] is None else f"{dymo['auroc']:.3f}" + (
            f" [{auc[0]:.3f}, {auc[1]:.3f}]" if auc else ""))
    if summary.get("chance") is not None:
        line += f"; chance (majority class) {summary['chance']:.1f} %"
    test = ((summary.get("metrics") or {}).get("paired") or {}).get("dymo_vs_observed_only")
    if test:
        line += f"; McNemar p vs discarding {test['p_value']:.3g}"
    alone = summary.get("single_modality") or {}
    if alone:
        line += "; alone: " + ", ".join(f"{m} {'n/a' if a is None else f'{a:.1f} %'}" for m, a in alone.items())
    return line


def write_natural_comparison(
    per_patient: pd.DataFrame, output_dir: str | Path, title: str, classes: Sequence[Any] | None = None
) -> dict[str, str]:
    """Write ``per_patient.csv`` (with the calibrated probabilities), ``summary.json`` (:func:`summarise_natural`),
    ``results.md`` (the accuracy table, the clinical metrics of :func:`monai_dymo.metrics.metrics_markdown`, each
    modality alone, the margin and the refer rule), ``accuracy.png`` (bars with paired counts) and ``reliability.png``
    (reliability diagram of DyMo's calibrated probabilities, when they are there).

    With ``classes`` (class names by index) the CSV has ``label_name`` and ``pred_<method>_name`` beside the indices
    (blank for a patient that was not processed)."""
    import json

    from monai_dymo.confidence import plot_reliability_diagram
    from monai_dymo.metrics import metrics_markdown
    from monai_dymo.report.records import plain

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = per_patient
    if classes is not None:
        names = [str(c) for c in classes]

        def name(i: Any) -> str:
            return names[int(i)] if 0 <= int(i) < len(names) else ""

        columns: list[str] = []
        for c in table.columns:
            columns.append(c)
            if c == "label" or (c.startswith("pred_") and c[5:] in NATURAL_METHODS):
                columns.append(f"{c}_name")
        table = table.assign(**{
            f"{c}_name": table[c].map(name) for c in table.columns
            if c == "label" or (c.startswith("pred_") and c[5:] in NATURAL_METHODS)
        })[columns]
    table.to_csv(out / "per_patient.csv", index=False)
    s = summarise_natural(per_patient, classes)
    (out / "summary.json").write_text(json.dumps(plain(s), indent=2, allow_nan=False))
    names = _class_names(per_patient, classes)
    labels = {"dymo": "DyMo", "observed_only": "discard missing", "all_recovered": "all recovered"}
    header = ["patients", "incomplete", *(labels[m] for m in NATURAL_METHODS), "DyMo fixed / broken",
              "all-recovered fixed / broken"]
    cells = [str(s["patients"]), str(s["incomplete"]), *(f"{s['accuracy'][m]:.2f}" for m in NATURAL_METHODS),
             f"{s['fixed']['dymo']} / {s['broken']['dymo']}",
             f"{s['fixed']['all_recovered']} / {s['broken']['all_recovered']}"]
    if s["complete"] is not None:
        header.append("complete patients (n, accuracy)")
        cells.append(f"{s['complete']['patients']}, {s['complete']['accuracy']:.2f}")
    chance = s["chance"]
    lines = [
        f"# {title}",
        "",
        "Accuracy (%) on the same patients with their natural missingness. Fixed / broken: predictions that go from",
        "wrong to right / right to wrong relative to discarding the missing modalities. Chance (always answering the",
        f"majority class, {s['majority_class']}): {chance:.1f} %.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(cells) + " |",
        "",
        f"Patients accepting at least one recovered modality: {s['accepted_any']}; scored with fallback calibration "
        f"statistics: {s['calibration_fallback']}.",
        "",
        "## Clinical metrics",
        "",
        "Probabilities are calibrated (temperature scaling"
        + ("" if s["probability_temperature"] is None else f", T = {s['probability_temperature']:.4g}") + ")"
        + ("" if s["ece"] is None else f"; DyMo's top-label expected calibration error (10 bins): "
           f"{100 * s['ece']:.1f} % (reliability.png)")
        + ("" if not s.get("ece_if_calibrated") else
           f"; calibrated probabilities would show {100 * s['ece_if_calibrated']['mean']:.1f} % on these patients on "
           f"average (95 % of draws up to {100 * s['ece_if_calibrated']['q95']:.1f} %): a finite cohort's ECE is "
           "never 0") + ".",
        "",
        metrics_markdown(s["metrics"], names).rstrip("\n"),
    ]
    if s["single_modality"]:
        lines += [
            "",
            "Each modality alone (the fusion network on that one modality, patients who have it observed; chance, the",
            f"majority-class rate, is {chance:.0f} %): an encoder near chance has learnt nothing its modality "
            "could add.",
            "",
            "| modality | patients | accuracy alone |",
            "|---|---|---|",
            *(f"| {m} | {s['single_modality_patients'][m]} | "
              + ("n/a" if a is None else f"{a:.2f}") + (" (near chance)" if a is not None and a < chance + 10 else "")
              + " |" for m, a in s["single_modality"].items()),
        ]
    if "margin" in s:
        lines += ["", f"Reward margin in force: {s['margin']} ({s['margin_source']})."]
    if s.get("refer"):
        r = s["refer"]
        threshold = (", ".join(f"{c}: {t}" for c, t in (r["thresholds"] or {}).items()) if r["per_class"]
                     else str(r["threshold"]))
        lines += [f"Refer (alpha {r['alpha']:g}, delta {r['delta']:g}, guarantee {r['guarantee']}"
                  + (", per predicted class" if r["per_class"] else "")
                  + f"): threshold{'s' if r['per_class'] else ''} {threshold}, coverage {100 * r['coverage']:.1f} %, "
                  "error among patients not referred "
                  + ("n/a" if r["error_not_referred"] is None else f"{100 * r['error_not_referred']:.2f} %")
                  + f", {r['referred']} referred."
                  + ("" if not r["statement"] else f" Guarantee: {r['statement']}.")]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [s["accuracy"][m] for m in NATURAL_METHODS]
    bars = ax.bar([labels[m] for m in NATURAL_METHODS], values, color=["#1f77b4", "#7f7f7f", "#ff7f0e"])
    for bar, m in zip(bars, NATURAL_METHODS):
        note = "" if m == "observed_only" else f"\n+{s['fixed'][m]} / -{s['broken'][m]}"
        ax.annotate(f"{bar.get_height():.1f}{note}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(chance, color="#555555", linestyle=":", linewidth=1)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    written = {k: str(out / f) for k, f in (("per_patient", "per_patient.csv"), ("summary", "summary.json"),
                                             ("markdown", "results.md"), ("plot", "accuracy.png"))}
    if s["reliability"] is not None:
        written["reliability"] = plot_reliability_diagram(s["reliability"], out / "reliability.png",
                                                          title=f"{title}: calibrated probabilities")
    return written
