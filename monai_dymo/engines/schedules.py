"""Training choices named in a bundle config (``lr_schedule: cosine``, ``checkpoint: last``, ``ema_momentum: 0.01``),
so a user writes no Python."""

from __future__ import annotations

import torch
from ignite.handlers import EMAHandler

__all__ = ["LR_SCHEDULES", "CHECKPOINTS", "build_lr_scheduler", "check_checkpoint", "build_ema_handler"]

#: names understood by :func:`build_lr_scheduler`
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")
#: which weights a training run keeps: the best validation epoch or the last epoch
CHECKPOINTS: tuple[str, ...] = ("best", "last")


def _choose(setting: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{setting} must be one of {', '.join(options)}, got {value!r}.")
    return value


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
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}.")
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
        raise ValueError(f"ema_momentum must be a number in (0, 1) or null, got {momentum!r}.") from e
    if not 0.0 < value < 1.0:
        raise ValueError(f"ema_momentum must be in (0, 1) or null, got {momentum!r}.")
    return EMAHandler(network, momentum=value)
