"""Classification metrics for clinical reporting: per-class figures, AUROC, bootstrap intervals, paired tests.

Inputs are numpy-like (torch tensors are read with ``np.asarray``): ``labels [N]`` and ``predictions [N]`` (class
indices in ``0..C-1``), optional ``probabilities [N, C]``. Outputs are JSON-serialisable (plain ``float`` / ``int`` /
``list`` / ``None``); proportions are fractions in ``[0, 1]``.

Macro averages (balanced accuracy, macro F1, AUROC) are over the classes present among the evaluated labels
(a class with no patient has no sensitivity); every result names those classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "classification_metrics",
    "weighted_auroc",
    "mcnemar_exact",
    "method_metrics",
    "metrics_markdown",
]

_METHOD_NAMES = {"dymo": "DyMo", "observed_only": "discard missing", "all_recovered": "all recovered",
                 "complete": "complete data"}


def _num(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _percentile_ci(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def weighted_auroc(scores: Any, positive: Any, weights: Any | None = None) -> np.ndarray:
    """AUROC of ``scores [N]`` for ``positive [N]`` (bool) by the Mann-Whitney rank statistic (ties count 1/2), for
    each row of patient ``weights [B, N]`` (multiplicities of a bootstrap replicate; default one row of ones).

    Returns ``[B]`` (NaN where a row has no positive or no negative weight). Equals ``sklearn.metrics.roc_auc_score``
    for unit weights."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, dtype=float).reshape(-1, s.size)
    order = np.argsort(s, kind="stable")
    s, pos, w = s[order], pos[order], w[:, order]
    _, first, counts = np.unique(s, return_index=True, return_counts=True)  # tie groups of the sorted scores
    group = np.repeat(np.arange(first.size), counts)
    wn = w * ~pos
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(wn, axis=1)], axis=1)  # neg weight before position
    below = cum[:, first[group]]
    tied = cum[:, (first + counts)[group]] - below
    wp = w * pos
    u = (wp * (below + 0.5 * tied)).sum(1)
    denom = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u / np.where(denom > 0, denom, 1.0), np.nan)


def classification_metrics(
    labels: Any,
    predictions: Any,
    probabilities: Any | None = None,
    class_names: Sequence[Any] | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    positive_class: int | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class sensitivity / precision / F1, macro F1, AUROC, confusion matrix, chance
    rate and percentile-bootstrap 95 % intervals over patients.

    Args:
        labels: ``[N]`` true class indices in ``0..C-1``.
        predictions: ``[N]`` predicted class indices in ``0..C-1``.
        probabilities: ``[N, C]`` class probabilities (finite), or None (then no AUROC).
        class_names: ``C`` names by index (default: ``"0".."C-1"`` with ``C`` from the inputs).
        bootstrap: bootstrap replicates (0: no intervals).
        seed: seed of ``numpy.random.default_rng`` drawing the replicates.
        positive_class: the positive class of a binary AUROC (default class 1).

    Returns:
        ``{"num_patients", "accuracy", "balanced_accuracy", "macro_f1", "macro_classes" (names the macro averages run
        over), "per_class": {name: {"sensitivity", "precision", "f1", "support", "auroc"}} (None where undefined),
        "auroc" (binary: of the positive class; else one-vs-rest macro), "auroc_classes", "auroc_note",
        "confusion_matrix" (rows true, columns predicted, all C classes), "chance" (majority-class rate of the
        labels), "majority_class", "ci95": {"accuracy", "balanced_accuracy", "auroc": [lo, hi] or None} or None,
        "bootstrap": {"replicates", "auroc_replicates", "seed", "method"} or None}``.
    """
    y = np.asarray(labels).astype(int).reshape(-1)
    p = np.asarray(predictions).astype(int).reshape(-1)
    if y.size == 0 or y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} must be non-empty and of the same length.")
    prob = None if probabilities is None else np.asarray(probabilities, dtype=float)
    if class_names is not None:
        C = len(class_names)
    else:
        C = int(max(y.max(), p.max(), -1 if prob is None else prob.shape[1] - 1)) + 1
    names = [str(c) for c in class_names] if class_names is not None else [str(k) for k in range(C)]
    if y.min() < 0 or p.min() < 0 or y.max() >= C or p.max() >= C:
        raise ValueError(f"labels and predictions must be class indices in 0..{C - 1}.")
    if prob is not None and (prob.shape != (y.size, C) or not np.isfinite(prob).all()):
        raise ValueError(f"probabilities must be finite and of shape {(y.size, C)}, got {prob.shape}.")
    N = y.size
    classes = list(range(C))
    support = np.bincount(y, minlength=C)
    present = [k for k in classes if support[k] > 0]

    with warnings.catch_warnings():  # predicted classes absent from the labels: counted, not warned about
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, p, labels=classes, zero_division=np.nan)
        balanced = balanced_accuracy_score(y, p)
        macro_f1 = f1_score(y, p, labels=present, average="macro", zero_division=0)

    auroc_classes: list[int] = []
    per_class_auroc: dict[int, float] = {}
    auroc, note = None, None
    if prob is None:
        note = "no class probabilities"
    elif C == 2:
        pos = 1 if positive_class is None else int(positive_class)
        if pos not in (0, 1):
            raise ValueError(f"positive_class of a binary task must be 0 or 1, got {positive_class}.")
        if len(present) < 2:
            note = "one class only among the labels"
        else:
            auroc_classes = [pos]
            auroc = float(roc_auc_score(y == pos, prob[:, pos]))
            per_class_auroc[pos] = auroc
    elif len(present) < 2:
        note = "one class only among the labels"
    else:
        auroc_classes = present
        for k in present:
            per_class_auroc[k] = float(roc_auc_score(y == k, prob[:, k]))
        auroc = float(np.mean([per_class_auroc[k] for k in present]))
        if len(present) < C:
            note = "one-vs-rest macro over the classes present; no patient of " + ", ".join(
                names[k] for k in classes if k not in present)

    majority = int(np.argmax(support))
    out: dict[str, Any] = {
        "num_patients": int(N),
        "accuracy": float(accuracy_score(y, p)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(macro_f1),
        "macro_classes": [names[k] for k in present],
        "per_class": {
            names[k]: {"sensitivity": _num(recall[k]), "precision": _num(precision[k]), "f1": _num(f1[k]),
                       "support": int(support[k]), "auroc": per_class_auroc.get(k)}
            for k in classes
        },
        "auroc": auroc,
        "auroc_classes": [names[k] for k in auroc_classes],
        "auroc_note": note,
        "confusion_matrix": confusion_matrix(y, p, labels=classes).tolist(),
        "chance": float(support[majority] / N),
        "majority_class": names[majority],
        "ci95": None,
        "bootstrap": None,
    }
    if bootstrap > 0:
        out["ci95"], out["bootstrap"] = _bootstrap(y, p, prob, C, auroc_classes, int(bootstrap), int(seed))
    return out


def _bootstrap(
    y: np.ndarray, p: np.ndarray, prob: np.ndarray | None, C: int, auroc_classes: Sequence[int], B: int, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Percentile intervals of accuracy, balanced accuracy and AUROC over ``B`` patient resamples (vectorised)."""
    N = y.size
    idx = np.random.default_rng(seed).integers(0, N, size=(B, N))
    correct = y == p
    acc = correct[idx].mean(1)
    offset = (np.arange(B) * C)[:, None]
    support = np.bincount((y[idx] + offset).ravel(), minlength=B * C).reshape(B, C)
    hits = np.bincount((y[idx] + offset).ravel(), weights=correct[idx].ravel(), minlength=B * C).reshape(B, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        balanced = np.nanmean(np.where(support > 0, hits / np.maximum(support, 1), np.nan), axis=1)
    auroc = np.full(B, np.nan)
    if prob is not None and auroc_classes:
        step = max(1, 2_000_000 // N)  # replicates per chunk: bounded memory on large cohorts
        for a in range(0, B, step):
            rows = idx[a:a + step]
            r = rows.shape[0]
            weights = np.bincount((rows + (np.arange(r) * N)[:, None]).ravel(), minlength=r * N).reshape(r, N)
            auroc[a:a + r] = np.mean([weighted_auroc(prob[:, k], y == k, weights) for k in auroc_classes], axis=0)
    used = int(np.isfinite(auroc).sum())
    ci = {"accuracy": _percentile_ci(acc), "balanced_accuracy": _percentile_ci(balanced),
          "auroc": _percentile_ci(auroc) if used else None}
    info = {"replicates": B, "auroc_replicates": used, "seed": seed,
            "method": "percentile bootstrap over patients (2.5th / 97.5th percentiles)"}
    return ci, info


def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """Paired comparison of two classifiers on the same patients (``correct_a [N]``, ``correct_b [N]`` bool).

    Returns ``{"n", "accuracy_a", "accuracy_b", "b" (a right, b wrong), "c" (a wrong, b right), "difference"
    (accuracy a - b), "difference_ci95" ([lo, hi], Newcombe's square-and-add Wilson score interval for paired
    proportions, Newcombe 1998 method 10), "ci_method", "p_value" (McNemar's exact two-sided test: binomial test of b
    among b + c at 1/2; 1 when b + c = 0), "test"}``."""
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b_ = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b_.shape or a.size == 0:
        raise ValueError(f"correct_a {a.shape} and correct_b {b_.shape} must be non-empty and of the same length.")
    n = int(a.size)
    n11, n12, n21 = int((a & b_).sum()), int((a & ~b_).sum()), int((~a & b_).sum())
    n22 = n - n11 - n12 - n21
    p1, p2 = (n11 + n12) / n, (n11 + n21) / n
    (l1, u1), (l2, u2) = _wilson(n11 + n12, n), _wilson(n11 + n21, n)
    margins = float(n11 + n12) * (n21 + n22) * (n11 + n21) * (n12 + n22)
    cross = n11 * n22 - n12 * n21  # Newcombe's continuity-corrected correlation of the two accuracies
    cross = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = cross / np.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    lo = d - np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = d + np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    discordant = n12 + n21
    pval = float(binomtest(n12, discordant, 0.5, alternative="two-sided").pvalue) if discordant else 1.0
    return {
        "n": n,
        "accuracy_a": p1,
        "accuracy_b": p2,
        "b": n12,
        "c": n21,
        "difference": float(d),
        "difference_ci95": [float(max(lo, -1.0)), float(min(hi, 1.0))],
        "ci_method": "Newcombe square-and-add Wilson score interval for paired proportions",
        "p_value": pval,
        "test": "McNemar exact (two-sided binomial test of b among b + c at 1/2)",
    }


def method_metrics(
    per_patient: pd.DataFrame,
    class_names: Sequence[Any],
    methods: Sequence[str] = ("dymo", "observed_only", "all_recovered"),
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`classification_metrics` of each method of an evaluation's per-patient frame, plus paired tests.

    Reads ``label``, ``pred_<method>`` (``-1``: not processed, left out and counted as ``not_processed``) and, when
    all ``C`` are there, ``prob_<method>_<k>`` (probability of class index ``k``). ``kwargs`` go to
    :func:`classification_metrics`. Returns ``{method: metrics | {"num_patients": 0, "not_processed"}, "paired":
    {"dymo_vs_<other>": mcnemar_exact(...)}}`` (pairs over the patients both methods processed)."""
    df = per_patient
    C = len(class_names)
    y = df["label"].to_numpy().astype(int)
    out: dict[str, Any] = {}
    done: dict[str, np.ndarray] = {}
    for m in methods:
        col = f"pred_{m}"
        if col not in df:
            raise ValueError(f"the per-patient frame has no column {col!r}.")
        pred = df[col].to_numpy().astype(int)
        keep = pred >= 0
        done[m] = keep
        if not keep.any():
            out[m] = {"num_patients": 0, "not_processed": int((~keep).sum())}
            continue
        prob_cols = [f"prob_{m}_{k}" for k in range(C)]
        prob, note = None, None
        if all(c in df for c in prob_cols):
            prob = df[prob_cols].to_numpy(dtype=float)[keep]
            if not np.isfinite(prob).all():
                prob, note = None, "non-finite class probabilities for a processed patient"
        res = classification_metrics(y[keep], pred[keep], prob, class_names, **kwargs)
        if note is not None:
            res["auroc_note"] = note
        res["not_processed"] = int((~keep).sum())
        out[m] = res
    paired = {}
    if "dymo" in methods:
        for m in methods:
            if m == "dymo":
                continue
            both = done["dymo"] & done[m]
            if both.any():
                pd_, pm = df["pred_dymo"].to_numpy()[both], df[f"pred_{m}"].to_numpy()[both]
                paired[f"dymo_vs_{m}"] = mcnemar_exact(pd_ == y[both], pm == y[both])
    out["paired"] = paired
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _with_ci(v: float | None, ci: Sequence[float] | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    if v is None:
        return "n/a"
    s = format(scale * v, fmt)
    return s + (f" [{format(scale * ci[0], fmt)}, {format(scale * ci[1], fmt)}]" if ci else "")


def metrics_markdown(metrics: Mapping[str, Any], class_names: Sequence[Any]) -> str:
    """A Markdown block of :func:`method_metrics`: methods table with 95 % intervals, DyMo's per-class table and
    confusion matrix, the chance (majority-class) rate and the paired tests."""
    names = [str(c) for c in class_names]
    methods = [m for m in metrics if m != "paired"]
    lines = ["| method | patients | accuracy % [95 % CI] | balanced accuracy % [95 % CI] | macro F1 | "
             "AUROC [95 % CI] |", "|---|---|---|---|---|---|"]
    for m in methods:
        r = metrics[m]
        label = _METHOD_NAMES.get(m, m)
        if not r.get("num_patients"):
            lines.append(f"| {label} | 0 | n/a | n/a | n/a | n/a |")
            continue
        ci = r.get("ci95") or {}
        skipped = f" ({r['not_processed']} not processed)" if r.get("not_processed") else ""
        lines.append(
            f"| {label} | {r['num_patients']}{skipped} | {_with_ci(r['accuracy'], ci.get('accuracy'))} | "
            f"{_with_ci(r['balanced_accuracy'], ci.get('balanced_accuracy'))} | {r['macro_f1']:.3f} | "
            f"{_with_ci(r['auroc'], ci.get('auroc'), 1.0, '.3f')} |")
    ref = next((metrics[m] for m in methods if metrics[m].get("num_patients")), None)
    if ref is not None:
        notes = [f"Chance (always answering the majority class, {ref['majority_class']}): {_pct(ref['chance'])} %."]
        boot = ref.get("bootstrap")
        if boot:
            notes.append(f"Intervals: {boot['method']}, {boot['replicates']} replicates (seed {boot['seed']}"
                         + (f"; AUROC from the {boot['auroc_replicates']} where it is defined" if ref["auroc"] is not
                            None and boot["auroc_replicates"] < boot["replicates"] else "") + ").")
        if ref.get("auroc_note"):
            notes.append(f"AUROC: {ref['auroc_note']}.")
        lines += ["", " ".join(notes)]
    d = metrics.get("dymo")
    if d and d.get("num_patients"):
        lines += ["", "DyMo per class:", "", "| class | patients | sensitivity % | precision % | F1 | AUROC |",
                  "|---|---|---|---|---|---|"]
        for n in names:
            c = d["per_class"][n]
            lines.append(f"| {n} | {c['support']} | {_pct(c['sensitivity'])} | {_pct(c['precision'])} | "
                         + ("n/a" if c["f1"] is None else f"{c['f1']:.3f}") + " | "
                         + ("n/a" if c["auroc"] is None else f"{c['auroc']:.3f}") + " |")
        lines += ["", "DyMo confusion matrix (rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, d["confusion_matrix"])]
    for key, t in (metrics.get("paired") or {}).items():
        other = _METHOD_NAMES.get(key.split("_vs_", 1)[1], key)
        lines += ["", f"DyMo vs. {other} (same {t['n']} patients): accuracy difference "
                      f"{100 * t['difference']:+.1f} points [{100 * t['difference_ci95'][0]:+.1f}, "
                      f"{100 * t['difference_ci95'][1]:+.1f}] ({t['ci_method']}); DyMo right / other wrong {t['b']}, "
                      f"DyMo wrong / other right {t['c']}; McNemar exact p = {t['p_value']:.3g}."]
    return "\n".join(lines) + "\n"
