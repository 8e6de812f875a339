"""Ignite handlers of monai_dymo: prototype refresh during training, the selection report, missingness summaries,
progress bars, experiment tracking.

The report itself lives in :mod:`monai_dymo.report`; its functions are re-exported here so that
``monai_dymo.handlers.read_report`` and the like keep working.
"""

from __future__ import annotations

from ..report import (
    EMPTY_LIST,
    LIST_SEPARATOR,
    MODALITY_STATUSES,
    ReportOptions,
    modality_decision,
    modality_status,
    plot_selection_summary,
    pseudonymize_id,
    pseudonymize_records,
    read_report,
    read_report_csv,
    report_columns,
    report_modalities,
    report_rows,
    report_summary,
    summary_line,
    write_report,
    write_report_csv,
    write_report_dictionary,
    write_report_html,
    write_report_json,
)
from .missingness import MissingnessSummaryHandler
from .progress import attach_progress_bar, loss_progress, progress_enabled
from .prototypes import PrototypeRefreshHandler
from .reports import SelectionReportWriter
from .tracking import adapt_tracking_handlers, scalar_loss

__all__ = [
    "MissingnessSummaryHandler",
    "EMPTY_LIST",
    "LIST_SEPARATOR",
    "MODALITY_STATUSES",
    "PrototypeRefreshHandler",
    "ReportOptions",
    "attach_progress_bar",
    "loss_progress",
    "progress_enabled",
    "SelectionReportWriter",
    "adapt_tracking_handlers",
    "modality_decision",
    "modality_status",
    "plot_selection_summary",
    "pseudonymize_id",
    "pseudonymize_records",
    "read_report",
    "read_report_csv",
    "report_columns",
    "report_modalities",
    "report_rows",
    "report_summary",
    "summary_line",
    "scalar_loss",
    "write_report",
    "write_report_csv",
    "write_report_dictionary",
    "write_report_html",
    "write_report_json",
]
