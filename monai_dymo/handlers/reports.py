"""Per-patient DyMo selection reports: CSV / JSON / summary plot, and an ignite handler writing them.

Records follow the shared per-patient record format produced by
:meth:`monai_dymo.selection.SelectionResult.to_records` (``patient_id``, ``observed``, ``recovered``, ``selected``,
``accepted``, ``rejected``, ``unused``, ``quality``, ``log_ics``, ``ics``, ``prediction``, ``probability``, ``steps``,
``reasons``, ``error``), optionally with a ``label`` added by :class:`SelectionReportWriter`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys

from ..keys import DyMoKeys

idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "MODALITY_STATUSES",
    "modality_status",
    "report_modalities",
    "report_rows",
    "write_report_csv",
    "write_report_json",
    "plot_selection_summary",
    "SelectionReportWriter",
]

#: per-modality status values of the CSV report, in plotting order.
MODALITY_STATUSES = ("observed", "accepted", "rejected", "unused", "missing")

_LIST_COLUMNS = ("observed", "recovered", "selected", "accepted", "rejected", "unused")


def _names(entries: Iterable[Any]) -> list[str]:
    """Modality names of a record list (entries are names or ``{"modality": ...}`` dicts)."""
    return [e["modality"] if isinstance(e, Mapping) else str(e) for e in entries or []]


def modality_status(record: Mapping[str, Any], modality: str) -> str:
    """One of :data:`MODALITY_STATUSES`: ``missing`` = neither observed nor a candidate (e.g. a failed patient)."""
    if modality in _names(record.get("observed")):
        return "observed"
    if modality in _names(record.get("accepted")):
        return "accepted"
    if modality in _names(record.get("rejected")):
        return "rejected"
    if modality in _names(record.get("unused")):
        return "unused"
    return "missing"


def report_modalities(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modality names in order, taken from the records' ``reasons`` (all modalities, in order) or name lists."""
    out: list[str] = []
    for rec in records:
        keys = ("observed", "recovered", "selected", "unused", "accepted", "rejected")
        for name in list(rec.get("reasons") or {}) + [n for key in keys for n in _names(rec.get(key))]:
            if name not in out:
                out.append(name)
    return out


def _plain(v: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars -> Python, non-finite floats -> None."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)) and type(v).__module__ == "numpy":
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _label_value(label: Any) -> Any:
    """Class index from a label given as an int, a scalar tensor or a one-hot / probability vector."""
    if label is None:
        return None
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu()
        if label.numel() == 1:
            v = label.item()
            return int(v) if float(v).is_integer() else v
        return int(label.reshape(-1).argmax())
    if isinstance(label, float) and label.is_integer():
        return int(label)
    return _plain(label)


def report_rows(
    records: Sequence[Mapping[str, Any]], modalities: Sequence[str] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV report as ``(columns, rows)``; one row per record (records with an ``error`` included)."""
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    columns = [
        "patient_id", "label", "prediction", "probability", "correct", "quality", "ics", "log_ics", "steps",
        *_LIST_COLUMNS,
    ]
    for m in modalities:
        columns += [f"{m}_status", f"{m}_reason"]
    columns.append("error")
    rows = []
    for rec in records:
        label = _label_value(rec.get("label"))
        pred = rec.get("prediction")
        correct = "" if label is None or pred is None else int(int(pred) == label)
        row: dict[str, Any] = {
            "patient_id": rec.get("patient_id"),
            "label": label,
            "prediction": pred,
            "probability": rec.get("probability"),
            "correct": correct,
            "quality": rec.get("quality"),
            "ics": rec.get("ics"),
            "log_ics": rec.get("log_ics"),
            "steps": rec.get("steps"),
        }
        for key in _LIST_COLUMNS:
            row[key] = ";".join(_names(rec.get(key)))
        reasons = rec.get("reasons") or {}
        for m in modalities:
            row[f"{m}_status"] = modality_status(rec, m)
            row[f"{m}_reason"] = reasons.get(m)
        row["error"] = rec.get("error")
        rows.append({k: ("" if v is None else _plain(v)) for k, v in row.items()})
    return columns, rows


def write_report_csv(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike, modalities: Sequence[str] | None = None
) -> str:
    """Write one CSV row per patient (see :func:`report_rows` for the columns); returns the path."""
    columns, rows = report_rows(records, modalities)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report_json(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """Write the full records as a JSON list (non-finite numbers as ``null``); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_plain(list(records)), f, indent=2, allow_nan=False)
    return path


def plot_selection_summary(
    records: Sequence[Mapping[str, Any]], modalities: Sequence[str] | None, path: str | os.PathLike
) -> str:
    """Per-modality stacked bars of how many patients had it observed / accepted / rejected / unused / missing.

    Uses matplotlib's Agg canvas directly (no pyplot state, no backend change). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modalities = list(modalities) if modalities is not None else report_modalities(records)
    counts = {s: [0] * len(modalities) for s in MODALITY_STATUSES}
    for rec in records:
        for i, m in enumerate(modalities):
            counts[modality_status(rec, m)][i] += 1
    colors = {"observed": "#4c72b0", "accepted": "#55a868", "rejected": "#c44e52", "unused": "#bbbbbb",
              "missing": "#333333"}
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(modalities)), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bottom = [0] * len(modalities)
    x = list(range(len(modalities)))
    for status in MODALITY_STATUSES:
        if not any(counts[status]):
            continue
        ax.bar(x, counts[status], bottom=bottom, label=status, color=colors[status])
        bottom = [b + c for b, c in zip(bottom, counts[status])]
    ax.set_xticks(x)
    ax.set_xticklabels(modalities, rotation=30, ha="right")
    ax.set_ylabel("patients")
    ax.set_title(f"DyMo modality selection ({len(records)} patients)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


class SelectionReportWriter:
    """Ignite handler collecting DyMo selection records over an epoch and writing the report files.

    At ``EPOCH_COMPLETED`` it writes ``<prefix>.csv`` and ``<prefix>.json`` (default ``dymo_report.*``) and, if
    ``plot``, ``dymo_summary.png`` into ``output_dir``. Works with the batched output dictionary of
    :class:`~monai_dymo.engines.evaluator.DyMoEvaluator` and with its decollated list form. The label of each patient
    (``output["label"]``, a class index or a one-hot vector) is added to its record as ``"label"`` when available.
    In distributed runs the records of all ranks are gathered (and ordered by their datalist ``index`` when they carry
    one, see :meth:`_gather`) and only ``save_rank`` writes.

    Args:
        output_dir: directory of the report files.
        prefix: file name prefix of the CSV / JSON report.
        modalities: modality order of the per-modality columns (default: ``engine.network.modalities`` if there,
            else taken from the records).
        plot: also write the summary bar chart.
        summary_filename: file name of the chart.
        output_transform: maps ``engine.state.output`` to the output dictionary (or list of per-patient dictionaries).
        selection_key, label_key: keys of the records and labels in the output.
        name: logger name (default: the engine's logger).
        save_rank: rank writing the files in distributed runs.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike = "./",
        prefix: str = "dymo_report",
        modalities: Sequence[str] | None = None,
        plot: bool = True,
        summary_filename: str = "dymo_summary.png",
        output_transform: Callable = lambda x: x,
        selection_key: str = DyMoKeys.SELECTION,
        label_key: str = CommonKeys.LABEL,
        name: str | None = None,
        save_rank: int = 0,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.prefix = prefix
        self.modalities = list(modalities) if modalities is not None else None
        self.plot = plot
        self.summary_filename = summary_filename
        self.output_transform = output_transform
        self.selection_key = selection_key
        self.label_key = label_key
        self.save_rank = save_rank
        self._name = name
        self.logger = logging.getLogger(name)
        self.records: list[dict[str, Any]] = []
        self.paths: dict[str, str] = {}

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

    def collect(self, output: Any) -> list[dict[str, Any]]:
        """Records (with ``label`` added when known) from one iteration's output."""
        if isinstance(output, Mapping):
            if self.selection_key not in output:
                raise ValueError(f"engine output has no {self.selection_key!r} records (keys: {sorted(output)}).")
            records = list(output[self.selection_key])
            labels = output.get(self.label_key)
            if labels is None:
                labels = [None] * len(records)
            elif isinstance(labels, torch.Tensor) and labels.ndim == 0:
                labels = [labels] * len(records)
            if len(labels) != len(records):
                raise ValueError(f"{len(labels)} labels for {len(records)} selection records.")
        elif isinstance(output, Sequence):
            items = [o for o in output if isinstance(o, Mapping)]
            if len(items) != len(output) or any(self.selection_key not in o for o in items):
                raise ValueError(f"every decollated output item needs a {self.selection_key!r} record.")
            records = [o[self.selection_key] for o in items]
            labels = [o.get(self.label_key) for o in items]
        else:
            raise ValueError(f"cannot read selection records from output of type {type(output).__name__}.")
        out = []
        for rec, label in zip(records, labels):
            rec = dict(rec)
            if label is not None and rec.get("label") is None:
                rec["label"] = _label_value(label)
            out.append(rec)
        return out

    def __call__(self, engine: Engine) -> None:
        self.records.extend(self.collect(self.output_transform(engine.state.output)))

    def _gather(self) -> list[dict[str, Any]]:
        """Records of every rank (ignite ``idist.all_gather`` of objects; this rank's in a single process).

        When every record carries its datalist ``"index"`` (see :class:`~monai_dymo.engines.evaluator.DyMoEvaluator`)
        they are sorted by it and a duplicated index (e.g. samples repeated by a padding ``DistributedSampler``) is
        kept once, so the merged report has one row per datalist entry, in datalist order; otherwise the ranks'
        records are concatenated in rank order.
        """
        records = list(self.records)
        if idist.get_world_size() > 1:
            gathered = idist.all_gather(records)
            records = [r for part in gathered for r in part]
        key = str(DyMoKeys.INDEX)
        if not records or any(r.get(key) is None for r in records):
            return records
        merged: dict[int, dict[str, Any]] = {}
        for rec in records:
            merged.setdefault(int(rec[key]), rec)
        return [merged[i] for i in sorted(merged)]

    def write(self, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Write the report files for ``records`` (default: those collected) and return their paths."""
        records = self.records if records is None else list(records)
        modalities = self.modalities if self.modalities is not None else report_modalities(records)
        base = os.path.join(self.output_dir, self.prefix)
        paths = {
            "csv": write_report_csv(records, base + ".csv", modalities),
            "json": write_report_json(records, base + ".json"),
        }
        if self.plot:
            png = os.path.join(self.output_dir, self.summary_filename)
            paths["png"] = plot_selection_summary(records, modalities, png)
        self.paths = paths
        return paths

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
