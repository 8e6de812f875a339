"""Ignite handlers of monai_dymo: prototype refresh during training, selection reports, experiment tracking."""

from __future__ import annotations

from .missingness import MissingnessSummaryHandler
from .prototypes import PrototypeRefreshHandler
from .reports import (
    MODALITY_STATUSES,
    SelectionReportWriter,
    modality_status,
    plot_selection_summary,
    report_modalities,
    report_rows,
    write_report_csv,
    write_report_json,
)
from .tracking import adapt_tracking_handlers, scalar_loss

__all__ = [
    "MissingnessSummaryHandler",
    "MODALITY_STATUSES",
    "PrototypeRefreshHandler",
    "SelectionReportWriter",
    "adapt_tracking_handlers",
    "modality_status",
    "plot_selection_summary",
    "report_modalities",
    "report_rows",
    "scalar_loss",
    "write_report_csv",
    "write_report_json",
]
