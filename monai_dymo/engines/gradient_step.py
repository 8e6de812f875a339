"""The optimisation step of a training iteration, with gradient accumulation and automatic mixed precision, as MONAI's
``SupervisedTrainer._iteration`` takes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys

__all__ = ["accumulation_flags", "gradient_step"]


def accumulation_flags(engine: Any) -> tuple[bool, bool]:
    """``(zero the gradients before, step the optimiser after)`` this iteration, for ``engine.accumulation_steps``
    iterations per step (the last iteration of an epoch always steps)."""
    acc = engine.accumulation_steps
    if acc <= 1:
        return True, True
    epoch_length = engine.state.epoch_length
    local_iter = engine.state.iteration - 1
    if epoch_length is not None:
        local_iter = local_iter % epoch_length
    should_step = (local_iter + 1) % acc == 0 or (epoch_length is not None and local_iter + 1 == epoch_length)
    return local_iter % acc == 0, should_step


def gradient_step(engine: Any, compute_loss: Callable[[], bool], always_step: bool = False) -> None:
    """Train mode, zero the gradients (when due), ``compute_loss()`` (under ``torch.autocast`` with AMP), backward of
    ``engine.state.output["loss"]`` (divided by ``accumulation_steps``, scaled with AMP) and the optimiser step (when
    due), firing ``BACKWARD_COMPLETED`` in between.

    Args:
        engine: a ``monai.engines.SupervisedTrainer``.
        compute_loss: runs the forward pass and puts the loss into ``engine.state.output``; returns False when there
            is none (nothing to back-propagate: no backward, and no step unless gradients are being accumulated).
        always_step: run backward and step even without a loss (a rank of a distributed run takes part in the
            gradient reduction with the zero-gradient ``loss`` that ``compute_loss`` left).
    """
    acc = engine.accumulation_steps
    should_zero_grad, should_step = accumulation_flags(engine)
    scaler = engine.scaler if engine.amp else None
    engine.network.train()
    if should_zero_grad:
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
    if scaler is not None:
        with torch.autocast("cuda", **engine.amp_kwargs):
            has_loss = compute_loss()
    else:
        has_loss = compute_loss()
    if has_loss or always_step:
        loss = engine.state.output[CommonKeys.LOSS]
        loss = loss / acc if acc > 1 else loss
        (loss if scaler is None else scaler.scale(loss)).backward()
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    if should_step and (has_loss or acc > 1 or always_step):
        if scaler is None:
            engine.optimizer.step()
        else:
            scaler.step(engine.optimizer)
            scaler.update()
