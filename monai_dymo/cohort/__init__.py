"""DyMo on a user's cohort: the cohort description, its datalist and clinical table, preprocessing and networks.

The cohort bundle (``bundles/cohort_dymo``) only configures these:

- :mod:`~monai_dymo.cohort.spec`: :class:`CohortSpec`, the validated cohort YAML (modalities, datalist, classes);
- :mod:`~monai_dymo.cohort.datalist`: split loading, the clinical join by patient id, path checks, the ``prepare`` stage;
- :mod:`~monai_dymo.cohort.plan`: the cohort's fingerprint and the plan of every generic choice made from it;
- :mod:`~monai_dymo.cohort.preprocessing`: the transform chain of every modality kind;
- :mod:`~monai_dymo.cohort.folds`: K-fold cross-validation of the pooled training and validation patients;
- :mod:`~monai_dymo.cohort.dataset`: cached datasets of a split or of a fold's part;
- :mod:`~monai_dymo.cohort.networks`: the fusion and recovery networks built from the spec and the clinical statistics.

It sits above transforms, networks and engines and imports them; none of them imports it.
"""

from __future__ import annotations

from .datalist import INDEX_KEY, check_image_path, load_split, prepare_cohort, read_clinical_table, read_datalist
from .dataset import cohort_dataset, preprocessing_key
from .folds import check_fold, check_holdout, fold_assignments, fold_entries, read_folds, write_folds
from .networks import (
    FusionSettings,
    build_cohort_fusion,
    modality_spec,
    init_encoders_from_recovery,
    build_cohort_recovery,
    clinical_layouts,
    find_stats_file,
    fit_imputer_recovery,
    load_recovery_weights,
    recovery_kind,
)
from .plan import (
    PLAN_FILENAME,
    Plan,
    fingerprint,
    imbalance_warnings,
    load_plan,
    make_plan,
    training_class_weights,
    write_plan,
)
from .pretraining import contrastive_views, load_self_supervised, pretrain_image_encoders, self_supervised_file
from .preprocessing import build_augmentation, build_preprocessing, modality_transforms
from .spec import MODALITY_KINDS, CohortSpec, ModalityEntry

__all__ = [
    "INDEX_KEY",
    "build_augmentation",
    "MODALITY_KINDS",
    "CohortSpec",
    "ModalityEntry",
    "FusionSettings",
    "PLAN_FILENAME",
    "Plan",
    "fingerprint",
    "imbalance_warnings",
    "load_plan",
    "make_plan",
    "training_class_weights",
    "write_plan",
    "build_cohort_fusion",
    "modality_spec",
    "init_encoders_from_recovery",
    "build_cohort_recovery",
    "build_preprocessing",
    "check_image_path",
    "clinical_layouts",
    "find_stats_file",
    "fit_imputer_recovery",
    "load_recovery_weights",
    "check_fold",
    "check_holdout",
    "cohort_dataset",
    "fold_assignments",
    "fold_entries",
    "read_folds",
    "write_folds",
    "load_split",
    "modality_transforms",
    "prepare_cohort",
    "preprocessing_key",
    "read_clinical_table",
    "read_datalist",
    "recovery_kind",
    "contrastive_views",
    "load_self_supervised",
    "pretrain_image_encoders",
    "self_supervised_file",
]
