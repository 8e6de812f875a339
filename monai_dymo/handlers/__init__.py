"""Ignite handlers of monai_dymo: prototype refresh during training and selection reports."""

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

__all__ = [
    "MissingnessSummaryHandler",
    "MODALITY_STATUSES",
    "PrototypeRefreshHandler",
    "SelectionReportWriter",
    "modality_status",
    "plot_selection_summary",
    "report_modalities",
    "report_rows",
    "write_report_csv",
    "write_report_json",
]
