"""Data generators and loaders: PolyMNIST builder / dataset, seeded missing-modality pattern files and the synthetic
brain MRI + clinical cohort.

Nothing here imports networks or the inferer, and nothing here runs a model. The names below are imported on first use
(PEP 562), so ``python -m monai_dymo.data --help`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai_dymo.lazy_exports import lazy_exports

_MISSING_PATTERNS = (
    "expected_missing_rate",
    "generate_missing_pattern",
    "generate_pattern_files",
    "pattern_filename",
    "pattern_stats",
    "read_pattern_csv",
    "write_pattern_csv",
    "write_holdout_pattern",
)
_POLYMNIST = (
    "IMAGE_SIZE",
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_MODALITIES",
    "POLYMNIST_SPLITS",
    "PolyMNISTDataset",
    "build_polymnist",
    "build_polymnist_split",
    "build_polymnist_to_disk",
    "compose_modality",
    "digit_permutations",
    "load_backgrounds",
    "load_mnist_npz",
    "load_polymnist_datalist",
    "load_polymnist_npz",
    "polymnist_arrays",
    "save_polymnist_npz",
    "save_polymnist_png",
    "save_preview",
)
_BRAIN_COHORT = ("generate_brain_cohort", "iter_cohort_patients", "write_dicom_series")
_LAZY_NAMES: dict[str, str] = {
    **{n: "brain_cohort" for n in _BRAIN_COHORT},
    **{n: "missing_patterns" for n in _MISSING_PATTERNS},
    **{n: "polymnist" for n in _POLYMNIST},
}

__all__ = sorted(_LAZY_NAMES)

if TYPE_CHECKING:
    from .brain_cohort import generate_brain_cohort, iter_cohort_patients, write_dicom_series
    from .missing_patterns import (
        expected_missing_rate,
        generate_missing_pattern,
        generate_pattern_files,
        pattern_filename,
        pattern_stats,
        read_pattern_csv,
        write_pattern_csv,
    )
    from .polymnist import (
        IMAGE_SIZE,
        POLYMNIST_BACKGROUNDS,
        POLYMNIST_MODALITIES,
        POLYMNIST_SPLITS,
        PolyMNISTDataset,
        build_polymnist,
        build_polymnist_split,
        build_polymnist_to_disk,
        compose_modality,
        digit_permutations,
        load_backgrounds,
        load_mnist_npz,
        load_polymnist_datalist,
        load_polymnist_npz,
        polymnist_arrays,
        save_polymnist_npz,
        save_polymnist_png,
        save_preview,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_NAMES)
