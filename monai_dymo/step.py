"""One DyMo step for a batch: recover, encode once, select, and on request the predictions it is compared with.

:func:`run_dymo` is the step that the inferer, the method comparisons and the held-out certification all run: check
and align the inputs, leave out patients with nothing observed (NaN rows and an error), optionally zero the missing
modalities, recover them (the observed data always kept as given), encode every modality once, run
:func:`~monai_dymo.selection.select_modalities`, and fill the extra fields of
:class:`~monai_dymo.selection.SelectionResult` that the caller asks for (discarding, all recovered, each observed
modality alone, every prefix of the greedy path, the refer flag, the inputs as encoded).

This module never imports the networks: ``network`` is any object with ``encode(inputs) -> {name: tokens}``,
``fuse(tokens, subset[R, M]) -> (logits[R, C], z[R, D])`` and ``modalities`` (a DDP / DataParallel wrapper is
unwrapped through ``.module``); ``recovery`` is any ``recovery(inputs, present) -> {name: Tensor}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from .calibration import SubsetCalibration
from .presence import align_present
from .selection import SelectionResult, fuse_rows, select_modalities

__all__ = [
    "NO_MODALITY_ERROR",
    "RecoveryFn",
    "unwrap_network",
    "check_network",
    "check_inputs",
    "check_present",
    "zero_missing",
    "recover_missing",
    "class_or_missing",
    "run_dymo",
]

NO_MODALITY_ERROR = "no modality observed"
"""Error of a patient with no modality observed (left out of the selection, NaN logits)."""

RecoveryFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]]

_NETWORK_ATTRS = ("encode", "fuse", "modalities")


def unwrap_network(network: Any) -> Any:
    """``network``, or its ``.module`` when it is a DDP / DataParallel-style wrapper lacking encode/fuse/modalities."""
    if not all(hasattr(network, a) for a in _NETWORK_ATTRS) and hasattr(network, "module"):
        return network.module
    return network


def check_network(network: Any, calibration: SubsetCalibration) -> tuple[Any, tuple[str, ...]]:
    """The (unwrapped) network and its modality names; ``ValueError`` if it does not fit ``calibration``
    (attributes, modality names and order, classes, projection width)."""
    network = unwrap_network(network)
    missing = [a for a in _NETWORK_ATTRS if not hasattr(network, a)]
    if missing:
        raise ValueError(
            f"DyMo needs a network with encode/fuse/modalities; {type(network).__name__} lacks {missing}."
        )
    modalities = tuple(str(m) for m in network.modalities)
    if len(modalities) != calibration.num_modalities:
        raise ValueError(
            f"network has {len(modalities)} modalities {modalities}, the calibration {calibration.num_modalities}."
        )
    if calibration.modalities is not None and calibration.modalities != modalities:
        raise ValueError(
            f"network modalities {modalities} do not match the calibration's {calibration.modalities} "
            "(names and order)."
        )
    num_classes = getattr(network, "num_classes", None)
    if num_classes is not None and int(num_classes) != calibration.num_classes:
        raise ValueError(f"network has {num_classes} classes, the calibration {calibration.num_classes}.")
    proj_dim = getattr(network, "proj_dim", None)
    if proj_dim is not None and int(proj_dim) != calibration.proj_dim:
        raise ValueError(f"network projection width is {proj_dim}, the calibration's {calibration.proj_dim}.")
    return network, modalities


def check_inputs(inputs: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{name: inputs[name]}`` in ``modalities`` order; ``ValueError`` when ``inputs`` is not a mapping, lacks a
    modality or its tensors differ in batch size."""
    if not isinstance(inputs, Mapping):
        raise ValueError(f"DyMo expects a mapping of modality tensors, got {type(inputs).__name__}.")
    absent = [m for m in modalities if m not in inputs]
    if absent:
        raise ValueError(
            f"inputs lack modalities {absent} (give missing modalities as placeholders); "
            f"keys: {sorted(map(str, inputs))}."
        )
    x = {m: inputs[m] for m in modalities}
    batch_size = x[modalities[0]].shape[0]
    for m, t in x.items():
        if t.shape[0] != batch_size:
            raise ValueError(f"modality {m!r} has batch size {t.shape[0]}, modality {modalities[0]!r} {batch_size}.")
    return x


def check_present(present: torch.Tensor, modalities: Sequence[str], batch_size: int, owner: str) -> torch.Tensor:
    """Plain ``BoolTensor[B, M]`` of ``present`` (bool or 0/1 integers; a named ``MetaTensor`` is aligned by name),
    ``ValueError`` naming ``owner`` for a wrong shape or dtype."""
    present = align_present(present, modalities, owner)
    if present.shape != (batch_size, len(modalities)):
        raise ValueError(
            f"present must be [B, M] = {(batch_size, len(modalities))} (modalities {list(modalities)}), "
            f"got {tuple(present.shape)}."
        )
    if present.dtype != torch.bool:
        if present.is_floating_point() or not ((present == 0) | (present == 1)).all():
            raise ValueError(f"present must be a bool (or 0/1 integer) tensor, got dtype {present.dtype}.")
        present = present.bool()
    return present


def zero_missing(inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero the missing modalities: ``inputs`` ``{name: [B, ...]}`` in ``present``'s column order, ``present``
    ``BoolTensor[B, M]``."""
    return {
        m: torch.where(present[:, i].reshape(-1, *([1] * (x.ndim - 1))), x, torch.zeros_like(x))
        for i, (m, x) in enumerate(inputs.items())
    }


def recover_missing(
    recovery: RecoveryFn, inputs: Mapping[str, torch.Tensor], present: torch.Tensor, modalities: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``inputs`` ``{name: [B, ...]}`` with the missing modalities (``present`` ``BoolTensor[B, M]`` False) taken
    from ``recovery(inputs, present)``; the observed ones are always kept as given. ``ValueError`` when the
    recovery's modalities differ from ``modalities`` or it returns a modality missing or of another shape."""
    rec_modalities = getattr(recovery, "modalities", None)
    if rec_modalities is not None and tuple(str(m) for m in rec_modalities) != tuple(modalities):
        raise ValueError(
            f"recovery modalities {tuple(rec_modalities)} do not match the network's {tuple(modalities)}."
        )
    out = recovery(inputs, present)
    missing = [m for m in modalities if m not in out]
    if missing:
        raise ValueError(f"recovery did not return modalities {missing}.")
    filled = {}
    for i, m in enumerate(modalities):
        x = inputs[m]
        rec = torch.as_tensor(out[m]).to(x.device)
        if rec.shape != x.shape:
            raise ValueError(f"recovery returned {m!r} of shape {tuple(rec.shape)}, input is {tuple(x.shape)}.")
        keep = present[:, i].reshape(-1, *([1] * (x.ndim - 1)))
        filled[m] = torch.where(keep, x, rec.to(x.dtype))
    return filled


def class_or_missing(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over the last dim of ``logits [..., C]`` -> ``LongTensor[...]``, ``-1`` where a row is NaN (a
    patient or modality not processed)."""
    return torch.where(torch.isnan(logits).any(-1), -1, logits.argmax(-1))


@torch.no_grad()
def run_dymo(
    network: Any,
    calibration: SubsetCalibration,
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    *,
    recovery: RecoveryFn | None = None,
    hide_missing: bool = False,
    temperature: float = 0.1,
    margin: float = 0.0,
    compare: bool = False,
    alone: bool = False,
    prefixes: bool = False,
    refer_rule: Mapping[str, Any] | None = None,
    keep_inputs: bool = False,
    encode_args: Sequence[Any] = (),
    encode_kwargs: Mapping[str, Any] | None = None,
) -> SelectionResult:
    """DyMo on a batch of ``B`` patients, ``M`` modalities, ``C`` classes (method section 4).

    Args:
        network: ``encode`` / ``fuse`` / ``modalities`` (see the module docstring), fitting ``calibration``.
        calibration: the network's :class:`~monai_dymo.calibration.SubsetCalibration`.
        inputs: ``{name: Tensor[B, ...]}``, one entry per network modality (missing ones as placeholders); other
            keys are ignored.
        present: ``BoolTensor[B, M]`` (or 0/1 integers; a named ``MetaTensor`` is aligned by name), True = observed.
        recovery: fills the missing modalities before encoding (skipped when nothing is missing); None: the inputs
            of missing modalities are encoded as given.
        hide_missing: zero the missing modalities first (the recovery never sees them; simulated missingness).
        temperature, margin: of :func:`~monai_dymo.selection.select_modalities`.
        compare: fill ``discard_logits`` and ``all_recovered_logits``.
        alone: fill ``alone_logits`` (each observed modality alone).
        prefixes: fill ``prefix_logits`` (every prefix of the greedy path).
        refer_rule: a refer rule (:func:`monai_dymo.certification.refer_for_margin`): fill ``refer`` /
            ``refer_reasons`` for the final prediction, its probability at the rule's ``probability_temperature``
            (and its class, for a per-class rule).
        keep_inputs: fill ``inputs`` (as encoded; as given, or zeroed, for patients with nothing observed).
        encode_args, encode_kwargs: passed on to ``network.encode``.

    Returns:
        :class:`~monai_dymo.selection.SelectionResult` over all ``B`` patients; a patient with nothing observed has
        NaN logits and ``errors[b] =`` :data:`NO_MODALITY_ERROR`.
    """
    net, modalities = check_network(network, calibration)
    x = check_inputs(inputs, modalities)
    batch_size = x[modalities[0]].shape[0]
    device = x[modalities[0]].device
    present = check_present(present, modalities, batch_size, "run_dymo").to(device)
    if hide_missing:
        x = zero_missing(x, present)

    valid = present.any(1)
    index = None if bool(valid.all()) else valid.nonzero().squeeze(1)  # patients with something observed
    xv = x if index is None else {m: t.index_select(0, index) for m, t in x.items()}
    pv = present if index is None else present.index_select(0, index)
    if pv.shape[0] == 0:
        result = SelectionResult.empty(
            calibration.num_modalities, calibration.num_classes, calibration.proj_dim, device=device
        )
        result = _fill_requested(net.fuse, {}, result, compare, alone, prefixes)
    else:
        if recovery is not None and not bool(pv.all()):
            xv = recover_missing(recovery, xv, pv, modalities)
        tokens = net.encode(xv, *encode_args, **(encode_kwargs or {}))
        result = select_modalities(
            net.fuse, tokens, pv, calibration, temperature=temperature, modalities=modalities, margin=margin
        )
        result = _fill_requested(net.fuse, tokens, result, compare, alone, prefixes)
    if index is not None:
        result = result.expand(index, batch_size, present, NO_MODALITY_ERROR)
    if keep_inputs:  # as encoded; as given (or zeroed) for the patients left out
        seen = xv if index is None else {m: x[m].index_copy(0, index, xv[m].to(x[m].dtype)) for m in modalities}
        result = replace(result, inputs={m: t.detach() for m, t in seen.items()})
    if refer_rule is not None:
        from .certification import refer_decisions

        prob, pred = result.probabilities(refer_rule.get("probability_temperature", 1.0)).max(-1)
        pred = torch.where(torch.isnan(prob), -1, pred).tolist()
        decisions = refer_decisions(prob.tolist(), refer_rule, prediction=[None if c < 0 else c for c in pred])
        result = replace(
            result,
            refer=torch.tensor([bool(r) for r, _ in decisions], dtype=torch.bool, device=device),
            refer_reasons=[why for _, why in decisions],
        )
    return result


def _fill_requested(
    fuse: Callable, tokens: Mapping[str, torch.Tensor], result: SelectionResult, compare: bool, alone: bool,
    prefixes: bool,
) -> SelectionResult:
    """``result`` (every patient processed) with the requested comparison logits; rows fused on ``tokens``."""
    present = result.present
    B, M = present.shape
    C = result.logits.shape[1]

    def nan(*shape: int) -> torch.Tensor:
        return torch.full(shape, float("nan"), dtype=result.logits.dtype, device=present.device)

    extra: dict[str, torch.Tensor] = {}
    if compare:
        extra["discard_logits"] = fuse_rows(fuse, tokens, present)[0] if B else nan(0, C)
        extra["all_recovered_logits"] = fuse_rows(fuse, tokens, torch.ones_like(present))[0] if B else nan(0, C)
    if alone:
        extra["alone_logits"] = out = nan(B, M, C)
        b, m = present.nonzero(as_tuple=True)
        if b.numel():
            out[b, m] = fuse_rows(fuse, tokens, torch.nn.functional.one_hot(m, M).bool(), b)[0].to(out.dtype)
    if prefixes:
        extra["prefix_logits"] = out = nan(B, M + 1, C)
        if B:
            # prefix k of patient b: observed + the recoveries accepted at rounds < k, for k = 0..steps[b]
            after = torch.where(result.accepted, result.accept_step, torch.full_like(result.accept_step, M + 1))
            rows = [(result.steps >= k).nonzero().squeeze(1) for k in range(int(result.steps.max()) + 1)]
            rb = torch.cat(rows)
            rk = torch.cat([torch.full_like(r, k) for k, r in enumerate(rows)])
            subset = present.index_select(0, rb) | (after.index_select(0, rb) < rk[:, None])
            out[rb, rk] = fuse_rows(fuse, tokens, subset, rb)[0].to(out.dtype)
    return replace(result, **extra) if extra else result
