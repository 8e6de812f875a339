"""The clinicians' figures of a report: DyMo's classification metrics and the calibration of its probabilities.

Over the labelled, processed records: balanced accuracy, per-class sensitivity / precision / F1, macro F1, AUROC (from
the records' calibrated ``probabilities``), the confusion matrix and the chance rate (majority class) with bootstrap
intervals (:func:`monai_dymo.metrics.classification_metrics`), and the top-label expected calibration error with its
reliability bins (:mod:`monai_dymo.confidence`) of the records' calibrated ``probability``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import label_value

__all__ = ["RELIABILITY_BINS", "clinical_summary"]

#: equal-width confidence bins of the reliability diagram and the ECE.
RELIABILITY_BINS = 10


def _class_index(v: Any) -> int | None:
    v = label_value(v)
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if float(v) == i else None


def clinical_summary(
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[Any] | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The clinicians' block of a report summary; None when no processed record has a class-index label.

    Returns ``{"metrics": {"dymo": classification_metrics(...)}`` (the shape of
    :func:`monai_dymo.metrics.method_metrics`, DyMo only; AUROC only when every record has finite ``probabilities``),
    ``"ece"`` (top-label, :data:`RELIABILITY_BINS` bins), ``"reliability"``
    (:func:`~monai_dymo.confidence.reliability_bins`)}``.
    """
    from ..confidence import expected_calibration_error, reliability_bins
    from ..metrics import classification_metrics

    rows = []
    for rec in records:
        y, pred, p = _class_index(rec.get("label")), rec.get("prediction"), rec.get("probability")
        if rec.get("error") or y is None or pred is None or p is None or not math.isfinite(float(p)):
            continue
        rows.append((y, int(pred), float(p), rec.get("probabilities")))
    if not rows:
        return None
    y = np.array([r[0] for r in rows])
    pred = np.array([r[1] for r in rows])
    conf = np.array([r[2] for r in rows])
    vectors = [r[3] for r in rows]
    C = len(class_names) if class_names is not None else int(max(y.max(), pred.max(), *(
        len(v) - 1 for v in vectors if v))) + 1
    prob = None
    if all(v is not None and len(v) == C and all(x is not None for x in v) for v in vectors):
        prob = np.array(vectors, dtype=float)
    names = [str(c) for c in class_names] if class_names is not None else [str(k) for k in range(C)]
    if y.max() >= C or pred.max() >= C or y.min() < 0:
        return None
    metrics = classification_metrics(y, pred, prob, names, bootstrap=bootstrap, seed=seed)
    correct = y == pred
    bins = reliability_bins(conf, correct, RELIABILITY_BINS)
    return {
        "metrics": {"dymo": metrics},
        "ece": expected_calibration_error(conf, correct, RELIABILITY_BINS),
        "reliability": bins,
    }
