"""Learning-rate schedules named in a bundle config, so that a user writes ``lr_schedule: cosine``, not Python."""

from __future__ import annotations

import torch

__all__ = ["LR_SCHEDULES", "build_lr_scheduler"]

#: names understood by :func:`build_lr_scheduler`
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


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
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}.")
    if int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}.")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(max_epochs), eta_min=0.0)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
