"""Ignite handlers of monai_dymo: prototype refresh during training, selection reports, progress bars."""

from __future__ import annotations

from .progress import attach_progress_bar, loss_progress, progress_enabled
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
    "MODALITY_STATUSES",
    "PrototypeRefreshHandler",
    "attach_progress_bar",
    "loss_progress",
    "progress_enabled",
    "SelectionReportWriter",
    "modality_status",
    "plot_selection_summary",
    "report_modalities",
    "report_rows",
    "write_report_csv",
    "write_report_json",
]
