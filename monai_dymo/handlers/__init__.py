"""Ignite handlers of monai_dymo: prototype refresh during training and selection reports."""

from __future__ import annotations

from .prototypes import PrototypeRefreshHandler
from .pseudonyms import pseudonymize_id
from .report_html import write_report_html
from .reports import (
    EMPTY_LIST,
    LIST_SEPARATOR,
    MODALITY_STATUSES,
    SelectionReportWriter,
    modality_decision,
    modality_status,
    plot_selection_summary,
    pseudonymize_records,
    read_report_csv,
    report_columns,
    report_modalities,
    report_rows,
    write_report_csv,
    write_report_dictionary,
    write_report_json,
)

__all__ = [
    "EMPTY_LIST",
    "LIST_SEPARATOR",
    "MODALITY_STATUSES",
    "PrototypeRefreshHandler",
    "SelectionReportWriter",
    "modality_decision",
    "modality_status",
    "plot_selection_summary",
    "pseudonymize_id",
    "pseudonymize_records",
    "read_report_csv",
    "report_columns",
    "report_modalities",
    "report_rows",
    "write_report_csv",
    "write_report_dictionary",
    "write_report_html",
    "write_report_json",
]
