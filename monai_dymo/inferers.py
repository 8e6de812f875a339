"""MONAI inferer running DyMo inference-time modality selection."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from monai.inferers import Inferer

from .calibration import SubsetCalibration
from .certification import refer_decisions, refer_for_margin, resolve_margin, rule_threshold
from .keys import DyMoKeys
from .report.records import selection_records
from .selection import SelectionResult
from .step import (
    NO_MODALITY_ERROR,
    check_inputs,
    check_network,
    check_present,
    class_or_missing,
    run_dymo,
    unwrap_network,
)

__all__ = ["DyMoInferer", "NO_MODALITY_ERROR", "ObservedSubsetInferer"]


class DyMoInferer(Inferer):
    """Inferer for a DyMo fusion network: optional recovery, one encoding pass, batched greedy selection.

    ``network`` is duck typed: it needs ``encode(inputs) -> {name: tokens[B, n, d]}``,
    ``fuse(tokens, subset[B, M]) -> (logits[B, C], z[B, D])`` and ``modalities`` (names in subset-bit order)
    (``DynamicFusionTransformer`` qualifies; a ``DataParallel``/DDP wrapper is unwrapped through ``.module``).

    Args:
        calibration: the fitted :class:`~monai_dymo.calibration.SubsetCalibration` of ``network``; it is moved lazily
            (once per device) to the device of the inputs.
        recovery: optional ``recovery(inputs, present) -> {name: Tensor}`` (e.g. a MoPoE recovery network); when given
            it generates the missing modalities before encoding (the observed ones are always kept as they came).
            Without it, the inputs of missing modalities are used as given (e.g. recovered upstream).
        temperature: ``tau`` of the quality score.
        on_empty: what to do with a patient with no modality observed: ``"report"`` leaves it out of the selection,
            gives it NaN logits and a record with ``error = "no modality observed"``; ``"raise"`` raises ``ValueError``.
        keep_inputs: keep, in :attr:`last_inputs`, the inputs of the last call as the network saw them (``{name:
            Tensor[B, ...]}``, recovered modalities filled in, detached): for report pictures. Off by default, as it
            holds one batch of inputs (on their device) until the next call.
        margin: reward margin of the selection (:func:`~monai_dymo.selection.select_modalities`): a recovered
            modality is accepted only if its reward is ``> margin``; 0 is docs/method.md's rule; ``"certified"``
            uses the margin certified on held-out data and saved in the calibration file
            (:mod:`monai_dymo.certification`; ``inf`` when none was certified: recoveries never accepted).
        refer_alpha, refer_delta: the refer flag: a patient is not referred when the calibrated probability of the
            final prediction reaches the threshold learned on the calibration file's held-out outcomes so that (``pac``)
            the error among patients not referred is ``<= refer_alpha`` with probability ``>= 1 - refer_delta``
            (:func:`~monai_dymo.certification.refer_for_margin`). ``refer_alpha=None``: no refer flag.
        refer_guarantee: ``"pac"``, ``"expected"`` or ``"auto"`` (``pac`` from 200 held-out patients on, else
            ``expected``), see :func:`~monai_dymo.certification.refer_for_margin`.
        refer_per_class: one threshold per predicted class (True), one for all (False) or ``"auto"`` (per class when
            a class has under 20 % of the held-out patients).
        margin_source: None, or ``"independent"``: ``margin`` was fixed without looking at the held-out patients
            (:func:`~monai_dymo.certification.resolve_margin`).
        single_modality: also classify every patient from each OBSERVED modality alone (one extra fused row per
            observed modality; records get ``alone: {modality: class or None}``), so the report shows what each
            encoder has learnt; never used for the prediction.

    Probabilities are calibrated: ``softmax(logits / T)`` with the calibration file's ``probability_temperature``
    ``T`` (1 for files without one), in the records (``probability``, ``probabilities``) and for the refer flag.

    After each call, :attr:`last_result` holds the :class:`~monai_dymo.selection.SelectionResult` of the batch (one
    row per input patient) and :meth:`last_records` turns it into per-patient reliability records
    (:class:`~monai_dymo.engines.evaluator.DyMoEvaluator` stores them in ``engine.state.output["dymo_selection"]``).
    Selection runs under ``torch.no_grad()``.
    """

    def __init__(
        self,
        calibration: SubsetCalibration,
        recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
        temperature: float = 0.1,
        on_empty: str = "report",
        keep_inputs: bool = False,
        margin: float | str = 0.0,
        refer_alpha: float | None = None,
        refer_delta: float = 0.1,
        single_modality: bool = True,
        refer_guarantee: str = "auto",
        refer_per_class: bool | str = "auto",
        margin_source: str | None = None,
    ) -> None:
        super().__init__()
        self.single_modality = bool(single_modality)
        if not isinstance(calibration, SubsetCalibration):
            raise ValueError(f"calibration must be a SubsetCalibration, got {type(calibration).__name__}.")
        if on_empty not in ("report", "raise"):
            raise ValueError(f"on_empty must be 'report' or 'raise', got {on_empty!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.calibration = calibration
        self.recovery = recovery
        self.margin, self.margin_source = resolve_margin(margin, calibration.certification, margin_source)
        self.temperature = float(temperature)
        self.probability_temperature = calibration.probability_temperature
        self.refer_rule = (
            None
            if refer_alpha is None
            else refer_for_margin(
                calibration.certification, self.margin, self.margin_source, refer_alpha, refer_delta,
                per_class=refer_per_class, guarantee=refer_guarantee, num_classes=calibration.num_classes,
                probability_temperature=self.probability_temperature,
            )
        )
        self.refer_alpha = refer_alpha
        self.refer_delta = float(refer_delta)
        self.on_empty = on_empty
        self.keep_inputs = bool(keep_inputs)
        self.last_inputs: dict[str, torch.Tensor] | None = None
        self.last_result: SelectionResult | None = None
        self.last_modalities: tuple[str, ...] | None = None
        self._calibration_by_device: dict[torch.device, SubsetCalibration] = {calibration.device: calibration}

    # ------------------------------------------------------------------ helpers
    def calibration_on(self, device: torch.device) -> SubsetCalibration:
        """The calibration on ``device`` (moved once, then cached)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._calibration_by_device:
            self._calibration_by_device[device] = self.calibration.to(device)
        return self._calibration_by_device[device]

    def check_network(self, network: Any) -> tuple[Any, tuple[str, ...]]:
        """Return the (unwrapped) network and its modality names; ``ValueError`` if it does not fit the calibration."""
        return check_network(network, self.calibration)

    @staticmethod
    def _present(
        present: torch.Tensor | None, inputs: Mapping[str, Any], batch_size: int, modalities: Sequence[str], device
    ) -> torch.Tensor:
        if present is None:
            present = inputs.get(DyMoKeys.PRESENT) if isinstance(inputs, Mapping) else None
        if present is None:  # no missingness information: every modality is observed
            return torch.ones(batch_size, len(modalities), dtype=torch.bool, device=device)
        return check_present(present, modalities, batch_size, "DyMoInferer").to(device)

    # ------------------------------------------------------------------ call
    def __call__(  # type: ignore[override]
        self,
        inputs: Mapping[str, torch.Tensor],
        network: Any,
        *args: Any,
        present: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Return the logits ``[B, C]`` of the selected subsets (NaN rows for patients with nothing observed).

        Args:
            inputs: ``{name: Tensor[B, ...]}``, one entry per network modality (missing ones as placeholders).
            network: fusion network with ``encode``/``fuse``/``modalities``.
            args, kwargs: forwarded to ``network.encode``.
            present: ``BoolTensor[B, M]`` (default: ``inputs["present"]`` if there, else all observed).
        """
        net, modalities = self.check_network(network)
        x = check_inputs(inputs, modalities)
        batch_size = x[modalities[0]].shape[0]
        device = x[modalities[0]].device
        present_t = self._present(present, inputs, batch_size, modalities, device)
        if self.on_empty == "raise" and not bool(present_t.any(1).all()):
            empty_idx = (~present_t.any(1)).nonzero().squeeze(1).tolist()
            raise ValueError(f"patient(s) at batch index {empty_idx} have no modality observed.")
        result = run_dymo(
            net,
            self.calibration_on(device),
            x,
            present_t,
            recovery=self.recovery,
            temperature=self.temperature,
            margin=self.margin,
            alone=self.single_modality,
            keep_inputs=self.keep_inputs,
            encode_args=args,
            encode_kwargs=kwargs,
        )
        self.last_inputs = result.inputs
        self.last_result = result
        self.last_modalities = modalities
        return result.logits

    def last_records(
        self,
        patient_ids: Sequence[Any] | None = None,
        reasons: Mapping[str, Sequence[str]] | Sequence[Mapping[str, str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Per-patient reliability records of the last call (see :func:`monai_dymo.report.selection_records`), with
        the calibrated probabilities."""
        if self.last_result is None or self.last_modalities is None:
            raise RuntimeError("DyMoInferer.last_records() called before the inferer was run.")
        records = selection_records(self.last_result, self.last_modalities, patient_ids=patient_ids, reasons=reasons,
                                    probability_temperature=self.probability_temperature)
        if self.last_result.alone_logits is not None:  # each observed modality alone (None where missing)
            alone = class_or_missing(self.last_result.alone_logits).tolist()
            for rec, row in zip(records, alone):
                rec["alone"] = {m: (None if c < 0 else int(c)) for m, c in zip(self.last_modalities, row)}
        return self.add_trust_fields(records)

    def add_trust_fields(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add ``margin`` / ``margin_source`` (the reward margin in force and why), ``probability_temperature`` and,
        with ``refer_alpha`` set, ``refer`` / ``refer_reason`` / ``refer_threshold`` (the threshold that applied to the
        patient: its predicted class's for a per-class rule; None without a rule or a prediction) /
        ``refer_alpha`` / ``refer_delta`` / ``refer_guarantee`` / ``refer_per_class`` to each record (whose
        ``probability`` is the calibrated one)."""
        rule = self.refer_rule
        decisions = (
            refer_decisions([r.get("probability") for r in records], rule,
                            prediction=[r.get("prediction") for r in records])
            if self.refer_alpha is not None
            else None
        )
        for i, rec in enumerate(records):
            rec["margin"] = self.margin if self.margin != float("inf") else "inf"
            rec["margin_source"] = self.margin_source
            rec["probability_temperature"] = self.probability_temperature
            if decisions is not None:
                rec["refer"], rec["refer_reason"] = decisions[i]
                pooled = rule is not None and not rule.get("per_class")
                rec["refer_threshold"] = (
                    None if rule is None or (not pooled and rec.get("prediction") is None)
                    else rule_threshold(rule, rec.get("prediction"))
                )
                rec["refer_alpha"] = float(self.refer_alpha)  # type: ignore[arg-type]
                rec["refer_delta"] = self.refer_delta
                rec["refer_guarantee"] = None if rule is None else rule["guarantee"]
                rec["refer_per_class"] = None if rule is None else bool(rule["per_class"])
        return records


class ObservedSubsetInferer(Inferer):
    """Fusion on each patient's observed modalities only ("discard the missing ones"): ``logits [B, C]``.

    The validation inferer of subset-augmented training on naturally incomplete data (no calibration needed), and the
    "observed only" baseline. ``network`` needs ``encode``/``fuse``/``modalities`` (a DDP / DataParallel wrapper is
    unwrapped through ``.module``). Patients with nothing observed get NaN logits.
    """

    def __call__(  # type: ignore[override]
        self, inputs: Mapping[str, torch.Tensor], network: Any, *args: Any, present: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        network = unwrap_network(network)
        modalities = tuple(str(m) for m in network.modalities)
        x = {m: inputs[m] for m in modalities}
        batch_size = x[modalities[0]].shape[0]
        device = x[modalities[0]].device
        present_t = DyMoInferer._present(present, inputs, batch_size, modalities, device)
        valid = present_t.any(1)
        safe = torch.where(valid[:, None], present_t, torch.ones_like(present_t))
        logits, _ = network.fuse(network.encode(x, *args, **kwargs), safe)
        return torch.where(valid[:, None], logits, torch.full_like(logits, float("nan")))
