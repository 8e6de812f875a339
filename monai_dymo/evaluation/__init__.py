"""Method comparison on incomplete multimodal data (the DyMo paper's evaluation protocol).

For every batch of patients with a presence mask, four predictions are compared on the same fusion network:

- ``dymo``: recover the missing modalities, then :func:`monai_dymo.selection.select_modalities` decides per patient which
  recoveries to use;
- ``observed_only``: discard the missing modalities (fusion on the observed subset);
- ``all_recovered``: use every recovered modality (fusion on all modalities);
- ``complete``: the complete-data upper bound (fusion on all modalities, true images).

:func:`compare_methods` works on any loader; :func:`compare_over_patterns` runs it for a grid of missing-pattern files
(rate x seed) and :func:`write_comparison` writes the results table (CSV + markdown) and the accuracy plot.
"""

from __future__ import annotations

from monai_dymo.evaluation.natural import NATURAL_METHODS, compare_on_natural_missingness, single_modality_accuracy
from monai_dymo.evaluation.natural_summary import natural_summary_line, summarise_natural, write_natural_comparison
from monai_dymo.evaluation.simulated import (
    METHOD_LABELS,
    METHODS,
    compare_methods,
    compare_over_patterns,
    plot_accuracy_vs_missing_rate,
    summarise,
    write_comparison,
)

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "compare_methods",
    "compare_over_patterns",
    "plot_accuracy_vs_missing_rate",
    "summarise",
    "write_comparison",
    "NATURAL_METHODS",
    "compare_on_natural_missingness",
    "single_modality_accuracy",
    "summarise_natural",
    "write_natural_comparison",
    "natural_summary_line",
]

