"""MONAI engines of monai_dymo: subset-augmented fusion training, recovery training and DyMo evaluation."""

from __future__ import annotations

from .evaluator import DyMoEvaluator, PrepareDyMoEvalBatch
from .trainer import PrepareDyMoBatch, SubsetAugmentedTrainer, subset_augmented_forward

__all__ = [
    "DyMoEvaluator",
    "PrepareDyMoBatch",
    "PrepareDyMoEvalBatch",
    "SubsetAugmentedTrainer",
    "subset_augmented_forward",
]
