"""Epoch-end refresh of DyMo's class prototypes (method section 2)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from monai_dymo.distributed import all_reduce_
from monai_dymo.losses import PrototypeAccumulator, SubsetAugmentedLoss

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["PrototypeRefreshHandler"]


class PrototypeRefreshHandler:
    """At every ``EPOCH_COMPLETED``: prototypes ← class means of the projections accumulated during the epoch, the
    accumulator is reset, and the prototype loss is switched on once ``warmup_epochs`` epochs have completed.

    With the default ``warmup_epochs=3`` epochs 1-3 train with cross-entropy only and epoch 4 onwards adds the
    prototype term, against the class means of the previous epoch's projections (all sampled subsets pooled). A class
    absent from an epoch keeps its previous prototype (zeros before it is first seen). In distributed runs the
    accumulated sums and counts are summed over the ranks first, so every rank gets the same prototypes.

    The loss and the accumulator default to the engine's ``loss_function`` and ``prototype_accumulator`` (as set by
    :class:`monai_dymo.engines.trainer.SubsetAugmentedTrainer`), looked up when the event fires.

    ``state_dict``/``load_state_dict`` cover the prototypes, the on/off flag and the accumulator, so the handler can be
    put in a ``CheckpointSaver``'s ``save_dict`` (the loss module itself can be saved instead: its buffers hold the
    prototypes and the flag). Attach it before a ``CheckpointSaver`` that saves at epoch end, so the checkpoint holds
    the refreshed prototypes; ``SubsetAugmentedTrainer`` attaches one first automatically unless given one.

    Args:
        warmup_epochs: number of epochs trained before the prototype term is switched on.
        loss_function: the :class:`SubsetAugmentedLoss` holding the prototypes (default: ``engine.loss_function``).
        accumulator: the :class:`PrototypeAccumulator` (default: ``engine.prototype_accumulator``).
        name: logger name (default: ``engine.logger``).
    """

    def __init__(
        self,
        warmup_epochs: int = 3,
        loss_function: SubsetAugmentedLoss | None = None,
        accumulator: PrototypeAccumulator | None = None,
        name: str | None = None,
    ) -> None:
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.warmup_epochs = int(warmup_epochs)
        self.loss_function = loss_function
        self.accumulator = accumulator
        self.logger = logging.getLogger(name) if name is not None else None
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        self._engine = engine
        if not engine.has_event_handler(self.started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.started)
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _resolve(self, engine: Engine | None = None) -> tuple[SubsetAugmentedLoss, PrototypeAccumulator]:
        engine = engine if engine is not None else self._engine
        loss = self.loss_function if self.loss_function is not None else getattr(engine, "loss_function", None)
        acc = self.accumulator if self.accumulator is not None else getattr(engine, "prototype_accumulator", None)
        if not isinstance(loss, SubsetAugmentedLoss) or not isinstance(acc, PrototypeAccumulator):
            raise ValueError(
                "PrototypeRefreshHandler needs a SubsetAugmentedLoss and a PrototypeAccumulator (given, or as the "
                "engine's loss_function / prototype_accumulator); "
                f"found {type(loss).__name__} and {type(acc).__name__}."
            )
        return loss, acc

    def started(self, engine: Engine) -> None:
        """At ``STARTED`` (also when resuming): switch the prototype term on if the warm-up is already over."""
        loss, _ = self._resolve(engine)
        if engine.state.epoch >= max(self.warmup_epochs, 1) and not loss.active:
            loss.set_active(True)

    def __call__(self, engine: Engine) -> None:
        loss, acc = self._resolve(engine)
        all_reduce_(acc.sums, acc.counts)  # distributed runs: pool the projections of every rank
        if int(acc.counts.sum()) > 0:
            loss.set_prototypes(acc.compute(previous=loss.prototypes).to(loss.prototypes.device))
            unseen = (acc.counts == 0).nonzero().flatten().tolist()
            if unseen and self.logger is not None:
                self.logger.warning(
                    f"epoch {engine.state.epoch}: no sample of class(es) {unseen}; kept their prototypes."
                )
        acc.reset()
        if engine.state.epoch >= max(self.warmup_epochs, 1) and not loss.active:
            loss.set_active(True)
            if self.logger is not None:
                self.logger.info(f"epoch {engine.state.epoch}: prototype loss switched on.")

    def state_dict(self) -> dict[str, Any]:
        loss, acc = self._resolve()
        return {
            "prototypes": loss.prototypes.detach().clone(),
            "prototype_active": loss.prototype_active.detach().clone(),
            "accumulator": acc.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loss, acc = self._resolve()
        loss.set_prototypes(state["prototypes"].to(loss.prototypes.device))
        loss.set_active(bool(state["prototype_active"]))
        acc.load_state_dict(state["accumulator"])
