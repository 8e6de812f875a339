"""Datasets of a cohort split: the datalist entries through the cohort preprocessing, optionally cached.

Preprocessing 3D volumes dominates the cost of every stage, so the bundle caches the preprocessed tensors with
MONAI's :class:`~monai.data.PersistentDataset` (on disk, shared by every stage and run) when ``cache_dir`` is set, or
:class:`~monai.data.CacheDataset` (in memory, one run) with ``cache: memory``. The disk cache lives in a subfolder
named after a hash of the preprocessing settings (modalities, sizes, spacing, intensity, clinical statistics), so a
changed setting never reads stale tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from monai_dymo.cohort.datalist import load_split
from monai_dymo.cohort.folds import fold_entries
from monai_dymo.cohort.preprocessing import build_preprocessing
from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoInputError

__all__ = ["preprocessing_key", "cohort_dataset"]


#: bumped whenever the preprocessed samples change layout (2: clinical ``field_notes``), so that a disk cache written
#: by an older version is never mixed into a batch with new samples (3: 2D pictures rows first, RGB option)
PREPROCESSING_VERSION = 3


def preprocessing_key(spec: CohortSpec, stats_file: str | Path | None) -> str:
    """Short hash of everything that changes the preprocessed tensors."""
    # the encoder's pretrained weights do not change the preprocessed tensors
    modalities = [{k: v for k, v in asdict(m).items() if k != "pretrained"} for m in spec.modalities]
    payload: dict[str, Any] = {"modalities": modalities, "version": PREPROCESSING_VERSION}
    if spec.roi is not None:
        payload["roi"] = asdict(spec.roi)
    if stats_file is not None and Path(stats_file).is_file():
        payload["stats"] = Path(stats_file).read_text()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cohort_dataset(
    spec: CohortSpec,
    split: str,
    stats_file: str | Path | None = None,
    datalist: str | Path | None = None,
    cache: str | None = "disk",
    cache_dir: str | Path | None = None,
    max_patients: int | None = None,
    require_labels: bool | None = None,
    num_workers: int = 0,
    augmentation: Any = None,
    folds_file: str | Path | None = None,
    fold: int | None = None,
) -> Dataset:
    """The preprocessed patients of one split, or of one part of a fold (cross-validation).

    Args:
        spec: the cohort.
        split: ``"training"``, ``"validation"`` or ``"testing"``; with ``folds_file``, a part of the folds of the
            pooled training and validation patients (:func:`~monai_dymo.cohort.folds.fold_entries`): ``"training"``
            = every fold but ``fold`` (every pooled patient when ``fold`` is None), ``"validation"`` = fold ``fold``.
        stats_file: clinical statistics of the prepare stage.
        datalist: another datalist with the same modalities (e.g. new patients for inference).
        cache: ``"disk"`` (``PersistentDataset`` under ``cache_dir``), ``"memory"`` (``CacheDataset``) or ``None``.
        cache_dir: folder of the disk cache (required for ``"disk"``).
        max_patients: keep the first N entries (small runs); at least 1 (``ValueError`` otherwise: a run over no
            patient is refused rather than ending without a report).
        require_labels: see :func:`~monai_dymo.cohort.load_split`.
        num_workers: workers that fill a memory cache.
        augmentation: random transforms applied after the (cached) preprocessing, e.g.
            :func:`~monai_dymo.cohort.build_augmentation` for training.
        folds_file: the ``folds.json`` of the prepare stage (folds > 1); None: the datalist's own splits.
        fold: the fold, ``0..K-1`` (with ``folds_file`` only).
    """
    if max_patients is not None and int(max_patients) < 1:  # an empty run would end "successfully" with no report
        raise DyMoInputError(f"max_patients must be at least 1 (or null for every patient), got {max_patients}.")
    if folds_file is not None:
        entries = fold_entries(spec, split, folds_file, fold, datalist=datalist)
    elif fold is not None:
        raise DyMoInputError(f"fold {fold} given without the folds file of the prepare stage (folds > 1).")
    else:
        entries = load_split(spec, split, datalist=datalist, require_labels=require_labels)
    if max_patients is not None:
        entries = entries[: int(max_patients)]
    transform: Any = build_preprocessing(spec, stats_file)
    if augmentation is not None:  # MONAI's caching datasets cache up to the first random transform
        transform = Compose([transform, augmentation])
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir.")
        folder = Path(cache_dir) / preprocessing_key(spec, stats_file)
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(entries, transform, cache_dir=folder, track_meta=True, weights_only=False)
    if cache == "memory":
        return CacheDataset(entries, transform, num_workers=num_workers, progress=False)
    if cache is None or cache == "none":
        return Dataset(entries, transform)
    raise ValueError(f"cache must be 'disk', 'memory' or None, got {cache!r}.")
