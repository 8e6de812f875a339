"""Batched greedy dynamic modality selection (DyMo method, section 4).

:func:`select_modalities` runs the selection for a whole batch: the encoders are *not* called here (the caller encodes
every modality once, recovered ones included); each greedy step makes a single call of the fusion function with one row
per (unfinished patient, candidate modality). The score of the current subset is never recomputed (it is the score of
the candidate accepted at the previous step, or of the observed set), and there is no final extra pass: the logits
returned are those of the last accepted candidate. ``fuse`` therefore sees exactly
``B + (number of candidate evaluations)`` rows in total.

This module never imports networks: ``fuse`` is any callable ``(tokens, subset[R, M]) -> (logits[R, C], z[R, D])``.
If it also takes an ``index`` keyword (``fuse(tokens, subset, index=LongTensor[R])``: row ``r`` uses the tokens of
patient ``index[r]``, as :meth:`monai_dymo.networks.fusion.DynamicFusionTransformer.fuse` does), the candidate rows
are passed as patient indices instead of copies of the tokens, so ``fuse`` can share per-patient work across rows.
The selection runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from .calibration import SubsetCalibration
from .fuse_protocol import FuseFn, takes_index
from .presence import align_present
from .similarity import prototype_logits
from .subsets import mask_to_code

__all__ = [
    "SelectionResult",
    "select_modalities",
    "quality_score",
    "log_ics_score",
    "calibration_factor",
    "selection_reward",
    "fuse_rows",
]


_LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------- scores
def quality_score(
    z: torch.Tensor, overall: torch.Tensor, temperature: float = 0.1, metric: str = "cosine"
) -> torch.Tensor:
    """Quality ``q(S)`` of projections ``z`` ``[R, D]`` against the overall prototypes ``[C, D]`` -> float64 ``[R]``.

    Cosine: ``q = max_c softmax_c(z . P_c / tau)``; Euclidean: ``q = max_c softmax_c(-||z - P_c||^2 / tau)``.
    """
    logits = prototype_logits(z.to(torch.float64), overall, temperature, metric)
    return torch.softmax(logits, dim=-1).amax(dim=-1)


def log_ics_score(
    logits: torch.Tensor, z: torch.Tensor, codes: torch.Tensor, calibration: SubsetCalibration
) -> torch.Tensor:
    """In-class Gaussian score ``log p(S)`` in float64, ``[R]``.

    ``c = argmax logits`` (``[R, C]``), ``mu``/``sigma`` of the row's subset ``codes`` (``[R]``) and class ``c``,
    ``d = 1 - z . mu`` (cosine) or ``||z - mu||`` (Euclidean), ``log p = log 2 + log Phi(-d / sigma)``.
    """
    c_hat = logits.argmax(dim=-1)
    mu = calibration.prototypes[codes, c_hat]  # [R, D]
    sigma = calibration.sigma[codes, c_hat]  # [R]
    z64 = z.to(torch.float64)
    if calibration.metric == "cosine":
        d = 1.0 - (z64 * mu).sum(-1)
    else:
        d = (z64 - mu).norm(dim=-1)
    return _LOG2 + torch.special.log_ndtr(-d / sigma)


def calibration_factor(
    log_p_current: torch.Tensor, log_p_candidate: torch.Tensor, metric: str = "cosine"
) -> torch.Tensor:
    """``G_u``: 1 unless ``p(S u {u}) < p(S)``; then ``log p(S) / log p(S u {u})`` (cosine) or
    ``p(S u {u}) / p(S)`` (Euclidean)."""
    lower = log_p_candidate < log_p_current
    if metric == "cosine":
        ratio = log_p_current / torch.where(lower, log_p_candidate, torch.full_like(log_p_candidate, -1.0))
    else:
        ratio = torch.exp(torch.where(lower, log_p_candidate - log_p_current, torch.zeros_like(log_p_candidate)))
    return torch.where(lower, ratio, torch.ones_like(ratio))


def selection_reward(
    q_current: torch.Tensor,
    log_p_current: torch.Tensor,
    q_candidate: torch.Tensor,
    log_p_candidate: torch.Tensor,
    metric: str = "cosine",
) -> torch.Tensor:
    """``r_u = q(S u {u}) * G_u - q(S)``."""
    return q_candidate * calibration_factor(log_p_current, log_p_candidate, metric) - q_current


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class SelectionResult:
    """Outcome of :func:`select_modalities` for a batch of ``B`` patients, ``M`` modalities, ``C`` classes.

    Attributes:
        selected: ``BoolTensor[B, M]`` observed + accepted modalities (the final subset).
        logits: ``Tensor[B, C]`` fusion logits on the final subset (NaN for patients that could not be processed).
        rewards: ``float64[T, B, M]`` reward of every candidate evaluated at round ``t`` (NaN where the modality was
            not a candidate of that patient at that round); ``T`` = number of rounds run for the batch.
        accepted, rejected: ``BoolTensor[B, M]`` candidates added to the subset / put in ``Bad``.
        accept_step, reject_step: ``LongTensor[B, M]`` round (0-based) of acceptance / rejection, ``-1`` if never.
        quality: ``float64[B]`` ``q`` of the final subset.
        log_ics, ics: ``float64[B]`` ``log p`` and ``p`` of the final subset.
        steps: ``LongTensor[B]`` number of accepted modalities.
        present: ``BoolTensor[B, M]`` observed modalities; every other modality is a (recovered) candidate.
        projection: ``Tensor[B, D]`` projection ``z`` of the final subset.
        errors: per-patient error message (``None`` if processed), or ``None`` when no patient failed.
        calibration_fallback: ``BoolTensor[B]``, True where some score of the patient used calibration statistics
            that fell back to pooled ones (a (subset, class) pair without enough training patients); ``None`` = none.
        quality_steps, log_ics_steps: ``float64[T + 1, B]`` ``q`` and ``log p`` of each patient's subset at the start
            of round ``t`` (row 0: the observed set; row ``T``: after the last round); row ``k <= steps[b]`` is the
            subset after ``k`` acceptances. ``None`` in results built by hand.

    Filled on request by :func:`monai_dymo.step.run_dymo` (``None`` otherwise; NaN rows for patients not processed):
        discard_logits: ``Tensor[B, C]`` fusion on the observed subset (the missing modalities discarded).
        all_recovered_logits: ``Tensor[B, C]`` fusion on every modality (all recoveries used).
        alone_logits: ``Tensor[B, M, C]`` fusion on each OBSERVED modality alone (NaN where it is missing).
        prefix_logits: ``Tensor[B, M + 1, C]`` fusion on prefix ``k`` of the greedy path (the observed set plus the
            first ``k`` accepted recoveries) for ``k = 0..steps`` (NaN beyond).
        refer, refer_reasons: ``BoolTensor[B]`` refer flag of the final prediction and why (per patient).
        inputs: ``{name: Tensor[B, ...]}`` the inputs as the encoders saw them (recoveries filled in).
    """

    selected: torch.Tensor
    logits: torch.Tensor
    rewards: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    accept_step: torch.Tensor
    reject_step: torch.Tensor
    quality: torch.Tensor
    log_ics: torch.Tensor
    ics: torch.Tensor
    steps: torch.Tensor
    present: torch.Tensor
    projection: torch.Tensor
    errors: list[str | None] | None = None
    calibration_fallback: torch.Tensor | None = None
    quality_steps: torch.Tensor | None = None
    log_ics_steps: torch.Tensor | None = None
    discard_logits: torch.Tensor | None = None
    all_recovered_logits: torch.Tensor | None = None
    alone_logits: torch.Tensor | None = None
    prefix_logits: torch.Tensor | None = None
    refer: torch.Tensor | None = None
    refer_reasons: list[str] | None = None
    inputs: dict[str, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.present.shape[0])

    @property
    def num_modalities(self) -> int:
        return int(self.present.shape[1])

    @property
    def unused(self) -> torch.Tensor:
        """``BoolTensor[B, M]`` candidates neither accepted nor rejected."""
        out = ~self.present & ~self.accepted & ~self.rejected
        if self.errors is not None:
            failed = torch.tensor([e is not None for e in self.errors], dtype=torch.bool, device=out.device)
            out &= ~failed[:, None]
        return out

    def probabilities(self, probability_temperature: float = 1.0) -> torch.Tensor:
        """``softmax(logits / probability_temperature)``, ``[B, C]`` (the temperature scaling fitted with the
        calibration, :attr:`~monai_dymo.calibration.SubsetCalibration.probability_temperature`; 1: the raw softmax)."""
        if not probability_temperature > 0:
            raise ValueError(f"probability_temperature must be > 0, got {probability_temperature}.")
        return torch.softmax(self.logits.float() / float(probability_temperature), dim=-1)

    def to(self, device: torch.device | str) -> SelectionResult:
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
            elif isinstance(value, dict):
                moved[f.name] = {k: v.to(device) for k, v in value.items()}
        return replace(self, **moved)

    def expand(self, index: torch.Tensor, batch_size: int, present: torch.Tensor, error: str) -> SelectionResult:
        """Place this result's rows at ``index`` of a batch of ``batch_size``; the other patients get NaN scores,
        no selection and ``errors[b] = error``. ``present`` is the ``[batch_size, M]`` mask of the full batch."""
        device = self.logits.device
        index = index.to(device)

        def grow(t: torch.Tensor, fill: Any, dim: int = 0) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = batch_size
            out = torch.full(shape, fill, dtype=t.dtype, device=device)
            return out.index_copy(dim, index, t)

        def grow_opt(t: torch.Tensor | None, fill: Any, dim: int = 0) -> torch.Tensor | None:
            return None if t is None else grow(t, fill, dim)

        errors = [error] * batch_size
        inner = self.errors or [None] * self.batch_size
        reasons = None if self.refer_reasons is None else ["not processed"] * batch_size
        for i, b in enumerate(index.tolist()):
            errors[b] = inner[i]
            if reasons is not None:
                reasons[b] = self.refer_reasons[i]  # type: ignore[index]
        return SelectionResult(
            selected=grow(self.selected, False),
            logits=grow(self.logits, float("nan")),
            rewards=grow(self.rewards, float("nan"), dim=1),
            accepted=grow(self.accepted, False),
            rejected=grow(self.rejected, False),
            accept_step=grow(self.accept_step, -1),
            reject_step=grow(self.reject_step, -1),
            quality=grow(self.quality, float("nan")),
            log_ics=grow(self.log_ics, float("nan")),
            ics=grow(self.ics, float("nan")),
            steps=grow(self.steps, 0),
            present=present.to(device=device, dtype=torch.bool),
            projection=grow(self.projection, float("nan")),
            errors=errors,
            calibration_fallback=grow_opt(self.calibration_fallback, False),
            quality_steps=grow_opt(self.quality_steps, float("nan"), dim=1),
            log_ics_steps=grow_opt(self.log_ics_steps, float("nan"), dim=1),
            discard_logits=grow_opt(self.discard_logits, float("nan")),
            all_recovered_logits=grow_opt(self.all_recovered_logits, float("nan")),
            alone_logits=grow_opt(self.alone_logits, float("nan")),
            prefix_logits=grow_opt(self.prefix_logits, float("nan")),
            refer=grow_opt(self.refer, True),
            refer_reasons=reasons,
            inputs=None if self.inputs is None else {k: grow(v, 0) for k, v in self.inputs.items()},
        )

    @classmethod
    def empty(
        cls,
        num_modalities: int,
        num_classes: int,
        proj_dim: int,
        device: torch.device | str | None = None,
        logits_dtype: torch.dtype = torch.float32,
    ) -> SelectionResult:
        """A result with zero patients (use :meth:`expand` to build an all-failed batch)."""
        M = num_modalities
        b = torch.zeros(0, M, dtype=torch.bool, device=device)
        f64 = torch.zeros(0, dtype=torch.float64, device=device)
        return cls(
            selected=b,
            logits=torch.zeros(0, num_classes, dtype=logits_dtype, device=device),
            rewards=torch.zeros(0, 0, M, dtype=torch.float64, device=device),
            accepted=b,
            rejected=b,
            accept_step=torch.zeros(0, M, dtype=torch.long, device=device),
            reject_step=torch.zeros(0, M, dtype=torch.long, device=device),
            quality=f64,
            log_ics=f64,
            ics=f64,
            steps=torch.zeros(0, dtype=torch.long, device=device),
            present=b,
            projection=torch.zeros(0, proj_dim, dtype=logits_dtype, device=device),
            errors=[],
            quality_steps=torch.zeros(1, 0, dtype=torch.float64, device=device),
            log_ics_steps=torch.zeros(1, 0, dtype=torch.float64, device=device),
        )


# ---------------------------------------------------------------------------------------------------- selection
def fuse_rows(
    fuse: FuseFn, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, patients: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fuse`` on rows ``subset [R, M]`` of patients ``patients [R]`` (None: row ``r`` is patient ``r``) ->
    plain ``(logits [R, C], z [R, D])``; the rows are given as ``index=patients`` when ``fuse`` takes it, else as
    copies of the patients' tokens."""
    if patients is None:
        logits, z = fuse(tokens, subset)
    elif takes_index(fuse):
        logits, z = fuse(tokens, subset, index=patients)
    else:
        logits, z = fuse({name: v.index_select(0, patients) for name, v in tokens.items()}, subset)
    if type(logits) is not torch.Tensor:  # e.g. a MetaTensor: plain tensor semantics
        logits = logits.as_subclass(torch.Tensor)
    if type(z) is not torch.Tensor:
        z = z.as_subclass(torch.Tensor)
    return logits, z


def _resolve_modalities(
    tokens: Mapping[str, torch.Tensor], calibration: SubsetCalibration, modalities: Sequence[str] | None
) -> tuple[str, ...]:
    if modalities is not None:
        names = tuple(str(m) for m in modalities)
        if calibration.modalities is not None and names != calibration.modalities:
            raise ValueError(f"modalities {names} do not match the calibration's modalities {calibration.modalities}.")
    elif calibration.modalities is not None:
        names = calibration.modalities
    else:
        names = tuple(str(k) for k in tokens)
    if len(names) != calibration.num_modalities:
        raise ValueError(
            f"the calibration covers {calibration.num_modalities} modalities, got {len(names)}: {names}."
        )
    missing = [m for m in names if m not in tokens]
    extra = [k for k in tokens if k not in names]
    if missing or extra:
        raise ValueError(
            f"tokens keys {list(tokens)} do not match the modalities {list(names)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + "."
        )
    return names


def select_modalities(
    fuse: FuseFn,
    tokens: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    calibration: SubsetCalibration,
    *,
    temperature: float = 0.1,
    modalities: Sequence[str] | None = None,
    margin: float = 0.0,
) -> SelectionResult:
    """Greedy DyMo selection for a batch (method section 4).

    For each patient: ``S <- O``, ``Bad <- {}``; while candidates ``U \\ S \\ Bad`` remain, every candidate gets the
    reward ``r_u = q(S u {u}) * G_u - q(S)``; candidates with ``r_u < 0`` join ``Bad`` for good; if no reward is
    ``> margin`` the patient stops, else the best candidate joins ``S``. No label is used. ``margin = 0`` is the method
    page's rule; a positive margin (chosen on a validation split) accepts a recovered modality only when the evidence
    for it is clear, while the rejection rule (``r_u < 0``) is unchanged.

    Args:
        fuse: ``fuse(tokens, subset[R, M]) -> (logits[R, C], z[R, D])`` (e.g. ``network.fuse``); rows independent.
            If it takes an ``index`` keyword, candidate rows are given as ``fuse(tokens, subset, index=patients)``.
        tokens: ``{name: Tensor[B, n_m, d]}`` from the encoders, *every* modality included (missing ones recovered).
        present: ``BoolTensor[B, M]``, True = observed; every other modality is a candidate.
        calibration: :class:`~monai_dymo.calibration.SubsetCalibration` (moved to ``present``'s device if needed).
        temperature: ``tau`` of the quality score.
        modalities: modality order (default: ``calibration.modalities``, else the order of ``tokens``).
        margin: reward margin ``delta >= 0``: a candidate is accepted only if its reward is ``> delta`` (0: the
            docs/method.md's rule; ``inf``: recoveries are never accepted, e.g. when no margin was certified on held-out
            data, see :mod:`monai_dymo.certification`).

    Returns:
        :class:`SelectionResult`.

    Raises:
        ValueError: malformed ``present`` (shape, dtype), a patient with no observed modality, ``tokens`` keys not
            matching the modalities, ``fuse`` outputs not matching the calibration (classes, projection width), or
            non-finite ``fuse`` outputs.
    """
    if math.isnan(margin) or margin < 0:
        raise ValueError(f"margin must be a number >= 0 (inf: never accept), got {margin}.")
    with torch.no_grad():
        return _select(fuse, tokens, present, calibration, temperature, modalities, float(margin))


def _select(
    fuse: FuseFn,
    tokens: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    calibration: SubsetCalibration,
    temperature: float,
    modalities: Sequence[str] | None,
    margin: float = 0.0,
) -> SelectionResult:
    names = _resolve_modalities(tokens, calibration, modalities)
    M, C, D = len(names), calibration.num_classes, calibration.proj_dim
    if isinstance(present, torch.Tensor):
        present = align_present(present, names, "select_modalities")
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        raise ValueError(f"present must be a bool tensor [B, M], got {getattr(present, 'dtype', type(present))}.")
    if present.ndim != 2 or present.shape[1] != M:
        raise ValueError(f"present must have shape [B, {M}] (modalities {list(names)}), got {tuple(present.shape)}.")
    if type(present) is not torch.Tensor:  # e.g. a MetaTensor from a MONAI pipeline: plain tensor semantics
        present = present.as_subclass(torch.Tensor)
    B = present.shape[0]
    for name in names:
        t = tokens[name]
        if t.shape[0] != B:
            raise ValueError(f"tokens of modality {name!r} have batch size {t.shape[0]}, present has {B} patients.")
    empty = ~present.any(1)
    if bool(empty.any()):
        idx = empty.nonzero().squeeze(1).tolist()
        raise ValueError(f"patient(s) at batch index {idx} have no modality observed; DyMo needs at least one.")
    device = next(iter(tokens.values())).device
    present = present.to(device)
    calib = calibration.to(device)
    tokens = {name: tokens[name] for name in names}

    def run(subset: torch.Tensor, patients: torch.Tensor | None = None):
        rows = subset.shape[0]
        logits, z = fuse_rows(fuse, tokens, subset, patients)
        if logits.ndim != 2 or logits.shape[0] != rows or logits.shape[1] != C:
            raise ValueError(
                f"fuse returned logits of shape {tuple(logits.shape)} for {rows} rows; the calibration has {C} classes."
            )
        if z.ndim != 2 or z.shape[0] != rows or z.shape[1] != D:
            raise ValueError(
                f"fuse returned projections of shape {tuple(z.shape)} for {rows} rows; "
                f"the calibration has projection width {D}."
            )
        codes = mask_to_code(subset)
        q = quality_score(z, calib.overall, temperature, calib.metric)
        log_p = log_ics_score(logits, z, codes, calib)
        finite = torch.isfinite(logits).all(-1) & torch.isfinite(z).all(-1)
        fell_back = calib.fallback[codes, logits.argmax(dim=-1)]
        return logits, z, q, log_p, finite & ~fell_back, finite

    arange_b = torch.arange(B, device=device)
    cur_logits, cur_z, cur_q, cur_logp, plain0, finite0 = run(present)
    nonfinite = (~finite0).long()  # [B], checked once at the end (no host sync in the loop)
    fallback_rows = (finite0 & ~plain0).long()  # [B] scores that used fallback calibration statistics
    selected = present.clone()
    bad = torch.zeros_like(present)
    accept_step = torch.full((B, M), -1, dtype=torch.long, device=device)
    reject_step = torch.full((B, M), -1, dtype=torch.long, device=device)
    steps = torch.zeros(B, dtype=torch.long, device=device)
    active = (~present).any(1)
    rewards: list[torch.Tensor] = []
    q_steps, logp_steps = [cur_q], [cur_logp]
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)

    t = 0
    while True:
        cand = active[:, None] & ~selected & ~bad  # [B, M]
        idx = cand.nonzero()  # the one host sync per round
        k = idx.shape[0]
        if k == 0:
            break
        p, u = idx[:, 0], idx[:, 1]
        arange_k = torch.arange(k, device=device)
        subset = selected.index_select(0, p)
        subset[arange_k, u] = True
        logits_k, z_k, q_k, logp_k, plain_k, finite_k = run(subset, p)
        nonfinite.index_add_(0, p, (~finite_k).long())
        fallback_rows.index_add_(0, p, (finite_k & ~plain_k).long())

        r = selection_reward(cur_q[p], cur_logp[p], q_k, logp_k, calib.metric)  # [K] float64
        r_bm = torch.full((B, M), float("nan"), dtype=torch.float64, device=device)
        r_bm[p, u] = r
        rewards.append(r_bm)

        negative = r < 0
        bad[p, u] = bad[p, u] | negative
        reject_step[p, u] = torch.where(negative, torch.full_like(p, t), reject_step[p, u])

        best_r, best_u = torch.where(cand, r_bm, neg_inf).max(dim=1)
        accept = active & (best_r > margin)
        row_of = torch.full((B, M), -1, dtype=torch.long, device=device)
        row_of[p, u] = arange_k
        row = row_of[arange_b, best_u].clamp_min(0)  # rows of non-accepting patients are ignored below

        cur_logits = torch.where(accept[:, None], logits_k.index_select(0, row), cur_logits)
        cur_z = torch.where(accept[:, None], z_k.index_select(0, row), cur_z)
        cur_q = torch.where(accept, q_k.index_select(0, row), cur_q)
        cur_logp = torch.where(accept, logp_k.index_select(0, row), cur_logp)
        new = torch.nn.functional.one_hot(best_u, M).bool() & accept[:, None]
        selected |= new
        accept_step = torch.where(new, torch.full_like(accept_step, t), accept_step)
        steps += accept.long()
        active = accept
        q_steps.append(cur_q)
        logp_steps.append(cur_logp)
        t += 1

    if bool((nonfinite > 0).any()):
        idx = (nonfinite > 0).nonzero().squeeze(1).tolist()
        raise ValueError(f"fuse returned non-finite logits or projections for patient(s) at batch index {idx}.")

    rewards_t = (
        torch.stack(rewards) if rewards else torch.zeros(0, B, M, dtype=torch.float64, device=device)
    )
    return SelectionResult(
        selected=selected,
        logits=cur_logits,
        rewards=rewards_t,
        accepted=selected & ~present,
        rejected=bad,
        accept_step=accept_step,
        reject_step=reject_step,
        quality=cur_q,
        log_ics=cur_logp,
        ics=cur_logp.exp(),
        steps=steps,
        present=present,
        projection=cur_z,
        calibration_fallback=fallback_rows > 0,
        quality_steps=torch.stack(q_steps),
        log_ics_steps=torch.stack(logp_steps),
    )
