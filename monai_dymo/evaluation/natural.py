"""Per-patient predictions of DyMo, discarding and every recovery on data whose missingness is real
(:func:`compare_on_natural_missingness`), with each observed modality alone and the refer flag."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
import torch
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from monai_dymo._console import bar_disabled
from monai_dymo.calibration import SubsetCalibration
from monai_dymo.certification import refer_for_margin, resolve_margin, rule_threshold
from monai_dymo.keys import DyMoKeys
from monai_dymo.presence import align_present
from monai_dymo.step import NO_MODALITY_ERROR, class_or_missing, run_dymo



NATURAL_METHODS = ("dymo", "observed_only", "all_recovered")


@torch.no_grad()
def compare_on_natural_missingness(
    network: Any,
    calibration: SubsetCalibration,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
    present_key: str = DyMoKeys.PRESENT,
    label_key: str = DyMoKeys.LABEL,
    patient_id_key: str = DyMoKeys.PATIENT_ID,
    progress: bool = True,
    margin: float | str = 0.0,
    refer_alpha: float | None = None,
    refer_delta: float = 0.1,
    refer_guarantee: str = "auto",
    refer_per_class: bool | str = "auto",
    margin_source: str | None = None,
) -> pd.DataFrame:
    """Per-patient predictions of DyMo, "discard the missing modalities" and "use every recovery" on data whose
    missingness is real (nothing is hidden: what is missing was never acquired, so there is no complete-data truth).

    Args:
        network, calibration, recovery, temperature, device: as :func:`compare_methods`.
        loader: batches with one tensor per modality (placeholders where missing), ``present`` and ``label``.
        margin: DyMo's reward margin, as :func:`compare_methods` (``"certified"``: the calibration file's).
        refer_alpha, refer_delta, refer_guarantee, refer_per_class: with ``refer_alpha``, the refer flag of DyMo's
            prediction (:func:`monai_dymo.certification.refer_for_margin`, ``guarantee`` / ``per_class``): columns
            ``prob_dymo``, ``refer``, ``refer_threshold`` (the threshold that applied: the predicted class's under a
            per-class rule), ``refer_alpha``, ``refer_delta``, ``refer_guarantee``, ``refer_per_class``,
            ``refer_reason``; the rule itself in ``attrs["refer_rule"]`` (JSON-safe).
        margin_source: None, or ``"independent"`` (:func:`~monai_dymo.certification.resolve_margin`).

    Probabilities are calibrated: ``softmax(logits / T)``, ``T`` the calibration's ``probability_temperature``
    (column ``probability_temperature``).

    Under ``torchrun`` (a ``DistributedSampler`` in the loader) each rank compares its shard and the rows of every
    rank are gathered in datalist order (``index``).

    Returns:
        One row per patient: ``index`` (datalist position), ``patient_id``, ``label``, ``observed`` / ``accepted`` (``;``-joined names),
        ``complete`` (nothing missing), ``pred_<method>`` for :data:`NATURAL_METHODS` (``-1`` for a patient with
        nothing observed, who is kept with ``error``), ``prob_<method>_<k>``: that method's calibrated probability of
        class ``k`` (NaN for a patient with nothing observed), ``single_<modality>``: the fusion network's prediction
        from that modality alone where it is observed (``-1`` where it is missing: a recovery is never scored alone),
        ``calibration_fallback``.
    """
    modalities = tuple(network.modalities)
    if device is None:
        device = next(network.parameters()).device
    network.eval()
    margin, margin_source = resolve_margin(margin, calibration.certification, margin_source)
    t_prob = calibration.probability_temperature
    rule = (None if refer_alpha is None
            else refer_for_margin(calibration.certification, margin, margin_source, refer_alpha, refer_delta,
                                  per_class=refer_per_class, guarantee=refer_guarantee,
                                  num_classes=calibration.num_classes, probability_temperature=t_prob))
    cal = calibration.to(device)
    rows: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="comparing on natural missingness", disable=bar_disabled(progress), leave=False):
        for key in (*modalities, present_key, label_key):
            if key not in batch:
                raise ValueError(f"batch lacks key '{key}'; it has {sorted(map(str, batch.keys()))}.")
        x = {m: convert_to_tensor(batch[m], track_meta=False, device=device) for m in modalities}
        present = align_present(batch[present_key], modalities, "compare_on_natural_missingness").to(device).bool()
        labels = convert_to_tensor(batch[label_key], device=device, track_meta=False, wrap_sequence=True).long()
        labels = labels.reshape(-1)
        ids = batch.get(patient_id_key)
        ids = [str(i) for i in ids] if ids is not None else [str(len(rows) + b) for b in range(labels.shape[0])]
        index = batch.get(DyMoKeys.INDEX)
        index = [int(i) for i in index] if index is not None else [len(rows) + b for b in range(labels.shape[0])]
        res = run_dymo(network, cal, x, present, recovery=recovery, temperature=temperature, margin=margin,
                       compare=True, alone=True, refer_rule=rule)
        valid = present.any(1)
        method_logits = {"dymo": res.logits, "observed_only": res.discard_logits,
                         "all_recovered": res.all_recovered_logits}
        preds = {m: class_or_missing(method_logits[m]) for m in NATURAL_METHODS}
        probs = {m: torch.softmax(method_logits[m].float() / t_prob, -1).tolist() for m in NATURAL_METHODS}  # [B][C]
        single = class_or_missing(res.alone_logits)  # [B, M]: each observed modality alone, what its encoder learnt
        fallback = res.calibration_fallback if res.calibration_fallback is not None else torch.zeros_like(valid)
        prob = res.probabilities(t_prob).amax(-1)
        refer = reasons = None
        if refer_alpha is not None:  # no rule (no held-out certification): nobody flagged
            refer = res.refer.tolist() if res.refer is not None else [False] * labels.shape[0]
            reasons = res.refer_reasons or [NO_RULE_REASON] * len(refer)
        for b in range(labels.shape[0]):
            extra = {} if refer is None else {
                "prob_dymo": float(prob[b]), "refer": bool(refer[b]),
                "refer_threshold": _patient_threshold(rule, int(preds["dymo"][b])),
                "refer_alpha": refer_alpha, "refer_delta": refer_delta,
                "refer_guarantee": None if rule is None else rule["guarantee"],
                "refer_per_class": None if rule is None else bool(rule["per_class"]),
                "refer_reason": reasons[b],
            }
            rows.append(
                {
                    "index": index[b],
                    "patient_id": ids[b],
                    "label": int(labels[b]),
                    "observed": ";".join(m for i, m in enumerate(modalities) if present[b, i]),
                    "accepted": ";".join(m for i, m in enumerate(modalities) if res.accepted[b, i]),
                    "complete": bool(present[b].all()),
                    **{f"pred_{m}": int(preds[m][b]) for m in NATURAL_METHODS},
                    **{f"prob_{m}_{k}": p for m in NATURAL_METHODS for k, p in enumerate(probs[m][b])},
                    **{f"single_{m}": int(single[b, i]) for i, m in enumerate(modalities)},
                    "calibration_fallback": bool(fallback[b]),
                    "error": "" if bool(valid[b]) else NO_MODALITY_ERROR,
                    "margin": margin,
                    "margin_source": margin_source,
                    "probability_temperature": t_prob,
                    **extra,
                }
            )
    from monai_dymo.distributed import gather_rows

    rows = gather_rows(rows)  # torchrun: every rank's shard, in datalist order
    if not rows:
        raise ValueError("the loader gave no patients.")
    table = pd.DataFrame(rows)
    if rule is not None:
        from monai_dymo.report.records import plain

        table.attrs["refer_rule"] = plain(rule)
    return table


NO_RULE_REASON = "no refer rule: the calibration file has no held-out certification"


def _patient_threshold(rule: Mapping[str, Any] | None, prediction: int) -> float | None:
    """The refer threshold that applies to a patient predicted ``prediction`` (``-1``: not processed): None without a
    rule, or under a per-class rule without a prediction."""
    if rule is None or (rule.get("per_class") and prediction < 0):
        return None
    return rule_threshold(rule, prediction)


def single_modality_accuracy(per_patient: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{modality: {"patients": n observed, "accuracy": % or None}}`` from the ``single_<modality>`` columns of
    :func:`compare_on_natural_missingness` (a prediction of ``-1`` means the modality was missing)."""
    y = per_patient["label"].to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for col in per_patient.columns:
        if not col.startswith("single_"):
            continue
        pred = per_patient[col].to_numpy()
        seen = pred >= 0
        acc = round(100.0 * float((pred[seen] == y[seen]).mean()), 2) if seen.any() else None
        out[col[len("single_"):]] = {"patients": int(seen.sum()), "accuracy": acc}
    return out
