"""Out-of-fold predictions and held-out outcomes of a K-fold cross-validation.

Fold ``f``'s network trained on the other folds and runs here on fold ``f`` only, so that every pooled patient gets
exactly one prediction from a network that never trained on it:

- :func:`fold_calibrations`: fold ``f``'s calibration, fitted on fold ``f``'s training part (the other folds), as the
  calibration of a network trained on them;
- :func:`oof_predictions`: one row per pooled patient (``oof.csv``): the fold and the per-patient comparison of
  :func:`monai_dymo.evaluation.compare_on_natural_missingness` (DyMo, discarding the missing modalities, every
  recovery used) with fold ``f``'s network and calibration on fold ``f``;
- :func:`oof_outcomes`: the held-out outcome vectors of :func:`monai_dymo.certification.collect_outcomes` of every
  fold, concatenated, so that the reward margin and the refer threshold can be certified on every pooled patient
  (:func:`certify_out_of_fold`; the cohort bundle does so only with ``holdout_fraction: null``, and by default
  certifies the ensemble on the held-out part of the validation split, which is in no fold).

Networks are duck typed (``encode`` / ``fuse`` / ``modalities``); loaders yield the batches of the evaluation and the
certification (one tensor per modality, ``present``, ``label``, ``patient_id``, ``index``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .calibration import SubsetCalibration, fit_calibration
from .certification import DEFAULT_MARGINS, certify, collect_outcomes
from .evaluation import compare_on_natural_missingness

__all__ = ["fold_calibrations", "oof_predictions", "oof_outcomes", "certify_out_of_fold"]


def _check_folds(networks: Sequence[Any], *others: Sequence[Any]) -> int:
    k = len(networks)
    if k == 0:
        raise ValueError("cross-validation needs one network per fold, got none.")
    for what in others:
        if len(what) != k:
            raise ValueError(f"{k} fold networks but {len(what)} calibrations / loaders; give one per fold.")
    return k


def fold_calibrations(
    networks: Sequence[Any], train_loaders: Sequence[Iterable[Mapping[str, Any]]], **fit_kwargs: Any
) -> list[SubsetCalibration]:
    """Calibration of every fold's network on its training part: ``fit_calibration(net.encode, net.fuse, loader,
    modalities=net.modalities, **fit_kwargs)`` (``fit_kwargs``: ``num_classes`` and the rest of
    :func:`~monai_dymo.calibration.fit_calibration`)."""
    _check_folds(networks, train_loaders)
    return [
        fit_calibration(net.encode, net.fuse, loader, modalities=tuple(net.modalities), **fit_kwargs)
        for net, loader in zip(networks, train_loaders)
    ]


def oof_predictions(
    networks: Sequence[Any],
    calibrations: Sequence[SubsetCalibration],
    holdout_loaders: Sequence[Iterable[Mapping[str, Any]]],
    *,
    certification: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    **compare_kwargs: Any,
) -> pd.DataFrame:
    """Out-of-fold per-patient comparison: fold ``f``'s network and calibration on fold ``f``'s held-out loader.

    Args:
        networks, calibrations, holdout_loaders: one per fold, in fold order.
        certification: the certification in force (the ensemble's on the held-out part, or
            :func:`certify_out_of_fold`'s); given to every fold's calibration so that ``margin="certified"`` and the
            refer flag use it.
        path: write the frame there as CSV (``oof.csv``; under ``torchrun`` by rank 0).
        compare_kwargs: of :func:`~monai_dymo.evaluation.compare_on_natural_missingness` (``recovery``,
            ``temperature``, ``margin``, ``refer_alpha``, ``device``, ...).

    Returns:
        One row per held-out patient, ordered by ``index``: ``fold`` then the columns of
        :func:`~monai_dymo.evaluation.compare_on_natural_missingness`.

    Raises:
        ValueError: a patient (``index``) held out by two folds.
    """
    _check_folds(networks, calibrations, holdout_loaders)
    frames = []
    for f, (net, cal, loader) in enumerate(zip(networks, calibrations, holdout_loaders)):
        if certification is not None:  # a copy: the fold's own calibration is left as it is
            cal = copy.copy(cal)
            cal.certification = dict(certification)
        frame = compare_on_natural_missingness(net, cal, loader, **compare_kwargs)
        frame.insert(0, "fold", f)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    twice = table.loc[table["index"].duplicated(keep=False)]
    if len(twice):
        first = twice.iloc[0]
        folds = sorted(twice.loc[twice["index"] == first["index"], "fold"].tolist())
        raise ValueError(f"patient {first['patient_id']} (index {first['index']}) is held out by folds {folds}.")
    table = table.sort_values("index", kind="stable").reset_index(drop=True)
    if path is not None and _main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    return table


def _main_process() -> bool:
    """Not under ``torchrun``, or its rank 0 (every rank holds the same gathered rows)."""
    import torch.distributed as dist

    from .distributed import is_distributed

    return not is_distributed() or dist.get_rank() == 0


def oof_outcomes(
    networks: Sequence[Any],
    calibrations: Sequence[SubsetCalibration],
    holdout_loaders: Sequence[Iterable[Mapping[str, Any]]],
    **collect_kwargs: Any,
) -> dict[str, Any]:
    """Held-out outcome vectors of every fold (:func:`~monai_dymo.certification.collect_outcomes` with fold ``f``'s
    network and calibration on fold ``f``'s loader), concatenated in fold order, plus ``fold [N]``; scalar entries
    (``num_classes``) are kept once."""
    _check_folds(networks, calibrations, holdout_loaders)
    parts = [collect_outcomes(net, cal, loader, **collect_kwargs)
             for net, cal, loader in zip(networks, calibrations, holdout_loaders)]
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if np.ndim(values[0]) == 0:  # a property of the networks (e.g. num_classes): the same for every fold
            if any(v != values[0] for v in values):
                raise ValueError(f"the folds' outcomes differ in {key}: {values}.")
            out[key] = values[0]
        else:
            out[key] = np.concatenate(values)
    out["fold"] = np.concatenate([np.full(len(p["label"]), f, dtype=np.int64) for f, p in enumerate(parts)])
    return out


def certify_out_of_fold(
    calibration: SubsetCalibration,
    outcomes: Mapping[str, Any],
    *,
    margins: Sequence[float] = DEFAULT_MARGINS,
    delta: float = 0.1,
    source: str = "",
    class_counts: Sequence[int] | None = None,
) -> SubsetCalibration:
    """Certify the margin on the out-of-fold ``outcomes`` (:func:`oof_outcomes`,
    :func:`~monai_dymo.certification.certify`) and attach the result to ``calibration`` (e.g. the ensemble's, saved
    with it); returns it."""
    folds = int(np.unique(np.asarray(outcomes["fold"])).size) if "fold" in outcomes else None
    text = source or (f"out of fold: {folds} folds, each fold's network on its held-out fold" if folds else "")
    calibration.certification = certify(outcomes, margins, delta, text, class_counts=class_counts)
    return calibration
