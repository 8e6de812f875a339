"""DyMo evaluation engine: :class:`monai.engines.SupervisedEvaluator` with multimodal batches and selection records."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import Decollated, Transform
from monai.utils import ForwardMode, IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys

from ..handlers.progress import attach_progress_bar
from ..inferers import DyMoInferer
from ..keys import DyMoKeys, Reason
from .batches import PrepareDyMoEvalBatch, unpack_batch

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
    EventEnum, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum")

__all__ = ["PrepareDyMoEvalBatch", "DyMoEvaluator"]


class DyMoEvaluator(SupervisedEvaluator):
    """Supervised evaluator running DyMo selection on every batch.

    Batches are dictionaries with one tensor per modality, ``present`` ``[B, M]``, ``modality_reasons``,
    ``patient_id`` and (optionally) ``label``. Each iteration sets ``engine.state.output`` to::

        {"pred": logits[B, C], "label": label, "dymo_selection": [B records], "present": [B, M],
         "patient_id": [B ids], "error": [B error strings or None]}

    plus, with ``keep_inputs=True``, ``"dymo_inputs": {modality: Tensor[B, ...]}``: the inputs as the network saw
    them, recovered modalities filled in, so that :class:`~monai_dymo.handlers.SelectionReportWriter` can draw the
    observed and recovered images of the patients it writes pages for (it keeps downsampled pictures of those only).

    With ``decollate=True`` (default) this becomes a list of ``B`` per-patient dictionaries, each with its own record
    under ``"dymo_selection"`` (records are kept whole, not decollated), so MONAI/ignite metric handlers work with
    ``output_transform=from_engine(["pred", "label"])`` and MONAI post-transforms apply as usual.
    Patients with no modality observed get NaN logits and a record with an ``"error"`` (see ``DyMoInferer``).

    Args:
        device, val_data_loader, network: as :class:`monai.engines.SupervisedEvaluator`; ``network`` must have
            ``encode``/``fuse``/``modalities``.
        inferer: a :class:`~monai_dymo.inferers.DyMoInferer` (holds the calibration and optional recovery).
        modality_keys: batch keys of the modalities (default: ``network.modalities``).
        prepare_batch: default :class:`PrepareDyMoEvalBatch` on ``modality_keys``.
        present_key, reasons_key, patient_id_key, label_key: batch keys.
        progress: show a progress bar (ignite's ``ProgressBar``); None: when standard error is a terminal (see
            :mod:`monai_dymo.handlers.progress`).
        keep_inputs: put the (recovered) inputs of each batch into the output (turns on the inferer's
            ``keep_inputs``); off by default.
        index_key: batch key of each sample's datalist index; when the batch has it, every record gets it as
            ``"index"`` (distributed inference merges and orders the ranks' records by it). None: never.
        other args: as :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        inferer: DyMoInferer,
        modality_keys: Sequence[str] | None = None,
        present_key: str = DyMoKeys.PRESENT,
        reasons_key: str = DyMoKeys.REASONS,
        patient_id_key: str = DyMoKeys.PATIENT_ID,
        label_key: str = DyMoKeys.LABEL,
        keep_inputs: bool = False,
        index_key: str | None = DyMoKeys.INDEX,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Transform | None = None,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        mode: ForwardMode | str = ForwardMode.EVAL,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(inferer, DyMoInferer):
            raise ValueError(f"DyMoEvaluator needs a DyMoInferer, got {type(inferer).__name__}.")
        _, modalities = inferer.check_network(network)
        if modality_keys is None:
            modality_keys = modalities
        modality_keys = tuple(modality_keys)
        if len(modality_keys) != len(modalities):
            raise ValueError(f"{len(modality_keys)} modality keys {modality_keys} for network modalities {modalities}.")
        self.modality_keys = modality_keys
        self.network_modalities = modalities
        self.present_key = present_key
        self.reasons_key = reasons_key
        self.patient_id_key = patient_id_key
        self.label_key = label_key
        self.keep_inputs = bool(keep_inputs)
        if self.keep_inputs:
            inferer.keep_inputs = True
        self.index_key = index_key
        if prepare_batch is None:
            prepare_batch = PrepareDyMoEvalBatch(modality_keys, present_key=present_key, label_key=label_key)
        extra: dict[str, Any] = {}
        if metric_cmp_fn is not None:
            extra["metric_cmp_fn"] = metric_cmp_fn
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            amp=amp,
            mode=mode,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            compile=compile,
            compile_kwargs=compile_kwargs,
            **extra,
        )
        self.progress_bar = attach_progress_bar(self, progress, "DyMo evaluation")

    def _register_decollate(self) -> None:
        """Decollate like MONAI's workflows, but keep each selection record whole (one per patient)."""

        @self.on(IterationEvents.MODEL_COMPLETED)
        def _decollate_data(engine: Engine) -> None:
            transform = Decollated(keys=None, detach=True)
            if isinstance(engine.state.batch, (list, dict)):
                engine.state.batch = transform(engine.state.batch)
            output = engine.state.output
            if isinstance(output, dict):
                output = dict(output)
                records = output.pop(DyMoKeys.SELECTION, None)
                items = transform(output)
                if records is not None:
                    if len(records) != len(items):
                        raise ValueError(f"{len(records)} selection records for {len(items)} decollated outputs.")
                    for item, record in zip(items, records):
                        item[DyMoKeys.SELECTION] = record
                engine.state.output = items
            elif isinstance(output, list):
                engine.state.output = transform(output)

    def _check_reasons_match_present(
        self, reasons: Mapping[str, Sequence[str]], present: torch.Tensor | None, patient_ids: Sequence[str]
    ) -> None:
        """Raise when a modality's reason and its presence flag disagree (a mask read in another order)."""
        if present is None:
            return
        flags = present.bool().cpu().tolist()
        for i, name in enumerate(self.network_modalities):
            values = reasons.get(name)
            if values is None or isinstance(values, str):
                continue
            for b, reason in enumerate(values):
                if b < len(flags) and (str(reason) == Reason.OBSERVED.value) != bool(flags[b][i]):
                    raise ValueError(
                        f"patient {patient_ids[b]!r}, modality {name!r}: the reason says {reason!r} but the presence "
                        f"mask says {'observed' if flags[b][i] else 'missing'}; the mask and the network "
                        f"{list(self.network_modalities)} disagree on the modality order."
                    )

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        """One DyMo evaluation step; returns (and stores in ``engine.state.output``) the output dictionary."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = unpack_batch(batch)
        if isinstance(inputs, Mapping) and tuple(inputs) != self.network_modalities:
            # batch keys -> network modality names
            inputs = {name: inputs[key] for name, key in zip(self.network_modalities, self.modality_keys)}

        inferer: DyMoInferer = engine.inferer  # type: ignore[assignment]
        with engine.mode(engine.network):
            if engine.amp:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    pred = inferer(inputs, engine.network, *args, **kwargs)
            else:
                pred = inferer(inputs, engine.network, *args, **kwargs)

        batch_size = pred.shape[0]
        patient_ids = batchdata.get(self.patient_id_key) if isinstance(batchdata, Mapping) else None
        if patient_ids is None:
            patient_ids = [f"iteration{engine.state.iteration}_{i}" for i in range(batch_size)]
        elif isinstance(patient_ids, (str, bytes)) or not isinstance(patient_ids, (Sequence, torch.Tensor)):
            patient_ids = [patient_ids] * batch_size
        patient_ids = [str(p.item() if isinstance(p, torch.Tensor) else p) for p in patient_ids]
        reasons = batchdata.get(self.reasons_key) if isinstance(batchdata, Mapping) else None
        if isinstance(reasons, Mapping) and tuple(reasons) != self.network_modalities:
            reasons = {
                name: reasons[key] for name, key in zip(self.network_modalities, self.modality_keys) if key in reasons
            }
        if isinstance(reasons, Mapping):
            self._check_reasons_match_present(reasons, kwargs.get("present"), patient_ids)
        records = inferer.last_records(patient_ids=patient_ids, reasons=reasons)
        indices = None
        if self.index_key is not None and isinstance(batchdata, Mapping):
            indices = batchdata.get(self.index_key)
        if indices is not None:
            indices = torch.as_tensor(indices).reshape(-1).tolist()
            if len(indices) != len(records):
                raise ValueError(f"batch key {self.index_key!r} has {len(indices)} values for {len(records)} patients.")
            for record, index in zip(records, indices):
                record[str(DyMoKeys.INDEX)] = int(index)
        assert inferer.last_result is not None
        engine.state.output = {
            CommonKeys.PRED: pred,
            CommonKeys.LABEL: targets,
            DyMoKeys.SELECTION: records,
            DyMoKeys.PRESENT: inferer.last_result.present,
            DyMoKeys.PATIENT_ID: patient_ids,
            DyMoKeys.ERROR: [r["error"] for r in records],
        }
        if self.keep_inputs and inferer.last_inputs is not None:
            engine.state.output[DyMoKeys.INPUTS] = inferer.last_inputs
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
