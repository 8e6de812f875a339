"""One summary line per modality and run, instead of a warning per patient."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from monai_dymo.keys import DyMoKeys

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["MissingnessSummaryHandler"]


def _reason_head(reason: Any) -> str:
    return str(reason).split(":", 1)[0].strip()


class MissingnessSummaryHandler:
    """Count the modality reasons of every batch of a run's first epoch (each patient once, however many epochs a
    trainer runs); at the end of that epoch log one line per modality, e.g.
    ``flair: 41 of 60 observed; missing: absent 15, unreadable 4``, and keep the counts in :attr:`counts`.

    Reasons are read from ``engine.state.batch`` (collated ``{name: [reasons]}`` or, after MONAI's decollation, one
    dict per patient). Counts restart at every ``STARTED`` event (each run, e.g. each run of an evaluator).

    Args:
        modalities: modality names to report (default: every name seen).
        reasons_key: batch key of the reasons.
        name: label of the run in the log lines (e.g. ``"inference"``).
        logger_name: logger to write to.
    """

    def __init__(
        self,
        modalities: Sequence[str] | None = None,
        reasons_key: str = DyMoKeys.REASONS,
        name: str = "run",
        logger_name: str = "monai_dymo.missingness",
    ) -> None:
        self.modalities = None if modalities is None else [str(m) for m in modalities]
        self.reasons_key = reasons_key
        self.name = name
        self.logger = logging.getLogger(logger_name)
        self.counts: dict[str, Counter] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _reset(self, _engine: Engine) -> None:
        self.counts = {}

    def update(self, batch: Any) -> None:
        """Add the reasons of one batch (collated or decollated)."""
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            reasons = item.get(self.reasons_key) if isinstance(item, Mapping) else None
            if not isinstance(reasons, Mapping):
                continue
            for name, values in reasons.items():
                if self.modalities is not None and str(name) not in self.modalities:
                    continue
                values = [values] if isinstance(values, str) else list(values)
                self.counts.setdefault(str(name), Counter()).update(_reason_head(v) for v in values)

    def _count(self, engine: Engine) -> None:
        if engine.state.epoch == 1:
            self.update(engine.state.batch)

    def lines(self) -> list[str]:
        out = []
        for name in self.modalities or sorted(self.counts):
            counts = Counter(self.counts.get(name, Counter()))
            total = sum(counts.values())
            observed = counts.pop("observed", 0)
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
            out.append(f"{self.name} / {name}: {observed} of {total} observed; missing: {detail}")
        return out

    def _log(self, engine: Engine) -> None:
        if engine.state.epoch != 1:
            return
        for line in self.lines():
            self.logger.info(line)
