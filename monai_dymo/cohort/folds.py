"""K-fold cross-validation of a cohort: the training and validation patients pooled, stratified by class, seeded.

With ``folds: K > 1`` the prepare stage writes ``folds.json`` (:func:`write_folds`: patient id -> fold) once, so that
every later stage reads the same assignment. Fold ``f``'s *training* part is the pooled patients of the other folds,
its *validation* (held-out) part is fold ``f``. The testing split is never in any fold.

The pooled list holds the training entries first, then the validation entries, both in datalist order, as
:func:`~monai_dymo.cohort.load_split` gives them; an entry's ``index`` is its position in the pooled list. A training
entry therefore keeps the very dictionary its split gives it (the same disk-cache entry), and every patient has one
index in every fold part (rows merged across folds are ordered and de-duplicated by it).

With a ``holdout_fraction`` (the bundle's default 0.5) the held-out part of the validation split
(:func:`~monai_dymo.certification.statistics.holdout_indices`, the very patients the single-split run certifies on) is
left out of every fold: no fold network trains or chooses its epoch on them, so they certify the ensemble exactly as
they certify a single network. ``folds.json`` lists them under ``"held_out"``.

A patient id is one row of this product's datalists; should an id appear in both the training and the validation
list, its entries are kept together in one fold (``StratifiedGroupKFold``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.cohort.datalist import INDEX_KEY, load_split
from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys

__all__ = [
    "FOLD_SPLITS",
    "fold_assignments",
    "pooled_entries",
    "held_out_ids",
    "check_holdout",
    "cohort_folds",
    "write_folds",
    "read_folds",
    "check_fold",
    "fold_entries",
]

logger = logging.getLogger("monai_dymo.cohort")

FOLD_SPLITS = ("training", "validation")
"""The splits pooled into the folds (and the names of a fold's two parts)."""


def fold_assignments(
    labels: Sequence[int], k: int, seed: int = 0, groups: Sequence[Any] | None = None
) -> np.ndarray:
    """Fold of every entry: ``int64 [N]`` in ``0..k-1``, stratified by ``labels`` (``[N]`` class indices), seeded.

    ``StratifiedKFold(k, shuffle=True, random_state=seed)``; with ``groups`` (``[N]`` patient ids) that repeat,
    ``StratifiedGroupKFold`` keeps the entries of a patient in one fold.

    Raises:
        ValueError: ``k < 2``, or a class with fewer than ``k`` patients (some fold could not hold it).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels)
    if isinstance(k, bool) or int(k) != k or int(k) < 2:
        raise DyMoInputError(f"folds must be an integer >= 2 to split into folds, got {k!r}.")
    k = int(k)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty list of class indices, got shape {y.shape}.")
    ids = np.arange(y.size) if groups is None else np.asarray([str(g) for g in groups])
    if ids.shape != y.shape:
        raise ValueError(f"{ids.size} patient ids given for {y.size} labels.")
    per_class = {int(c): int(np.unique(ids[y == c]).size) for c in np.unique(y)}
    thin = {c: n for c, n in per_class.items() if n < k}
    if thin:
        raise DyMoInputError(
            f"folds {k}: class(es) {sorted(thin)} have only {sorted(thin.values())} patient(s) in training + "
            f"validation, fewer than the folds; lower folds so that every fold holds every class."
        )
    out = np.full(y.size, -1, dtype=np.int64)
    if np.unique(ids).size < ids.size:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
        splits = splitter.split(np.zeros(y.size), y, groups=ids)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed)).split(np.zeros(y.size), y)
    for f, (_, held_out) in enumerate(splits):
        out[held_out] = f
    return out


def held_out_ids(spec: CohortSpec, fraction: float | None, seed: int = 1000, datalist: str | Path | None = None) -> list[str]:
    """Patient ids of the held-out part of the validation split (none when ``fraction`` is None or 1: then the folds
    pool every validation patient)."""
    if fraction is None or float(fraction) >= 1.0:
        return []
    from monai_dymo.certification.statistics import holdout_indices

    validation = load_split(spec, "validation", datalist=datalist)
    return [str(validation[i][DyMoKeys.PATIENT_ID]) for i in holdout_indices(len(validation), fraction, seed)]


def pooled_entries(
    spec: CohortSpec, datalist: str | Path | None = None, exclude: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The training then the validation entries of the datalist (:func:`~monai_dymo.cohort.load_split`) but the
    patients in ``exclude`` (the held-out part), ``index`` = position in the training + validation lists."""
    entries = load_split(spec, "training", datalist=datalist)
    offset = len(entries)
    for e in load_split(spec, "validation", datalist=datalist):
        entries.append({**e, INDEX_KEY: offset + int(e[INDEX_KEY])})
    skip = set(exclude)
    return [e for e in entries if str(e[DyMoKeys.PATIENT_ID]) not in skip]


def cohort_folds(spec: CohortSpec, k: int, seed: int = 0, datalist: str | Path | None = None,
                 exclude: Sequence[str] = ()) -> dict[str, int]:
    """``{patient id: fold}`` over the pooled training and validation patients but ``exclude``
    (:func:`fold_assignments`)."""
    return _assign(pooled_entries(spec, datalist, exclude), k, seed)


def _assign(entries: Sequence[Mapping[str, Any]], k: int, seed: int) -> dict[str, int]:
    ids = [str(e[DyMoKeys.PATIENT_ID]) for e in entries]
    folds = fold_assignments([int(e[DyMoKeys.LABEL]) for e in entries], k, seed, groups=ids)
    return {pid: int(f) for pid, f in zip(ids, folds)}


def write_folds(spec: CohortSpec, path: str | Path, k: int, seed: int = 0, holdout_fraction: float | None = None,
                holdout_seed: int = 1000) -> dict[str, Any]:
    """Write ``folds.json``: ``{"folds": k, "seed", "splits", "patients": {patient id: fold}, "counts": {fold:
    {class name: patients}}, "held_out": [patient ids in no fold], "holdout_fraction", "holdout_seed"}``; returns it.

    ``holdout_fraction`` / ``holdout_seed``: the held-out part of the validation split (:func:`held_out_ids`) is left
    out of every fold (it certifies the ensemble); None: every validation patient is in a fold."""
    held_out = held_out_ids(spec, holdout_fraction, holdout_seed)
    entries = pooled_entries(spec, exclude=held_out)
    assignment = _assign(entries, k, seed)
    label_of = {str(e[DyMoKeys.PATIENT_ID]): int(e[DyMoKeys.LABEL]) for e in entries}
    counts = {str(f): Counter() for f in range(int(k))}
    for pid, f in assignment.items():
        counts[str(f)][spec.classes[label_of[pid]]] += 1
    record = {"folds": int(k), "seed": int(seed), "splits": list(FOLD_SPLITS), "patients": assignment,
              "counts": {f: {name: c[name] for name in spec.classes} for f, c in counts.items()},
              "held_out": held_out, "holdout_fraction": holdout_fraction, "holdout_seed": int(holdout_seed)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    logger.info("%d folds of the training + validation patients written to %s: %s%s", int(k), path,
                "; ".join(f"fold {f}: " + ", ".join(f"{n} {c}" for c, n in per.items())
                          for f, per in record["counts"].items()),
                f"; {len(held_out)} held-out validation patients in no fold" if held_out else "")
    return record


def read_folds(path: str | Path, k: int | None = None) -> dict[str, int]:
    """``{patient id: fold}`` from a ``folds.json`` of :func:`write_folds`; ``k``: the folds the run expects.

    Raises:
        FileNotFoundError: no file (prepare writes it when folds > 1).
        ValueError: not a folds file, or written for another number of folds; naming the file.
    """
    record = _load(path)
    folds, assignment = record["folds"], record["patients"]
    if k is not None and folds != int(k):
        raise DyMoInputError(f"folds file {path} holds {folds} folds, the run asks for {k}; rerun prepare with folds {k}.")
    return assignment


def check_holdout(path: str | Path, holdout_fraction: float | None, holdout_seed: int = 1000) -> None:
    """Stop (one line) when ``folds.json`` left another held-out part out of the folds than the run's
    ``holdout_fraction`` / ``holdout_seed`` would certify on: those patients could have been trained on."""
    record = _load(path)
    written_fraction, written_seed = record["holdout_fraction"], record["holdout_seed"]
    if written_fraction is None or holdout_fraction is None:
        same_fraction = written_fraction is None and holdout_fraction is None
    else:
        same_fraction = float(written_fraction) == float(holdout_fraction)
    if not same_fraction or (holdout_fraction is not None and written_seed != int(holdout_seed)):
        raise DyMoInputError(
            f"folds file {path} was written with holdout_fraction {written_fraction} (seed {written_seed}), this run "
            f"asks for {holdout_fraction} (seed {int(holdout_seed)}): the patients it would certify on may be in a "
            "fold; rerun prepare and train the folds again with the same holdout_fraction."
        )


def _load(path: str | Path) -> dict[str, Any]:
    """``folds.json`` checked: ``{"folds", "patients": {patient id: fold}, "held_out": [ids], "holdout_fraction",
    "holdout_seed"}`` (one-line errors naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise DyMoFileNotFoundError(f"folds file not found: {path} (the prepare stage writes it when folds > 1).")
    try:
        record = json.loads(path.read_text())
        folds, patients = int(record["folds"]), record["patients"]
        assignment = {str(p): int(f) for p, f in patients.items()}
        held_out = [str(p) for p in record.get("held_out") or []]
        holdout_seed = int(record.get("holdout_seed", 1000))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DyMoInputError(f"folds file {path} is not a folds file of the prepare stage ({type(e).__name__}: {e}).") from None
    bad = sorted(p for p, f in assignment.items() if not 0 <= f < folds)
    if bad:
        raise DyMoInputError(f"folds file {path}: patient(s) {bad[:5]} have a fold outside 0..{folds - 1}.")
    return {"folds": folds, "patients": assignment, "held_out": held_out,
            "holdout_fraction": record.get("holdout_fraction"), "holdout_seed": holdout_seed}


def check_fold(folds: int, fold: int | None, required: bool = False) -> int | None:
    """``fold`` checked against ``folds`` (``None`` allowed unless ``required``); ``ValueError`` in one line."""
    if isinstance(folds, bool) or int(folds) != folds or int(folds) < 1:
        raise DyMoInputError(f"folds must be an integer >= 1 (1: no cross-validation), got {folds!r}.")
    if fold is None:
        if required and int(folds) > 1:
            raise DyMoInputError(f"folds is {folds}: give the fold to train, --fold 0 .. --fold {int(folds) - 1}.")
        return None
    if int(folds) == 1:
        raise DyMoInputError(f"fold {fold} given but folds is 1 (no cross-validation); set folds > 1 or drop --fold.")
    if isinstance(fold, bool) or int(fold) != fold or not 0 <= int(fold) < int(folds):
        raise DyMoInputError(f"fold must be one of 0..{int(folds) - 1}, got {fold!r}.")
    return int(fold)


def fold_entries(
    spec: CohortSpec,
    split: str,
    folds_file: str | Path,
    fold: int | None = None,
    datalist: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Entries of a fold part of the pooled training and validation patients.

    Args:
        split: ``"training"``: the patients of every fold but ``fold`` (every patient in a fold when ``fold`` is None,
            e.g. the calibration of the ensemble of the fold networks); ``"validation"``: fold ``fold``'s patients
            (``fold`` required). The testing split is never in a fold (``ValueError``).
        folds_file: ``folds.json`` of :func:`write_folds`.
        fold: ``0..K-1``.
        datalist: another datalist with the same patients (default: the cohort's).

    Raises:
        ValueError: another split, a fold out of range, or a pooled patient that the folds file does not know (the
            datalist changed after prepare).
    """
    if split not in FOLD_SPLITS:
        raise DyMoInputError(
            f"split {split!r} is not in the folds: the folds pool the {' and '.join(FOLD_SPLITS)} patients only "
            "(the testing split is never in a fold)."
        )
    record = _load(folds_file)
    k, assignment, held_out = record["folds"], record["patients"], record["held_out"]
    if fold is None and split == "validation":
        raise DyMoInputError("the validation part of the folds is one fold's: give the fold (0..K-1).")
    if fold is not None and not 0 <= int(fold) < k:
        raise DyMoInputError(f"fold must be one of 0..{k - 1} ({folds_file}), got {fold!r}.")
    entries = pooled_entries(spec, datalist, exclude=held_out)
    unknown = [str(e[DyMoKeys.PATIENT_ID]) for e in entries if str(e[DyMoKeys.PATIENT_ID]) not in assignment]
    if unknown:
        raise DyMoInputError(
            f"folds file {folds_file} does not hold patient(s) {unknown[:5]} of the training / validation lists; the "
            "datalist changed after prepare: rerun prepare (and retrain the folds)."
        )
    if fold is None:
        return entries
    want_held_out = split == "validation"
    return [e for e in entries if (assignment[str(e[DyMoKeys.PATIENT_ID])] == int(fold)) == want_held_out]

