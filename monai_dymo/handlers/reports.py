"""The ignite handler writing the per-patient DyMo report at the end of an evaluation (see :mod:`monai_dymo.report`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from ..report.collect import OutputKeys, in_datalist_order, records_and_inputs
from ..report.pictures import PatientPictures
from ..report.summary import summary_line
from ..report.writer import ReportOptions, write_report

idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["SelectionReportWriter"]


class SelectionReportWriter:
    """Ignite handler collecting DyMo selection records over an epoch and writing the report files.

    At ``EPOCH_COMPLETED`` it writes the report of the epoch's records into ``output_dir`` with
    :func:`~monai_dymo.report.writer.write_report` (CSV, JSON, data dictionary, summary chart, HTML pages; see
    :class:`~monai_dymo.report.writer.ReportOptions`). Works with the batched output dictionary of
    :class:`~monai_dymo.engines.evaluator.DyMoEvaluator` and with its decollated list form.

    Added to each record when available (see :func:`~monai_dymo.report.collect.records_and_inputs`): the ``label``,
    the clinical fields missing from the batch's field masks (named by ``clinical_fields``), the field notes and the
    region-of-interest guide. Pictures: when the output holds the inputs the network saw
    (``DyMoEvaluator(keep_inputs=True)``), downsampled pictures of every modality are kept for the at most
    ``max_patient_pages`` patients that get a page (see :class:`~monai_dymo.report.pictures.PatientPictures`), so
    memory stays bounded on big cohorts.

    The report holds the datalist's patient ids and what the run computed, never image metadata (e.g. DICOM header
    values such as names or birth dates are never read); ``pseudonymize_key`` replaces the ids by keyed pseudonyms. In
    distributed runs the records of all ranks are gathered (in datalist order when they carry their ``index``, see
    :func:`~monai_dymo.report.collect.in_datalist_order`) and only ``save_rank`` writes.

    Args:
        output_dir: directory of the report files.
        modalities: modality order of the per-modality columns (default: ``engine.network.modalities`` if there,
            else taken from the records).
        options: the report options (default :class:`~monai_dymo.report.writer.ReportOptions`).
        clinical_fields: ``{group: [field names in layout order]}`` (``ClinicalFieldsd.layout(group)``) to name the
            missing fields (default: ``"field 1"``, ``"field 2"``, ...).
        pictures: use the inputs in the output (if any) for pictures.
        picture_size: longest side, in pixels, of each kept picture.
        image2d_xy: 2D inputs are ``[C, x, y]`` as MONAI's ``LoadImage`` readers give a PNG / JPEG / DICOM frame
            (x = the file's columns); their pictures are transposed back to the file's own orientation. False (default)
            for ``[C, rows, columns]`` arrays (e.g. PolyMNIST). 3D volumes are drawn in radiological orientation (see
            :func:`~monai_dymo.report.pictures.image_planes`).
        print_summary: print one summary line (:func:`~monai_dymo.report.summary.summary_line`) when the report is
            written.
        output_transform: maps ``engine.state.output`` to the output dictionary (or list of per-patient dictionaries).
        batch_transform: maps ``engine.state.batch`` to the batch dictionary (or list) holding the field masks.
        keys: where the records, labels, inputs, field masks and field notes are (default
            :class:`~monai_dymo.report.collect.OutputKeys`).
        name: logger name (default: the engine's logger).
        save_rank: rank writing the files in distributed runs.
        report_options: :class:`~monai_dymo.report.writer.ReportOptions` fields set on top of ``options`` (``prefix``,
            ``plot``, ``summary_filename``, ``html``, ``max_patient_pages``, ``table_rows_per_page``, ``class_names``,
            ``summary_extra``, ``template_dir``, ``pseudonymize_key``, ``progress``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike = "./",
        *,
        modalities: Sequence[str] | None = None,
        options: ReportOptions | None = None,
        clinical_fields: Mapping[str, Sequence[str]] | None = None,
        pictures: bool = True,
        picture_size: int = 128,
        image2d_xy: bool = False,
        print_summary: bool = True,
        output_transform: Callable = lambda x: x,
        batch_transform: Callable = lambda x: x,
        keys: OutputKeys | None = None,
        name: str | None = None,
        save_rank: int = 0,
        **report_options: Any,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.modalities = list(modalities) if modalities is not None else None
        self.options = replace(options or ReportOptions(), **report_options)
        self.clinical_fields = {str(g): [str(f) for f in fs] for g, fs in (clinical_fields or {}).items()}
        self.pictures = (
            PatientPictures(self.options.max_patient_pages, picture_size, image2d_xy=image2d_xy) if pictures else None
        )
        self.print_summary = bool(print_summary)
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.keys = keys or OutputKeys()
        self.save_rank = save_rank
        self._name = name
        self.logger = logging.getLogger(name)
        self.records: list[dict[str, Any]] = []
        self.paths: dict[str, str] = {}
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if self.modalities is None:
            net = getattr(engine, "network", None)
            net = getattr(net, "module", net) if net is not None and not hasattr(net, "modalities") else net
            if net is not None and hasattr(net, "modalities"):
                self.modalities = [str(m) for m in net.modalities]
        if not engine.has_event_handler(self._started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self._finalize, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._finalize)

    def _started(self, _engine: Engine) -> None:
        self.records = []
        if self.pictures is not None:
            self.pictures.reset()

    def collect(self, output: Any, batch: Any = None) -> list[dict[str, Any]]:
        """Records (with ``label`` and clinical field gaps added when known) from one iteration's output / batch."""
        return [rec for rec, _ in records_and_inputs(output, batch, self.keys, self.clinical_fields)]

    def __call__(self, engine: Engine) -> None:
        batch = self.batch_transform(engine.state.batch) if engine.state.batch is not None else None
        output = self.output_transform(engine.state.output)
        for rec, inputs in records_and_inputs(output, batch, self.keys, self.clinical_fields):
            if self.pictures is not None:
                self.pictures.offer(rec, inputs)
            self.records.append(rec)

    def _gather(self) -> list[dict[str, Any]]:
        """Records of every rank (ignite ``idist.all_gather`` of objects; this rank's in a single process), in
        datalist order when every record carries its ``index``, otherwise concatenated in rank order."""
        records = list(self.records)
        if idist.get_world_size() > 1:
            records = [r for part in idist.all_gather(records) for r in part]
        return in_datalist_order(records)

    def write(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Write the report files for ``records`` (default: those collected) and return their paths."""
        records = self.records if records is None else list(records)
        written = write_report(records, self.output_dir, self.modalities, self.options)
        self.paths, self.summary = written.paths, written.summary
        return self.paths

    def _finalize(self, _engine: Engine) -> None:
        world = idist.get_world_size()
        if self.save_rank >= world:
            raise ValueError("target save rank is greater than the distributed group size.")
        records = self._gather()
        if idist.get_rank() == self.save_rank:
            paths = self.write(records)
            n_err = sum(r.get("error") is not None for r in records)
            self.logger.info(
                f"DyMo selection report for {len(records)} patients ({n_err} with errors): {', '.join(paths.values())}"
            )
            if self.print_summary:
                print(summary_line(self.summary, paths.get("html") or paths["csv"]), flush=True)
