"""Progress bars for long runs: ignite's ``ProgressBar`` (tqdm) on the monai_dymo engines.

Every engine of :mod:`monai_dymo.engines` takes ``progress: bool | None``: True attaches a bar (iterations of the
current epoch, with the loss for trainers), False none, None (default) one when standard error is a terminal, so that
interactive runs show progress and logs, CI and tests stay clean. Only the first process of a distributed run shows it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

import torch

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine

ProgressBar, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "ProgressBar")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")

__all__ = ["attach_progress_bar", "loss_progress", "progress_enabled"]


def progress_enabled(progress: bool | None, stream: IO[str] | None = None) -> bool:
    """``progress`` itself when given; for None, whether ``stream`` (default ``sys.stderr``) is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def loss_progress(output: Any) -> dict[str, float]:
    """``output_transform`` of a trainer's bar: ``{"loss": value}`` from a dict output with a scalar ``"loss"``."""
    loss = output.get("loss") if isinstance(output, Mapping) else None
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return {"loss": float(loss.detach())}
    if isinstance(loss, (int, float)):
        return {"loss": float(loss)}
    return {}


def attach_progress_bar(
    engine: Engine, progress: bool | None, desc: str, output_transform: Callable[[Any], Any] | None = None
) -> ProgressBar | None:
    """Attach an ignite ``ProgressBar`` (tqdm, on standard error) to ``engine`` when :func:`progress_enabled`.

    Args:
        engine: the trainer or evaluator.
        progress: True, False, or None (on when standard error is a terminal).
        desc: label of the bar.
        output_transform: shown values from ``engine.state.output`` (e.g. :func:`loss_progress`).

    Returns:
        the attached bar, or None.
    """
    if not progress_enabled(progress) or idist.get_rank() != 0:
        return None
    bar = ProgressBar(persist=False, desc=desc)
    bar.attach(engine, output_transform=output_transform)
    return bar
