"""MONAI inferer running DyMo inference-time modality selection."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from monai.inferers import Inferer

from .calibration import SubsetCalibration
from .certification import refer_decisions, refer_for_margin, resolve_margin
from .keys import DyMoKeys
from .presence import align_present
from .selection import SelectionResult, select_modalities

__all__ = ["DyMoInferer", "NO_MODALITY_ERROR", "ObservedSubsetInferer"]

NO_MODALITY_ERROR = "no modality observed"

_NETWORK_ATTRS = ("encode", "fuse", "modalities")


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
            modality is accepted only if its reward is ``> margin``; 0 is the method page's rule; ``"certified"``
            uses the margin certified on held-out data and saved in the calibration file
            (:mod:`monai_dymo.certification`; ``inf`` when none was certified: recoveries never accepted).
        refer_alpha, refer_delta: the refer flag: a patient is not referred when the softmax probability of the final
            prediction reaches the threshold certified on the calibration file's held-out outcomes so that the error
            among patients not referred is ``<= refer_alpha`` with probability ``>= 1 - refer_delta``
            (:func:`~monai_dymo.certification.refer_for_margin`). ``refer_alpha=None``: no refer flag.
        single_modality: also classify every patient from each OBSERVED modality alone (one extra fused row per
            observed modality; records get ``alone: {modality: class or None}``), so the report shows what each
            encoder has learnt; never used for the prediction.

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
    ) -> None:
        super().__init__()
        self.single_modality = bool(single_modality)
        self.last_alone: torch.Tensor | None = None
        if not isinstance(calibration, SubsetCalibration):
            raise ValueError(f"calibration must be a SubsetCalibration, got {type(calibration).__name__}.")
        if on_empty not in ("report", "raise"):
            raise ValueError(f"on_empty must be 'report' or 'raise', got {on_empty!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.calibration = calibration
        self.recovery = recovery
        self.margin, self.margin_source = resolve_margin(margin, calibration.certification)
        self.temperature = float(temperature)
        self.refer_rule = (
            None
            if refer_alpha is None
            else refer_for_margin(calibration.certification, self.margin, self.margin_source, refer_alpha, refer_delta)
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
        if not all(hasattr(network, a) for a in _NETWORK_ATTRS) and hasattr(network, "module"):
            network = network.module
        missing = [a for a in _NETWORK_ATTRS if not hasattr(network, a)]
        if missing:
            raise ValueError(
                f"DyMoInferer needs a network with encode/fuse/modalities; {type(network).__name__} lacks {missing}."
            )
        modalities = tuple(str(m) for m in network.modalities)
        calib = self.calibration
        if len(modalities) != calib.num_modalities:
            raise ValueError(
                f"network has {len(modalities)} modalities {modalities}, the calibration {calib.num_modalities}."
            )
        if calib.modalities is not None and calib.modalities != modalities:
            raise ValueError(
                f"network modalities {modalities} do not match the calibration's {calib.modalities} (names and order)."
            )
        num_classes = getattr(network, "num_classes", None)
        if num_classes is not None and int(num_classes) != calib.num_classes:
            raise ValueError(f"network has {num_classes} classes, the calibration {calib.num_classes}.")
        proj_dim = getattr(network, "proj_dim", None)
        if proj_dim is not None and int(proj_dim) != calib.proj_dim:
            raise ValueError(f"network projection width is {proj_dim}, the calibration's {calib.proj_dim}.")
        return network, modalities

    @staticmethod
    def _present(
        present: torch.Tensor | None, inputs: Mapping[str, Any], batch_size: int, modalities: Sequence[str], device
    ) -> torch.Tensor:
        if present is None:
            present = inputs.get(DyMoKeys.PRESENT) if isinstance(inputs, Mapping) else None
        if present is None:  # no missingness information: every modality is observed
            return torch.ones(batch_size, len(modalities), dtype=torch.bool, device=device)
        present = align_present(present, modalities, "DyMoInferer")
        if present.shape != (batch_size, len(modalities)):
            raise ValueError(
                f"present must be [B, M] = {(batch_size, len(modalities))} (modalities {list(modalities)}), "
                f"got {tuple(present.shape)}."
            )
        if present.dtype != torch.bool:
            if present.is_floating_point() or not ((present == 0) | (present == 1)).all():
                raise ValueError(f"present must be a bool (or 0/1 integer) tensor, got dtype {present.dtype}.")
            present = present.bool()
        return present.to(device)

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
        if not isinstance(inputs, Mapping):
            raise ValueError(f"DyMoInferer expects a mapping of modality tensors, got {type(inputs).__name__}.")
        absent = [m for m in modalities if m not in inputs]
        if absent:
            raise ValueError(
                f"inputs lack modalities {absent} (give missing modalities as placeholders); keys: {sorted(inputs)}."
            )
        x = {m: inputs[m] for m in modalities}
        batch_size = x[modalities[0]].shape[0]
        for m, t in x.items():
            if t.shape[0] != batch_size:
                raise ValueError(
                    f"modality {m!r} has batch size {t.shape[0]}, modality {modalities[0]!r} {batch_size}."
                )
        device = x[modalities[0]].device
        present_t = self._present(present, inputs, batch_size, modalities, device)
        calib = self.calibration_on(device)

        valid = present_t.any(1)
        n_valid = int(valid.sum())
        if n_valid < batch_size:
            empty_idx = (~valid).nonzero().squeeze(1).tolist()
            if self.on_empty == "raise":
                raise ValueError(f"patient(s) at batch index {empty_idx} have no modality observed.")
        index = valid.nonzero().squeeze(1) if n_valid < batch_size else None
        self.last_inputs = None

        self.last_alone = None
        with torch.no_grad():
            if n_valid == 0:
                result = SelectionResult.empty(
                    calib.num_modalities, calib.num_classes, calib.proj_dim, device=device
                ).expand(torch.zeros(0, dtype=torch.long, device=device), batch_size, present_t, NO_MODALITY_ERROR)
            else:
                x_v = x if index is None else {m: t.index_select(0, index) for m, t in x.items()}
                present_v = present_t if index is None else present_t.index_select(0, index)
                if self.recovery is not None and not bool(present_v.all()):
                    x_v = self._recover(x_v, present_v, modalities)
                tokens = net.encode(x_v, *args, **kwargs)
                result = select_modalities(
                    net.fuse,
                    tokens,
                    present_v,
                    calib,
                    temperature=self.temperature,
                    modalities=modalities,
                    margin=self.margin,
                )
                alone = self._alone(net, tokens, present_v) if self.single_modality else None
                if index is not None:
                    result = result.expand(index, batch_size, present_t, NO_MODALITY_ERROR)
                    if alone is not None:
                        alone = torch.full_like(present_t, -1, dtype=torch.long).index_copy(0, index, alone)
                self.last_alone = alone
                if self.keep_inputs:
                    self.last_inputs = {
                        m: (x_v[m] if index is None else x[m].index_copy(0, index, x_v[m].to(x[m].dtype))).detach()
                        for m in modalities
                    }
            if self.keep_inputs and self.last_inputs is None:
                self.last_inputs = {m: x[m].detach() for m in modalities}
        self.last_result = result
        self.last_modalities = modalities
        return result.logits

    @staticmethod
    def _alone(net: Any, tokens: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """The fusion network's class from each OBSERVED modality alone: ``LongTensor [B, M]``, -1 where missing (a
        recovery is never judged alone). Shows which encoders read their modality (the report's "alone" columns)."""
        out = torch.full(present.shape, -1, dtype=torch.long, device=present.device)
        for i in range(present.shape[1]):
            rows = present[:, i].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            subset = torch.zeros(rows.numel(), present.shape[1], dtype=torch.bool, device=present.device)
            subset[:, i] = True
            logits = net.fuse({m: t.index_select(0, rows) for m, t in tokens.items()}, subset)[0]
            out[rows, i] = logits.argmax(-1)
        return out

    def _recover(
        self, x: Mapping[str, torch.Tensor], present: torch.Tensor, modalities: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        assert self.recovery is not None
        rec_modalities = getattr(self.recovery, "modalities", None)
        if rec_modalities is not None and tuple(str(m) for m in rec_modalities) != tuple(modalities):
            raise ValueError(
                f"recovery modalities {tuple(rec_modalities)} do not match the network's {tuple(modalities)}."
            )
        out = self.recovery(x, present)
        missing = [m for m in modalities if m not in out]
        if missing:
            raise ValueError(f"recovery did not return modalities {missing}.")
        filled = {}
        for i, m in enumerate(modalities):
            rec = torch.as_tensor(out[m]).to(x[m].device)
            if rec.shape != x[m].shape:
                raise ValueError(f"recovery returned {m!r} of shape {tuple(rec.shape)}, input is {tuple(x[m].shape)}.")
            keep = present[:, i].reshape(-1, *([1] * (x[m].ndim - 1)))
            filled[m] = torch.where(keep, x[m], rec.to(x[m].dtype))  # observed data always kept as given
        return filled

    def last_records(
        self,
        patient_ids: Sequence[Any] | None = None,
        reasons: Mapping[str, Sequence[str]] | Sequence[Mapping[str, str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Per-patient reliability records of the last call (see :meth:`SelectionResult.to_records`)."""
        if self.last_result is None or self.last_modalities is None:
            raise RuntimeError("DyMoInferer.last_records() called before the inferer was run.")
        records = self.last_result.to_records(self.last_modalities, patient_ids=patient_ids, reasons=reasons)
        if self.last_alone is not None:  # each observed modality alone (None where missing)
            alone = self.last_alone.tolist()
            for rec, row in zip(records, alone):
                rec["alone"] = {m: (None if c < 0 else int(c)) for m, c in zip(self.last_modalities, row)}
        return self.add_trust_fields(records)

    def add_trust_fields(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add ``margin`` / ``margin_source`` (the reward margin in force and why) and, with ``refer_alpha`` set,
        ``refer`` / ``refer_reason`` / ``refer_threshold`` / ``refer_alpha`` / ``refer_delta`` to each record."""
        decisions = (
            refer_decisions([r.get("probability") for r in records], self.refer_rule)
            if self.refer_alpha is not None
            else None
        )
        threshold = None if self.refer_rule is None else float(self.refer_rule["threshold"])
        for i, rec in enumerate(records):
            rec["margin"] = self.margin if self.margin != float("inf") else "inf"
            rec["margin_source"] = self.margin_source
            if decisions is not None:
                rec["refer"], rec["refer_reason"] = decisions[i]
                rec["refer_threshold"] = threshold
                rec["refer_alpha"] = float(self.refer_alpha)  # type: ignore[arg-type]
                rec["refer_delta"] = self.refer_delta
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
        if not all(hasattr(network, a) for a in _NETWORK_ATTRS) and hasattr(network, "module"):
            network = network.module
        modalities = tuple(str(m) for m in network.modalities)
        x = {m: inputs[m] for m in modalities}
        batch_size = x[modalities[0]].shape[0]
        device = x[modalities[0]].device
        present_t = DyMoInferer._present(present, inputs, batch_size, modalities, device)
        valid = present_t.any(1)
        safe = torch.where(valid[:, None], present_t, torch.ones_like(present_t))
        logits, _ = network.fuse(network.encode(x, *args, **kwargs), safe)
        return torch.where(valid[:, None], logits, torch.full_like(logits, float("nan")))
