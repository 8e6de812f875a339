"""MONAI engines of monai_dymo: subset-augmented fusion training, recovery training and DyMo evaluation."""

from __future__ import annotations

from .evaluator import DyMoEvaluator, PrepareDyMoEvalBatch
from .recovery_trainer import (
    PrepareRecoveryBatch,
    RecoveryEvaluator,
    RecoveryMSE,
    RecoveryTrainer,
    recovery_loss_terms,
    simulate_missing,
)
from .schedules import (
    CHECKPOINT_METRICS,
    CHECKPOINTS,
    LR_SCHEDULES,
    BalancedAccuracy,
    build_checkpoint_metric,
    build_ema_handler,
    build_lr_scheduler,
    check_checkpoint,
)
from .trainer import AllSubsetsEvaluator, PrepareDyMoBatch, SubsetAugmentedTrainer, subset_augmented_forward

__all__ = [
    "CHECKPOINT_METRICS",
    "CHECKPOINTS",
    "LR_SCHEDULES",
    "AllSubsetsEvaluator",
    "BalancedAccuracy",
    "DyMoEvaluator",
    "PrepareDyMoBatch",
    "PrepareDyMoEvalBatch",
    "PrepareRecoveryBatch",
    "RecoveryEvaluator",
    "RecoveryMSE",
    "RecoveryTrainer",
    "SubsetAugmentedTrainer",
    "build_checkpoint_metric",
    "build_ema_handler",
    "build_lr_scheduler",
    "check_checkpoint",
    "recovery_loss_terms",
    "simulate_missing",
    "subset_augmented_forward",
]
