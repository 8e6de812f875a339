"""The per-patient DyMo report: records, tables (CSV / JSON / data dictionary), figures, HTML pages, pseudonyms.

Modules, bottom up:

- :mod:`~monai_dymo.report.records`: the per-patient records (:func:`selection_records` from a selection result) and
  how the report reads them (status and decision of each modality, class names, JSON-safe values);
- :mod:`~monai_dymo.report.summary`: cohort figures (:func:`report_summary`, :func:`summary_line`);
- :mod:`~monai_dymo.report.clinical`: the clinicians' metrics and the calibration of the probabilities
  (:func:`clinical_summary`);
- :mod:`~monai_dymo.report.trust`: the guarantees (reward margin in force, refer flag) in the columns, summary and page;
- :mod:`~monai_dymo.report.tables`: CSV / JSON / data dictionary writers and readers;
- :mod:`~monai_dymo.report.pictures`, :mod:`~monai_dymo.report.figures`: patient thumbnails, cohort charts;
- :mod:`~monai_dymo.report.html`: the HTML pages, from the Jinja2 templates in ``monai_dymo/report/templates``;
- :mod:`~monai_dymo.report.pseudonyms`: keyed pseudonymised patient ids;
- :mod:`~monai_dymo.report.collect`: records from an evaluation engine's output and batch;
- :mod:`~monai_dymo.report.writer`: :func:`write_report`, every file of a report from a list of records.

Nothing here needs ignite, the networks or the inferer; :class:`monai_dymo.handlers.SelectionReportWriter` is the
ignite handler that collects the records of an evaluation and calls :func:`write_report`.
"""

from __future__ import annotations

from .clinical import clinical_summary
from .collect import OutputKeys, in_datalist_order, records_and_inputs
from .figures import STATUS_COLORS, STATUS_LABELS, plot_reward_distributions, plot_selection_summary, plot_trust_map
from .html import TEMPLATE_DIR, patient_page_name, report_environment, write_report_html
from .pictures import PatientPictures, image_planes, save_picture
from .pseudonyms import pseudonymize_id, pseudonymize_records, pseudonymize_text
from .records import (
    MODALITY_STATUSES,
    class_name,
    clinical_groups,
    format_reward,
    is_correct,
    label_value,
    modality_decision,
    modality_status,
    patient_priority,
    plain,
    report_modalities,
    selection_records,
    with_class_names,
)
from .summary import accuracy_split, report_summary, single_modality_summary, status_counts, summary_line
from .tables import (
    EMPTY_LIST,
    LIST_SEPARATOR,
    read_report,
    read_report_csv,
    report_columns,
    report_rows,
    write_report_csv,
    write_report_dictionary,
    write_report_json,
)
from .trust import trust_summary
from .writer import ReportOptions, WrittenReport, write_report

__all__ = [
    "EMPTY_LIST",
    "LIST_SEPARATOR",
    "MODALITY_STATUSES",
    "OutputKeys",
    "PatientPictures",
    "ReportOptions",
    "STATUS_COLORS",
    "STATUS_LABELS",
    "TEMPLATE_DIR",
    "WrittenReport",
    "accuracy_split",
    "class_name",
    "clinical_groups",
    "clinical_summary",
    "format_reward",
    "image_planes",
    "in_datalist_order",
    "is_correct",
    "label_value",
    "modality_decision",
    "modality_status",
    "patient_page_name",
    "patient_priority",
    "plain",
    "plot_reward_distributions",
    "plot_selection_summary",
    "plot_trust_map",
    "pseudonymize_id",
    "pseudonymize_records",
    "pseudonymize_text",
    "read_report",
    "read_report_csv",
    "records_and_inputs",
    "report_columns",
    "report_environment",
    "report_modalities",
    "report_rows",
    "report_summary",
    "save_picture",
    "selection_records",
    "single_modality_summary",
    "status_counts",
    "summary_line",
    "trust_summary",
    "with_class_names",
    "write_report",
    "write_report_csv",
    "write_report_dictionary",
    "write_report_html",
    "write_report_json",
]
