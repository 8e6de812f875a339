"""PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021): five image modalities ``m0..m4``, each sample showing five different
handwritten instances of one digit on crops of five background photographs.

This module reads a built split: :class:`PolyMNISTDataset` over a ``polymnist_{split}.npz`` file and
:func:`load_polymnist_datalist` over the PNG layout. Building (:func:`build_polymnist`, the construction rule) is in
:mod:`~monai_dymo.data.polymnist_build`, the file formats in :mod:`~monai_dymo.data.polymnist_files`; their names are
importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from monai_dymo.data.polymnist_build import (
    POLYMNIST_SPLITS,
    build_polymnist,
    build_polymnist_split,
    build_polymnist_to_disk,
    compose_modality,
    digit_permutations,
)
from monai_dymo.data.polymnist_files import (
    IMAGE_SIZE,
    POLYMNIST_BACKGROUNDS,
    POLYMNIST_MODALITIES,
    load_backgrounds,
    load_mnist_npz,
    load_polymnist_npz,
    polymnist_arrays,
    save_polymnist_npz,
    save_polymnist_png,
    save_preview,
)
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys, Reason

__all__ = [
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_MODALITIES",
    "POLYMNIST_SPLITS",
    "IMAGE_SIZE",
    "load_mnist_npz",
    "load_backgrounds",
    "digit_permutations",
    "compose_modality",
    "build_polymnist_split",
    "build_polymnist",
    "build_polymnist_to_disk",
    "save_polymnist_npz",
    "save_polymnist_png",
    "load_polymnist_npz",
    "polymnist_arrays",
    "save_preview",
    "load_polymnist_datalist",
    "PolyMNISTDataset",
]

_LABEL, _PID = str(DyMoKeys.LABEL), str(DyMoKeys.PATIENT_ID)
_PRESENT, _REASONS = str(DyMoKeys.PRESENT), str(DyMoKeys.REASONS)


class _PolyMNISTItems(Sequence):
    """Lazy sequence of sample dicts (uint8 storage, float conversion per item)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        positions: Sequence[int],
        names: Sequence[str],
        split: str,
        present: np.ndarray | None,
        reason_detail: str,
        missing_value: float | None,
    ) -> None:
        self.images, self.labels, self.positions, self.names = images, labels, list(positions), tuple(names)
        self.split, self.present, self.reason_detail, self.missing_value = split, present, reason_detail, missing_value

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        item: dict[str, Any] = {}
        for m, name in zip(self.positions, self.names):
            item[name] = torch.from_numpy(self.images[i, m].astype(np.float32) / 255.0)
        item[_LABEL] = int(self.labels[i])
        item["index"] = i
        item[_PID] = f"{self.split}-{i}"
        if self.present is not None:
            row = self.present[i]
            reasons = {}
            for k, name in enumerate(self.names):
                if row[k]:
                    reasons[name] = str(Reason.OBSERVED)
                else:
                    reasons[name] = f"{Reason.SIMULATED}: {self.reason_detail} row {i}"
                    if self.missing_value is not None:
                        item[name] = torch.full_like(item[name], float(self.missing_value))
            item[_PRESENT] = torch.as_tensor(row, dtype=torch.bool)
            item[_REASONS] = reasons
        return item


class PolyMNISTDataset(Dataset):
    """MONAI dataset over a PolyMNIST split file; items are built lazily from the uint8 array.

    Each item: ``{name: FloatTensor[3, 28, 28] in [0, 1] for each modality, "label": int, "index": int,
    "patient_id": "{split}-{index}"}``; with ``pattern_csv`` also ``"present"``: ``BoolTensor[M]`` (modality order of
    ``modalities``) and ``"modality_reasons"`` (``"observed"`` / ``"simulated missing: <file> row i"``), and missing
    modalities are replaced by ``missing_value`` (0 by default; ``None`` keeps the true image, e.g. for oracles).

    Args:
        npz_path: a ``polymnist_{split}.npz`` file.
        modalities: names to load (default: all in the file's order).
        transform: MONAI transform(s) applied to each item dict.
        pattern_csv: missing-pattern file (see :mod:`monai_dymo.data.missing_patterns`); must have one row per sample
            (or at least ``max_samples`` rows when ``max_samples`` is given, of which the first are used).
        max_samples: keep the first ``max_samples`` samples (CI-sized runs).
        missing_value: fill value of missing modalities, or ``None``.
    """

    def __init__(
        self,
        npz_path: str | Path,
        modalities: Sequence[str] | None = None,
        transform: Callable | Sequence[Callable] | None = None,
        pattern_csv: str | Path | None = None,
        max_samples: int | None = None,
        missing_value: float | None = 0.0,
    ) -> None:
        data = load_polymnist_npz(npz_path, max_samples=max_samples)
        all_names = tuple(str(n) for n in data["modalities"])
        names = tuple(modalities) if modalities is not None else all_names
        unknown = [n for n in names if n not in all_names]
        if unknown:
            raise DyMoInputError(
                f"PolyMNIST file {npz_path}: unknown modality name(s) {unknown}; file has {list(all_names)}"
            )
        self.modalities = names
        self.split = str(data["split"]) if "split" in data else Path(npz_path).stem.replace("polymnist_", "")
        present = None
        if pattern_csv is not None:
            from monai_dymo.data.missing_patterns import read_pattern_csv

            present = read_pattern_csv(pattern_csv, names)
            n = data["labels"].shape[0]
            if (max_samples is None and present.shape[0] != n) or present.shape[0] < n:
                raise DyMoInputError(
                    f"missing-pattern file {pattern_csv} has {present.shape[0]} rows, expected {n} "
                    f"(one per sample of {npz_path})"
                )
            present = present[:n]
        items = _PolyMNISTItems(
            data["images"],
            data["labels"],
            [all_names.index(n) for n in names],
            names,
            self.split,
            present,
            f"pattern {Path(pattern_csv).name}" if pattern_csv is not None else "",
            missing_value,
        )
        self.labels = data["labels"]
        self.present = present
        super().__init__(data=items, transform=transform)


def load_polymnist_datalist(
    root: str | Path, split: str, modalities: Sequence[str] = POLYMNIST_MODALITIES, max_samples: int | None = None
) -> list[dict[str, Any]]:
    """Datalist for the PNG layout ``{root}/{split}/m{k}/{i}.{label}.png`` (for MONAI ``LoadImaged``).

    Returns ``[{name: path, ..., "label": int, "index": i, "patient_id": "{split}-{i}"}]`` sorted by ``i``.
    Raises ``FileNotFoundError`` / ``ValueError`` when a folder is missing or the modalities' files disagree.
    """
    base = Path(root) / split
    by_mod: dict[str, dict[int, tuple[int, Path]]] = {}
    for name in modalities:
        folder = base / name
        if not folder.is_dir():
            raise DyMoFileNotFoundError(f"PolyMNIST PNG folder not found: {folder}")
        entries: dict[int, tuple[int, Path]] = {}
        for p in folder.glob("*.png"):
            parts = p.stem.split(".")
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise DyMoInputError(f"PolyMNIST PNG {p}: name must be '{{index}}.{{label}}.png'")
            entries[int(parts[0])] = (int(parts[1]), p)
        by_mod[name] = entries
    ref_name = modalities[0]
    ref = by_mod[ref_name]
    indices = sorted(ref)
    if indices != list(range(len(indices))):
        raise DyMoInputError(f"PolyMNIST PNG folder {base / ref_name}: indices are not 0..{len(indices) - 1}")
    out = []
    for i in indices[: max_samples if max_samples is not None else len(indices)]:
        label = ref[i][0]
        item: dict[str, Any] = {}
        for name in modalities:
            if i not in by_mod[name]:
                raise DyMoInputError(f"PolyMNIST PNG: sample {i} missing in {base / name}")
            if by_mod[name][i][0] != label:
                raise DyMoInputError(
                    f"PolyMNIST PNG: sample {i} has label {by_mod[name][i][0]} in {base / name}, "
                    f"{label} in {base / ref_name}"
                )
            item[name] = str(by_mod[name][i][1])
        item.update({_LABEL: label, "index": i, _PID: f"{split}-{i}"})
        out.append(item)
    return out
