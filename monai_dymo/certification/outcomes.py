"""Held-out outcome vectors and the certification record saved with the calibration.

One run of the selection with margin 0 (docs/method.md's rule) gives, per patient, the greedy path: the rewards
``r_1 > 0, r_2 > 0, ...`` of the accepted recoveries in order. Under a margin ``m`` the candidates' rewards are the
same (they do not depend on the margin) and the patient stops at the first step whose best reward is ``<= m``, so its
final set is the prefix of the margin-0 path of length ``k(m)`` = number of leading accepted rewards ``> m``.
:func:`collect_outcomes` stores the prediction, its softmax probability and the logits of every prefix
``k = 0..steps`` (prefix 0 = discarding the missing modalities), so that any margin is evaluated offline
(:func:`outcomes_at_margin`, :func:`logits_at_margin`). :func:`batch_outcomes` is the per-batch step of that loop.
:func:`fit_probability_temperature` fits the temperature of the calibrated probabilities on such outcomes. The networks
are never imported: ``network`` is any object with ``encode`` / ``fuse`` / ``modalities``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..presence import keep_one_observed
from ..step import run_dymo
from .statistics import DEFAULT_MARGINS, certify_margin, holdout_indices

__all__ = [
    "outcomes_at_margin",
    "logits_at_margin",
    "batch_outcomes",
    "collect_outcomes",
    "holdout_part",
    "certify",
    "certify_calibration",
    "fit_probability_temperature",
]


def _prefix_at_margin(outcomes: Mapping[str, Any], margin: float) -> np.ndarray:
    """``k[N]``: the length of each patient's path at ``margin`` (leading accepted rewards ``> margin``)."""
    rewards = np.asarray(outcomes["accepted_rewards"], dtype=float)  # [N, M], NaN padded
    above = np.nan_to_num(rewards, nan=-np.inf) > margin
    return np.cumprod(above, axis=1).sum(axis=1) if above.shape[1] else np.zeros(above.shape[0], dtype=int)


def logits_at_margin(outcomes: Mapping[str, Any], margin: float) -> np.ndarray:
    """``[N, C]`` DyMo's final logits at ``margin`` from the stored ``prefix_logits`` (``ValueError`` for outcomes
    collected without them)."""
    if "prefix_logits" not in outcomes:
        raise ValueError("these held-out outcomes have no prefix_logits (collected by an older monai_dymo); collect "
                         "them again (the bundle's calibrate or certify config).")
    logits = np.asarray(outcomes["prefix_logits"], dtype=float)  # [N, M + 1, C]
    k = _prefix_at_margin(outcomes, margin)
    return logits[np.arange(logits.shape[0]), k]


def outcomes_at_margin(
    outcomes: Mapping[str, Any], margin: float, probability_temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prediction[N], probability[N], accepted[N])`` of DyMo at ``margin`` from the stored held-out outcomes:
    patient ``b`` keeps the leading accepted recoveries whose reward is ``> margin``. ``probability`` is the top-class
    ``softmax(logits / probability_temperature)`` from ``prefix_logits``; outcomes without them (older files) give
    the stored ``prefix_probability`` (temperature 1)."""
    pred = np.asarray(outcomes["prefix_prediction"])  # [N, M + 1]
    k = _prefix_at_margin(outcomes, margin)
    rows = np.arange(pred.shape[0])
    if "prefix_logits" in outcomes:
        from ..confidence import apply_temperature, top_label_confidence

        prob = top_label_confidence(apply_temperature(logits_at_margin(outcomes, margin), probability_temperature))
    else:
        prob = np.asarray(outcomes["prefix_probability"], dtype=float)[rows, k]
    return pred[rows, k], prob, k


def _drop_observed(present: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each observed modality with probability ``rate`` (at least one observed modality kept per patient: the
    one with the largest draw)."""
    u = torch.rand(present.shape, generator=gen)
    dropped = present & (u.to(present.device) < float(rate))
    return present & ~keep_one_observed(present, dropped, u)


def batch_outcomes(
    network: Any,
    calibration: Any,
    x: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Margin-0 selection of ``B`` patients (each with something observed) and the prediction of every prefix of
    its path: ``prefix_prediction [B, M + 1]`` (-1 padded), ``prefix_probability [B, M + 1]`` (NaN padded),
    ``prefix_logits [B, M + 1, C]`` (float32, NaN padded), ``accepted_rewards [B, M]`` (NaN padded). Missing
    modalities are zeroed before the recovery."""
    res = run_dymo(network, calibration, x, present, recovery=recovery, hide_missing=True, temperature=temperature,
                   prefixes=True)
    assert res.prefix_logits is not None
    B, M = res.present.shape
    pmax, pred = torch.softmax(res.prefix_logits.float(), -1).max(-1)  # [B, M + 1]
    beyond = torch.isnan(res.prefix_logits).any(-1)
    pred_t = torch.where(beyond, -1, pred)
    prob_t = torch.where(beyond, float("nan"), pmax.double())
    rew = torch.full((B, M), float("nan"), dtype=torch.float64, device=pred_t.device)
    if res.rewards.shape[0]:
        bb, mm = res.accepted.nonzero(as_tuple=True)
        tt = res.accept_step[bb, mm]
        rew[bb, tt] = res.rewards[tt, bb, mm]
    return {"prefix_prediction": pred_t, "prefix_probability": prob_t,
            "prefix_logits": res.prefix_logits.detach().float(), "accepted_rewards": rew}


@torch.no_grad()
def collect_outcomes(
    network: Any,
    calibration: Any,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
    present_key: str = "present",
    label_key: str = "label",
    progress: bool = True,
    drop_observed: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out outcome vectors for :func:`certify` (module docstring).

    ``loader``: batches with one tensor per modality, ``present`` ``[B, M]`` and ``label``. Patients with nothing
    observed are left out. ``drop_observed > 0`` additionally hides each observed modality with that probability
    (seeded by ``seed``; at least one observed modality is kept), to get more patients with something to recover on a
    cohort whose natural missingness is rare. Returns numpy arrays ``label [N]``, ``prefix_prediction [N, M + 1]``,
    ``prefix_probability [N, M + 1]``, ``prefix_logits [N, M + 1, C]`` (float32), ``accepted_rewards [N, M]``,
    ``missing [N]`` (:func:`batch_outcomes`), and ``num_classes`` when the network has it.
    """
    from tqdm.auto import tqdm

    from .._console import bar_disabled
    from ..presence import align_present

    modalities = tuple(str(m) for m in network.modalities)
    if device is None:
        params = list(network.parameters()) if hasattr(network, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
    cal = calibration.to(device)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                            ("label", "prefix_prediction", "prefix_probability", "prefix_logits",
                                             "accepted_rewards", "missing")}
    gen = torch.Generator().manual_seed(int(seed))
    for batch in tqdm(loader, desc="held-out outcomes", disable=bar_disabled(progress), leave=False):
        x = {m: torch.as_tensor(batch[m]).to(device) for m in modalities}
        present = align_present(batch[present_key], modalities, "collect_outcomes").to(device).bool()
        y = torch.as_tensor(batch[label_key]).reshape(-1).long().to(device)
        valid = present.any(1)
        if not bool(valid.all()):
            idx = valid.nonzero().squeeze(1)
            x, present, y = {m: t.index_select(0, idx) for m, t in x.items()}, present[idx], y[idx]
        if present.shape[0] == 0:
            continue
        if drop_observed > 0:
            present = _drop_observed(present, drop_observed, gen)
        out = batch_outcomes(network, cal, x, present, recovery=recovery, temperature=temperature)
        for k, v in out.items():
            parts[k].append(v.cpu())
        parts["label"].append(y.cpu())
        parts["missing"].append((~present).sum(1).cpu())
    if not parts["label"]:
        raise ValueError("the held-out loader gave no patient with an observed modality.")
    result: dict[str, Any] = {k: torch.cat(v).numpy() for k, v in parts.items()}
    if getattr(network, "num_classes", None) is not None:
        result["num_classes"] = int(network.num_classes)
    return result


def holdout_part(dataset: Any, fraction: float | None, seed: int = 1000, part: str = "holdout") -> Any:
    """``part="holdout"``: the patients of ``dataset`` kept for certification (:func:`holdout_indices`); ``"rest"``:
    the others, e.g. for choosing the best checkpoint, so that certification runs on patients that chose nothing.
    With ``fraction`` None (or 1) both are the whole dataset (returned as is)."""
    if fraction is None or float(fraction) >= 1.0:
        return dataset
    if part not in ("holdout", "rest"):
        raise ValueError(f"part must be 'holdout' or 'rest', got {part!r}.")
    keep = holdout_indices(len(dataset), fraction, seed)
    if part == "rest":
        keep = np.setdiff1d(np.arange(len(dataset)), keep)
    return torch.utils.data.Subset(dataset, keep.tolist())


def certify(
    outcomes: Mapping[str, Any],
    margins: Sequence[float] = DEFAULT_MARGINS,
    delta: float = 0.1,
    source: str = "",
    *,
    procedure: str = "fallback",
    weights: Sequence[float] | None = None,
    class_counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Certify the margin on held-out ``outcomes`` (:func:`collect_outcomes`); returns the certification record saved
    with the calibration (:meth:`~monai_dymo.calibration.SubsetCalibration.certification`): the result of
    :func:`~.statistics.certify_margin` plus ``outcomes`` (label and prefix predictions: no identifiers, no images),
    ``margins``, ``source`` (how the held-out patients were drawn), ``num_patients``, ``num_classes`` (None when
    unknown) and ``training_class_counts`` (``class_counts``: patients per class of the data the network and its
    calibration were fitted on, which the refer rule's ``per_class="auto"`` reads instead of held-out labels)."""
    y = np.asarray(outcomes["label"])
    pred0 = np.asarray(outcomes["prefix_prediction"])[:, 0]
    at = [outcomes_at_margin(outcomes, m)[0] for m in margins]
    result = certify_margin(pred0 == y, np.stack([p == y for p in at]), margins, delta,
                            changed_at_margin=np.stack([p != pred0 for p in at]), procedure=procedure,
                            weights=weights)
    num_classes = outcomes.get("num_classes")
    return {
        **result,
        "margins": [float(m) for m in margins],
        "source": str(source),
        "num_patients": int(y.shape[0]),
        "training_class_counts": None if class_counts is None else [int(c) for c in class_counts],
        "num_classes": None if num_classes is None else int(num_classes),
        "outcomes": {k: torch.as_tensor(np.asarray(v)) for k, v in outcomes.items() if k != "num_classes"},
    }


def certify_calibration(
    calibration: Any,
    network: Any,
    loader: Iterable[Mapping[str, Any]],
    *,
    margins: Sequence[float] = DEFAULT_MARGINS,
    delta: float = 0.1,
    source: str = "",
    procedure: str = "fallback",
    weights: Sequence[float] | None = None,
    class_counts: Sequence[int] | None = None,
    **kwargs: Any,
) -> Any:
    """Collect the held-out outcomes of ``network`` on ``loader`` (:func:`collect_outcomes`, ``kwargs`` passed on),
    certify the margin (:func:`certify`; ``class_counts``: the training split's patients per class) and attach the
    result to ``calibration`` (saved with it); returns it."""
    outcomes = collect_outcomes(network, calibration, loader, **kwargs)
    calibration.certification = certify(outcomes, margins, delta, source, procedure=procedure, weights=weights,
                                        class_counts=class_counts)
    return calibration


def _has_no_patient(loader: Iterable[Any]) -> bool:
    """True when ``loader`` (or its ``dataset``) has a length and it is 0."""
    try:
        return len(getattr(loader, "dataset", loader)) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def fit_probability_temperature(
    calibration: Any,
    network: Any = None,
    loader: Iterable[Mapping[str, Any]] | None = None,
    *,
    margin: float | str = "certified",
    margin_source: str | None = None,
    source: str = "",
    **kwargs: Any,
) -> Any:
    """Fit the temperature of DyMo's calibrated probabilities and store it on ``calibration``; returns it.

    ``T = fit_temperature(final logits [N, C] at the margin in force, labels [N])``
    (:func:`~monai_dymo.confidence.fit_temperature`), stored as ``calibration.probability_temperature``; the fit's
    provenance goes into ``calibration.certification["probability_temperature"]`` (``{"value", "patients", "margin",
    "source", "approximate"}``) when there is a certification.

    Args:
        calibration: the :class:`~monai_dymo.calibration.SubsetCalibration`, certified first when ``margin`` is
            ``"certified"``.
        network, loader: labelled patients that do not certify (e.g. the validation split's ``"rest"`` part,
            :func:`holdout_part`): their outcomes are collected (:func:`collect_outcomes`, ``kwargs`` passed on).
            ``loader=None`` (or a loader over no patient): the certification's own held-out outcomes (e.g.
            out-of-fold outcomes); the refer threshold is then learned on the patients the temperature was fitted on,
            so its guarantee is approximate (recorded as ``approximate``).
        margin, margin_source: the margin in force (:func:`~.policy.resolve_margin`).
        source: how the loader's patients were drawn, in words (without a loader: the certification's source).
    """
    from ..confidence import fit_temperature
    from .policy import resolve_margin

    cert = calibration.certification
    if loader is not None and _has_no_patient(loader):
        loader = None  # e.g. a validation split too small to leave patients outside the certification
    if loader is None:
        if cert is None or "outcomes" not in cert:
            raise ValueError("fitting the probability temperature without a loader needs a certification with "
                             "held-out outcomes (certify the calibration first).")
        outcomes = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                    for k, v in cert["outcomes"].items()}
        source = f"the certification's held-out outcomes ({cert.get('source') or 'unknown source'})"
    else:
        if network is None:
            raise ValueError("fitting the probability temperature on a loader needs the network.")
        outcomes = collect_outcomes(network, calibration, loader, **kwargs)
    value, _ = resolve_margin(margin, cert, margin_source)
    labels = np.asarray(outcomes["label"]).reshape(-1)
    temperature = fit_temperature(logits_at_margin(outcomes, value), labels)
    calibration.probability_temperature = float(temperature)
    if cert is not None:
        cert["probability_temperature"] = {
            "value": float(temperature), "patients": int(labels.size), "margin": float(value), "source": str(source),
            "approximate": loader is None,
        }
    return calibration
