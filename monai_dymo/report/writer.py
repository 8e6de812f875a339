"""Write every file of a DyMo report from a list of per-patient records.

:func:`write_report` writes into ``output_dir``: ``<prefix>.csv`` and ``<prefix>.json`` (default ``dymo_report.*``),
the data dictionary ``<prefix>_columns.csv``, with guarantees in the records ``<prefix>_trust.json``, if ``plot`` the
summary chart (``dymo_summary.png``), and if ``html`` the page ``<prefix>.html`` with its pictures and per-patient pages
in ``<prefix>_files/`` (see :func:`~monai_dymo.report.html.write_report_html`). With labelled records the summary block
has the clinicians' metrics and the calibration of the probabilities
(:func:`~monai_dymo.report.clinical.clinical_summary`).

The report holds the records' patient ids and what the run computed, never image metadata. With
``pseudonymize_key`` every patient id is replaced by a keyed pseudonym (see :mod:`~monai_dymo.report.pseudonyms`), raw
ids inside reasons / errors are replaced too and file paths are reduced to their file names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .clinical import clinical_summary
from .figures import plot_selection_summary
from .html import write_report_html
from .pseudonyms import pseudonymize_records
from .records import clinical_groups, plain, report_modalities, with_class_names
from .summary import report_summary, single_modality_summary
from .tables import write_report_csv, write_report_dictionary, write_report_json
from .trust import trust_summary

__all__ = ["PROGRESS_MIN_PATIENTS", "ReportOptions", "WrittenReport", "write_report"]

#: auto progress bars (``progress=None``) from this many patients on.
PROGRESS_MIN_PATIENTS = 1000

SummaryExtra = Mapping[str, Any] | Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Any]] | None


@dataclass
class ReportOptions:
    """What a report holds and how it is written.

    Attributes:
        prefix: file name prefix of the CSV / JSON / HTML report.
        plot: also write the summary chart.
        summary_filename: file name of the chart.
        html: also write the HTML report.
        max_patient_pages: at most this many per-patient pages (errors first, then patients with a rejected, then an
            accepted recovered modality); the others are table rows.
        table_rows_per_page: patient table rows on the cohort page; the others on linked table pages.
        class_names: class names by class index (e.g. the cohort's ``classes``): the ``label_name`` /
            ``prediction_name`` of every record (default: the index as text).
        summary_extra: further blocks of the JSON ``summary`` (see :func:`~monai_dymo.report.summary.report_summary`):
            a mapping, or a callable ``records -> mapping``.
        template_dir: a folder with a site's own HTML templates / ``report.css`` (any subset of the shipped files in
            ``monai_dymo/report/templates``), used before the shipped ones (None: the shipped templates).
        pseudonymize_key: key of the pseudonymised ids (None: the records' ids).
        progress: tqdm progress bars while writing (None: from :data:`PROGRESS_MIN_PATIENTS` patients on).
    """

    prefix: str = "dymo_report"
    plot: bool = True
    summary_filename: str = "dymo_summary.png"
    html: bool = True
    max_patient_pages: int = 100
    table_rows_per_page: int = 1000
    class_names: Sequence[Any] | None = None
    summary_extra: SummaryExtra = None
    template_dir: str | os.PathLike | None = None
    pseudonymize_key: str | bytes | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.max_patient_pages < 0:
            raise ValueError(f"max_patient_pages must be >= 0, got {self.max_patient_pages}.")
        if self.pseudonymize_key is not None and not self.pseudonymize_key:
            raise ValueError("pseudonymize_key must not be empty (None for raw ids).")
        self.max_patient_pages = int(self.max_patient_pages)
        self.table_rows_per_page = int(self.table_rows_per_page)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]


@dataclass
class WrittenReport:
    """What :func:`write_report` wrote: ``paths`` ``{"csv", "json", "columns", ["trust", "png", "html"]: path}`` and
    the cohort figures ``summary`` (the JSON's ``summary`` block)."""

    paths: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    modalities: Sequence[str] | None = None,
    options: ReportOptions | None = None,
    **option_values: Any,
) -> WrittenReport:
    """Write the report files of ``records`` into ``output_dir``.

    Args:
        records: per-patient records (see :mod:`~monai_dymo.report.records`).
        output_dir: folder of the report files (made if needed).
        modalities: modality order of the per-modality columns (default: from the records).
        options: the report options (default :class:`ReportOptions`).
        option_values: :class:`ReportOptions` fields to set on top of ``options`` (e.g. ``html=False``).

    Returns:
        the paths written and the summary block.
    """
    options = replace(options or ReportOptions(), **option_values) if option_values else options or ReportOptions()
    output_dir = os.fspath(output_dir)
    progress = options.progress if options.progress is not None else len(records) >= PROGRESS_MIN_PATIENTS
    if options.pseudonymize_key is not None:
        records = pseudonymize_records(records, options.pseudonymize_key)
    records = with_class_names(records, options.class_names)
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    groups = clinical_groups(records)
    extra = options.summary_extra(records) if callable(options.summary_extra) else options.summary_extra
    extra = dict(extra or {})
    clinical = clinical_summary(records, options.class_names)
    if clinical is not None:  # labelled records: the clinicians' metrics and the calibration of the probabilities
        extra = {**clinical, **extra}
    trust = trust_summary(records)
    if trust is not None:  # the margin in force and the refer rule of this run in the summary block too
        extra = {**trust, **extra}
    alone = single_modality_summary(records, modalities)
    if alone is not None:
        extra = {"single_modality": alone, **extra}
    summary = report_summary(records, modalities, extra=extra)
    base = os.path.join(output_dir, options.prefix)
    paths = {
        "csv": write_report_csv(records, base + ".csv", modalities, groups, progress=progress),
        "json": write_report_json(records, base + ".json", progress=progress, summary=summary),
        "columns": write_report_dictionary(base + "_columns.csv", modalities, groups),
    }
    if trust is not None:  # the guarantees alone, for tools that read only them
        paths["trust"] = base + "_trust.json"
        with open(paths["trust"], "w", encoding="utf-8") as f:
            json.dump(plain(trust), f, indent=1, allow_nan=False)
    if options.plot:
        paths["png"] = plot_selection_summary(records, modalities, os.path.join(output_dir, options.summary_filename))
    if options.html:
        paths["html"] = write_report_html(
            records,
            base + ".html",
            modalities,
            summary_png=paths.get("png"),
            files={k: paths[k] for k in ("csv", "json", "columns", "trust") if k in paths},
            max_patient_pages=options.max_patient_pages,
            table_rows_per_page=options.table_rows_per_page,
            progress=progress,
            pseudonymised=options.pseudonymize_key is not None,
            summary=summary,
            template_dir=options.template_dir,
        )
    return WrittenReport(paths=paths, summary=summary)
