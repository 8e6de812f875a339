"""Training choices named in a bundle config (``lr_schedule: cosine``, ``checkpoint: best``,
``checkpoint_metric: balanced_accuracy``, ``ema_momentum: 0.01``), so a user writes no Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.exceptions import NotComputableError
from ignite.handlers import EMAHandler
from ignite.metrics import Accuracy, Metric, Recall
from ignite.metrics.metric import sync_all_reduce

from monai_dymo.errors import DyMoInputError

__all__ = [
    "LR_SCHEDULES",
    "CHECKPOINTS",
    "CHECKPOINT_METRICS",
    "BalancedAccuracy",
    "build_checkpoint_metric",
    "build_lr_scheduler",
    "check_checkpoint",
    "build_ema_handler",
]

#: names understood by :func:`build_lr_scheduler`
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")
#: which weights a training run keeps: the best validation epoch or the last epoch
CHECKPOINTS: tuple[str, ...] = ("best", "last")
#: what the validation scores to choose the best epoch: names understood by :func:`build_checkpoint_metric`
CHECKPOINT_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy")


def _choose(setting: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise DyMoInputError(f"{setting} must be one of {', '.join(options)}, got {value!r}.")
    return value


class BalancedAccuracy(Recall):
    """Balanced accuracy: the mean over classes of each class's recall (sensitivity), from ``(logits [N, C], labels
    [N])``; ignite's ``Recall(average=True)`` (macro recall), except that a class without any row is left out of the
    mean rather than counted as 0, as in ``sklearn.metrics.balanced_accuracy_score`` (the two agree whenever every
    class has a row). Distributed: the per-class counts are summed over the ranks."""

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, average=True, device=device)

    @sync_all_reduce("_numerator", "_denominator")
    def compute(self) -> float:
        if not self._updated:
            raise NotComputableError("BalancedAccuracy must have at least one example before it can be computed.")
        seen = torch.as_tensor(self._denominator) > 0
        return float((torch.as_tensor(self._numerator)[seen] / torch.as_tensor(self._denominator)[seen]).mean())


def _pred_label(output: dict[str, Any]) -> tuple[Any, Any]:
    return output["pred"], output["label"]


def build_checkpoint_metric(name: str) -> dict[str, Metric]:
    """The validation's key metric by name, for ``key_val_metric``: ``{"val_<name>": metric}`` reading the engine
    output's ``pred`` logits ``[N, C]`` and ``label`` ``[N]`` (pooled over every row, e.g. every modality subset of
    :class:`~monai_dymo.engines.AllSubsetsEvaluator`).

    ``"balanced_accuracy"``: :class:`BalancedAccuracy` (every class counts the same: a rare class never predicted
    costs the epoch); ``"accuracy"``: ignite's ``Accuracy`` (every row counts the same).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    _choose("checkpoint_metric", name, CHECKPOINT_METRICS)
    metric: Metric = BalancedAccuracy(_pred_label) if name == "balanced_accuracy" else Accuracy(_pred_label)
    return {f"val_{name}": metric}


def check_checkpoint(checkpoint: str) -> str:
    """``checkpoint`` if it is one of :data:`CHECKPOINTS` (else ``ValueError``: an unknown name would save nothing)."""
    return _choose("checkpoint", checkpoint, CHECKPOINTS)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, max_epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """An epoch-level scheduler for MONAI's ``LrScheduleHandler``.

    Args:
        optimizer: the training optimizer.
        schedule: ``"cosine"`` (annealed from the optimizer's rate to 0 at ``max_epochs``) or ``"constant"``.
        max_epochs: epochs of the run (the length of the cosine).

    Raises:
        ValueError: an unknown name (the message lists the known ones) or ``max_epochs < 1``.
    """
    _choose("lr_schedule", schedule, LR_SCHEDULES)
    if int(max_epochs) < 1:
        raise DyMoInputError(f"max_epochs must be at least 1, got {max_epochs}.")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(max_epochs), eta_min=0.0)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_ema_handler(network: torch.nn.Module, momentum: float | None) -> EMAHandler | None:
    """Ignite's ``EMAHandler`` keeping an exponential moving average of ``network``'s weights (its ``ema_model``,
    updated after every iteration once attached to the trainer: ``average <- (1 - momentum) * average + momentum *
    weights``, buffers copied), or None when ``momentum`` is None or 0 (off).

    Raises:
        ValueError: ``momentum`` is not a number in (0, 1).
    """
    if momentum is None or momentum == 0:
        return None
    try:
        value = float(momentum)
    except (TypeError, ValueError) as e:
        raise DyMoInputError(f"ema_momentum must be a number in (0, 1) or null, got {momentum!r}.") from e
    if not 0.0 < value < 1.0:
        raise DyMoInputError(f"ema_momentum must be in (0, 1) or null, got {momentum!r}.")
    return EMAHandler(network, momentum=value)
