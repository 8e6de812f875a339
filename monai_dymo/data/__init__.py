"""Data generators and loaders: PolyMNIST builder / dataset, seeded missing-modality pattern files and the synthetic
brain MRI + clinical cohort.

Nothing here imports networks or the inferer, and nothing here runs a model.
"""

from __future__ import annotations

from .brain_cohort import CLASSES as BRAIN_COHORT_CLASSES
from .brain_cohort import SEQUENCES as BRAIN_COHORT_SEQUENCES
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

__all__ = [
    "BRAIN_COHORT_CLASSES",
    "BRAIN_COHORT_SEQUENCES",
    "generate_brain_cohort",
    "iter_cohort_patients",
    "write_dicom_series",
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
    "expected_missing_rate",
    "generate_missing_pattern",
    "generate_pattern_files",
    "load_backgrounds",
    "load_mnist_npz",
    "load_polymnist_datalist",
    "load_polymnist_npz",
    "pattern_filename",
    "pattern_stats",
    "polymnist_arrays",
    "read_pattern_csv",
    "save_polymnist_npz",
    "save_polymnist_png",
    "save_preview",
    "write_pattern_csv",
]
