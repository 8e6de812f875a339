"""Per-patient DyMo selection records: how they are built from a selection result, and how the report reads them.

A record is a JSON-serialisable dictionary (the shared record format, built by :func:`selection_records`):
``patient_id``, ``observed``, ``recovered``, ``selected``, ``accepted``, ``rejected``, ``unused``, ``quality``,
``log_ics``, ``ics``, ``prediction``, ``probability`` (the predicted class's calibrated probability),
``probabilities`` (every class's), ``steps``, ``calibration_fallback``, ``reasons``, ``error``, ``rewards``,
``trajectory``. The inferer adds ``alone`` and the guarantee fields (see :mod:`.trust`), the report
handler ``label``, ``missing_fields``, ``num_fields``, ``field_notes`` and ``roi_guide`` (see :mod:`.collect`). Keys
starting with ``_`` are private to the report writer (e.g. ``_pictures``) and never written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..keys import Reason
from ..transforms.lesion_crop import FOREGROUND_GUIDE

if TYPE_CHECKING:
    from ..selection import SelectionResult

__all__ = [
    "MODALITY_STATUSES",
    "selection_records",
    "names",
    "modality_status",
    "modality_decision",
    "report_modalities",
    "clinical_groups",
    "patient_priority",
    "format_reward",
    "label_value",
    "is_correct",
    "class_name",
    "with_class_names",
    "plain",
    "region_of_interest_text",
]

#: per-modality status values of the report, in plotting order: ``observed`` (measured), ``accepted`` / ``rejected`` /
#: ``unused`` (recovered, then accepted / rejected / neither by the selection), ``missing`` (the patient could not be
#: processed, e.g. nothing observed).
MODALITY_STATUSES = ("observed", "accepted", "rejected", "unused", "missing")


# ---------------------------------------------------------------------------------------------------- building
def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _reasons_per_patient(reasons: Any, modalities: Sequence[str], batch_size: int) -> list[dict[str, str | None]]:
    """``[{modality: reason or None}]`` per patient from collated (``{name: [B reasons]}``) or per-patient reasons."""
    out: list[dict[str, str | None]] = [{m: None for m in modalities} for _ in range(batch_size)]
    if reasons is None:
        return out
    if isinstance(reasons, Mapping):
        for name, values in reasons.items():
            if name not in out[0]:
                continue
            values = [values] * batch_size if isinstance(values, str) else list(values)
            if len(values) != batch_size:
                raise ValueError(
                    f"reasons for modality {name!r} have {len(values)} entries for a batch of {batch_size}."
                )
            for b in range(batch_size):
                out[b][name] = None if values[b] is None else str(values[b])
        return out
    reasons = list(reasons)
    if len(reasons) != batch_size:
        raise ValueError(f"{len(reasons)} reason dictionaries given for a batch of {batch_size}.")
    for b, r in enumerate(reasons):
        for name in modalities:
            if r is not None and r.get(name) is not None:
                out[b][name] = str(r[name])
    return out


def selection_records(
    result: SelectionResult,
    modalities: Sequence[str],
    patient_ids: Sequence[Any] | None = None,
    reasons: Mapping[str, Sequence[str]] | Sequence[Mapping[str, str]] | None = None,
    probability_temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """One JSON-serialisable record per patient of a :class:`~monai_dymo.selection.SelectionResult` of ``B`` patients.

    Besides the final scores, a record holds ``rewards`` (``{recovered modality: [reward at round 0, 1, ...]}``, up
    to the round it was accepted or rejected, or the last round the patient ran) and ``trajectory`` (``[{"step": k,
    "added": modality or None, "quality", "log_ics", "ics"}]`` for ``k = 0..steps``: the scores of the observed set,
    then after each acceptance; empty for results built without the step scores).

    Args:
        result: the selection of ``B`` patients over ``M`` modalities.
        modalities: the ``M`` modality names, in subset-bit order.
        patient_ids: ``B`` identifiers (default: the batch index as a string).
        reasons: why each modality is / is not present, either collated (``{name: [B reasons]}``) or one dict per
            patient; missing entries become ``"observed"`` for observed modalities and ``None`` otherwise.
        probability_temperature: ``probability`` / ``probabilities`` are ``softmax(logits / probability_temperature)``
            (the calibration's temperature scaling; 1: the raw softmax).
    """
    modalities = [str(m) for m in modalities]
    B, M = result.batch_size, result.num_modalities
    if len(modalities) != M:
        raise ValueError(f"{len(modalities)} modality names given for a selection over {M} modalities.")
    if patient_ids is not None and len(patient_ids) != B:
        raise ValueError(f"{len(patient_ids)} patient ids given for a batch of {B}.")
    per_patient_reasons = _reasons_per_patient(reasons, modalities, B)

    cpu = result.to("cpu")
    present, selected, unused = cpu.present.tolist(), cpu.selected.tolist(), cpu.unused.tolist()
    accepted, rejected = cpu.accepted.tolist(), cpu.rejected.tolist()
    accept_step, reject_step = cpu.accept_step.tolist(), cpu.reject_step.tolist()
    rewards = cpu.rewards  # [T, B, M]
    probs = cpu.probabilities(probability_temperature)
    prob_max, pred = probs.max(dim=-1) if probs.shape[0] else (probs.new_zeros(0), probs.new_zeros(0))
    prob_rows = probs.tolist()
    quality, log_ics, ics = cpu.quality.tolist(), cpu.log_ics.tolist(), cpu.ics.tolist()
    steps = cpu.steps.tolist()
    errors = result.errors or [None] * B
    fell_back = [False] * B if cpu.calibration_fallback is None else cpu.calibration_fallback.tolist()
    reward_lists = rewards.permute(1, 2, 0).tolist()  # [B][M][T]
    q_steps = cpu.quality_steps.T.tolist() if cpu.quality_steps is not None else None  # [B][T + 1]
    lp_steps = cpu.log_ics_steps.T.tolist() if cpu.log_ics_steps is not None else None

    def reward(t: int, b: int, m: int) -> float | None:
        return _finite_or_none(float(rewards[t, b, m])) if 0 <= t < rewards.shape[0] else None

    def reward_path(b: int, m: int) -> list[float | None]:
        values = [_finite_or_none(v) for v in reward_lists[b][m]]
        while values and values[-1] is None:
            values.pop()
        return values

    def trajectory(b: int, order: list[tuple[int, int]]) -> list[dict[str, Any]]:
        if q_steps is None or lp_steps is None:
            return []
        added = [None] + [modalities[m] for _, m in order]
        out = []
        for k in range(min(int(steps[b]), len(q_steps[b]) - 1) + 1):
            lp = _finite_or_none(lp_steps[b][k])
            out.append({
                "step": k,
                "added": added[k] if k < len(added) else None,
                "quality": _finite_or_none(q_steps[b][k]),
                "log_ics": lp,
                "ics": None if lp is None else math.exp(lp),
            })
        return out

    records = []
    for b in range(B):
        rsn = per_patient_reasons[b]
        for m, name in enumerate(modalities):
            if rsn.get(name) is None and present[b][m]:
                rsn[name] = str(Reason.OBSERVED)
        failed = errors[b] is not None
        acc = sorted((accept_step[b][m], m) for m in range(M) if accepted[b][m])
        rej = sorted((reject_step[b][m], m) for m in range(M) if rejected[b][m])
        records.append({
            "patient_id": str(patient_ids[b]) if patient_ids is not None else str(b),
            "observed": [modalities[m] for m in range(M) if present[b][m]],
            "recovered": [] if failed else [modalities[m] for m in range(M) if not present[b][m]],
            "selected": [modalities[m] for m in range(M) if selected[b][m]],
            "accepted": [{"modality": modalities[m], "step": t, "reward": reward(t, b, m)} for t, m in acc],
            "rejected": [{"modality": modalities[m], "step": t, "reward": reward(t, b, m)} for t, m in rej],
            "unused": [modalities[m] for m in range(M) if unused[b][m]],
            "quality": None if failed else _finite_or_none(quality[b]),
            "log_ics": None if failed else _finite_or_none(log_ics[b]),
            "ics": None if failed else _finite_or_none(ics[b]),
            "prediction": None if failed else int(pred[b]),
            "probability": None if failed else _finite_or_none(float(prob_max[b])),
            "probabilities": None if failed else [_finite_or_none(v) for v in prob_rows[b]],
            "steps": int(steps[b]),
            "calibration_fallback": bool(fell_back[b]),
            "reasons": rsn,
            "error": errors[b],
            "rewards": {} if failed else {modalities[m]: reward_path(b, m) for m in range(M) if not present[b][m]},
            "trajectory": [] if failed else trajectory(b, acc),
        })
    return records


# ---------------------------------------------------------------------------------------------------- reading
def names(entries: Iterable[Any]) -> list[str]:
    """Modality names of a record list (entries are names or ``{"modality": ...}`` dicts)."""
    return [e["modality"] if isinstance(e, Mapping) else str(e) for e in entries or []]


def modality_status(record: Mapping[str, Any], modality: str) -> str:
    """One of :data:`MODALITY_STATUSES`: ``missing`` = neither observed nor a candidate (e.g. a failed patient)."""
    for status in ("observed", "accepted", "rejected", "unused"):
        if modality in names(record.get(status)):
            return status
    return "missing"


def report_modalities(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modality names in order, taken from the records' ``reasons`` (all modalities, in order) or name lists."""
    out: list[str] = []
    seen: set[str] = set()
    keys = ("observed", "recovered", "selected", "unused", "accepted", "rejected")
    for rec in records:
        for name in list(rec.get("reasons") or {}) + [n for key in keys for n in names(rec.get(key))]:
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def clinical_groups(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Clinical groups with field-level information (``missing_fields``) in any record, in order of appearance."""
    out: list[str] = []
    for rec in records:
        for g in rec.get("missing_fields") or {}:
            if g not in out:
                out.append(g)
    return out


def format_reward(r: float | None) -> str:
    """A reward for people: signed, 4 significant digits (``"n/a"`` when unknown)."""
    return "n/a" if r is None or not math.isfinite(r) else f"{r:+.4g}"


def _entry(record: Mapping[str, Any], key: str, modality: str) -> Mapping[str, Any] | None:
    for e in record.get(key) or []:
        if isinstance(e, Mapping) and e.get("modality") == modality:
            return e
    return None


def modality_decision(record: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """What happened to one modality of one patient, and why.

    Returns ``{"status", "step", "reward", "rewards", "why"}``: ``step`` / ``reward`` of the decision (acceptance,
    rejection, or for ``unused`` the last round it was scored), ``rewards`` the reward at every round it was a
    candidate, ``why`` a plain-language sentence (for a recovered modality: each earlier round where its reward was
    positive but another candidate's was larger, then the decision: accepted as the largest positive reward, rejected
    for a reward < 0, or not used because no reward was > 0 when the selection stopped).
    """
    status = modality_status(record, modality)
    rewards = list((record.get("rewards") or {}).get(modality) or [])
    out: dict[str, Any] = {"status": status, "step": None, "reward": None, "rewards": rewards, "why": ""}
    if status == "observed":
        out["why"] = "observed: used as given"
        return out
    if status == "missing":
        err = record.get("error")
        out["why"] = f"not usable: the patient was not processed ({err})" if err else "not in the selection record"
        return out
    entry = _entry(record, status, modality) if status in ("accepted", "rejected") else None
    step = entry.get("step") if entry is not None else (len(rewards) - 1 if rewards else None)
    reward = entry.get("reward") if entry is not None else (rewards[-1] if rewards else None)
    if reward is None and step is not None and 0 <= step < len(rewards):
        reward = rewards[step]
    out["step"], out["reward"] = step, reward
    best_at = {a.get("step"): a for a in record.get("accepted") or [] if isinstance(a, Mapping)}
    margin = _margin(record)
    above = "> 0" if margin == 0 else (f"> the margin {margin:g}" if math.isfinite(margin) else "")
    parts = []
    last = step if step is not None else len(rewards)
    for k, r in enumerate(rewards[:last]):
        if r is None:
            continue
        best = best_at.get(k)
        if best is not None and best.get("modality") != modality:
            parts.append(
                f"step {k}: reward {format_reward(r)}, "
                + ("positive but " if r > 0 else "")
                + f"not the best candidate ({best['modality']} {format_reward(best.get('reward'))} was accepted)"
            )
    if status == "accepted":
        parts.append(f"accepted at step {step}: reward {format_reward(reward)} {above}, the largest of the candidates")
    elif status == "rejected":
        parts.append(
            f"rejected at step {step}: reward {format_reward(reward)} < 0 "
            "(adding it lowered the calibrated confidence)"
        )
    elif math.isinf(margin):
        parts.append(f"not used: its reward was {format_reward(reward)}, and the margin in force is inf (no margin was "
                     "certified on held-out patients), so no recovery is accepted")
    elif step is not None:
        parts.append(
            f"not used: at step {step} its reward was {format_reward(reward)} (not {above}) and no candidate's was, "
            "so the selection stopped"
        )
    else:
        parts.append(f"not used: no candidate had a reward {above} when the selection stopped")
    out["why"] = "; ".join(parts)
    return out


def _margin(record: Mapping[str, Any]) -> float:
    """The reward margin in force for ``record`` (0, the method's rule, when the record does not say)."""
    value = record.get("margin", 0.0)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def patient_priority(record: Mapping[str, Any]) -> int:
    """Which patients get their own report page first: 3 = error, 2 = a recovered modality rejected, 1 = one accepted,
    0 = observed only."""
    if record.get("error"):
        return 3
    if record.get("rejected"):
        return 2
    if record.get("accepted"):
        return 1
    return 0


def label_value(label: Any) -> Any:
    """Class index from a label given as an int, a scalar tensor or a one-hot / probability vector."""
    if label is None:
        return None
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu()
        if type(label) is not torch.Tensor:
            label = label.as_subclass(torch.Tensor)
        if label.numel() == 1:
            v = label.item()
            return int(v) if float(v).is_integer() else v
        return int(label.reshape(-1).argmax())
    if isinstance(label, float) and label.is_integer():
        return int(label)
    return plain(label)


def is_correct(record: Mapping[str, Any]) -> bool | None:
    """Whether the prediction equals the label (``None`` without a label or a prediction)."""
    label, pred = label_value(record.get("label")), record.get("prediction")
    if label is None or pred is None or record.get("error"):
        return None
    try:
        return int(pred) == int(label)
    except (TypeError, ValueError):
        return str(pred) == str(label)


def class_name(index: Any, classes: Sequence[Any] | None = None) -> str | None:
    """The class name of a class index (``classes[index]``); the index as text when there are no (or too few) names,
    ``None`` for no index (no label, or a patient that was not processed)."""
    index = label_value(index)
    if index is None:
        return None
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    if classes is not None and 0 <= i < len(classes) and float(index) == i:
        return str(classes[i])
    return str(index)


def with_class_names(
    records: Sequence[Mapping[str, Any]], classes: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``label_name`` and ``prediction_name`` (see :func:`class_name`) beside ``label`` and
    ``prediction``, and ``alone_names`` beside ``alone`` (each observed modality alone); a name a record already
    carries is kept."""
    out = []
    for rec in records:
        r = dict(rec)
        if r.get("label_name") is None:
            r["label_name"] = class_name(r.get("label"), classes)
        if r.get("prediction_name") is None:
            r["prediction_name"] = None if r.get("error") else class_name(r.get("prediction"), classes)
        if r.get("alone") and r.get("alone_names") is None:
            r["alone_names"] = {m: class_name(c, classes) for m, c in r["alone"].items()}
        out.append(r)
    return out


def plain(v: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars -> Python, non-finite floats -> None, private ``_`` keys dropped."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        if type(v) is not torch.Tensor:
            v = v.as_subclass(torch.Tensor)
        v = v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)) and type(v).__module__ == "numpy":
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def region_of_interest_text(guide: str | None) -> str | None:
    """The ``region_of_interest`` column in words, from the record's ``roi_guide`` (None: no region of interest)."""
    if not guide:
        return None
    if guide == FOREGROUND_GUIDE:
        return "centre of the scanned volume: no guide sequence observed, the lesion was not located"
    return f"around the lesion found in {guide}"
