"""Guarantees on held-out data: a certified reward margin and a refer flag with a validated error rate.

- :mod:`.statistics` (numpy only): exact binomial tests, the fallback / fixed-sequence procedures, the margin
  certification, the refer thresholds (high probability, per predicted class, conformal risk control) and the drawing
  of the held-out part. Its module docstring states exactly what each procedure guarantees.
- :mod:`.outcomes` (torch): per-patient outcome vectors of a held-out split, the certification record and the
  temperature of the calibrated probabilities fitted on such outcomes.
- :mod:`.policy`: the margin in force and its provenance, the refer rule at that margin and each patient's decision.
- :mod:`.simulation` (numpy only): synthetic held-out draws with known truth, to check the guarantees.

Names are imported on first use (PEP 562), so ``import monai_dymo.certification.statistics`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_exports

_LAZY_NAMES: dict[str, str] = {
    **{name: "statistics" for name in (
        "DEFAULT_MARGINS", "DEFAULT_REFER_THRESHOLDS", "PROCEDURES", "binomial_sf", "binomial_cdf",
        "fixes_breaks_pvalue", "risk_pvalue", "min_sample_size", "clopper_pearson_upper", "sequential_test",
        "certify_margin", "margin_weights", "refer_start", "refer_threshold", "refer_threshold_per_class",
        "risk_control_threshold", "risk_control_threshold_per_class", "holdout_indices")},
    **{name: "outcomes" for name in (
        "outcomes_at_margin", "logits_at_margin", "batch_outcomes", "collect_outcomes", "holdout_part", "certify",
        "certify_calibration", "fit_probability_temperature")},
    **{name: "policy" for name in (
        "GUARANTEES", "GUARANTEE_SETTINGS", "AUTO_CLASS_FRACTION", "AUTO_PAC_PATIENTS", "margin_label",
        "resolve_margin", "margin_on_holdout", "margin_share", "rare_class", "refer_for_margin",
        "rule_threshold", "refer_decisions", "certification_summary")},
}
_SUBMODULES = frozenset({"statistics", "outcomes", "policy", "simulation"})

__all__ = sorted(_LAZY_NAMES)

if TYPE_CHECKING:
    from .outcomes import (
        batch_outcomes,
        certify,
        certify_calibration,
        collect_outcomes,
        fit_probability_temperature,
        holdout_part,
        logits_at_margin,
        outcomes_at_margin,
    )
    from .policy import (
        AUTO_CLASS_FRACTION,
        AUTO_PAC_PATIENTS,
        GUARANTEE_SETTINGS,
        GUARANTEES,
        certification_summary,
        margin_label,
        margin_on_holdout,
        margin_share,
        rare_class,
        refer_decisions,
        refer_for_margin,
        resolve_margin,
        rule_threshold,
    )
    from .statistics import (
        DEFAULT_MARGINS,
        DEFAULT_REFER_THRESHOLDS,
        PROCEDURES,
        binomial_cdf,
        binomial_sf,
        certify_margin,
        clopper_pearson_upper,
        fixes_breaks_pvalue,
        holdout_indices,
        margin_weights,
        min_sample_size,
        refer_start,
        refer_threshold,
        refer_threshold_per_class,
        risk_control_threshold,
        risk_control_threshold_per_class,
        risk_pvalue,
        sequential_test,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_NAMES, _SUBMODULES)
