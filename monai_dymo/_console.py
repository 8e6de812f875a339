"""Console output shared by every layer (no torch / MONAI import).

A tqdm bar redraws itself with carriage returns; written into a log file (a bundle run with its output redirected, a
CI log) every refresh becomes garbage in the log. :func:`bar_disabled` keeps the bars a caller asked for on a terminal
and in a Jupyter notebook, and switches them off elsewhere.
"""

from __future__ import annotations

import sys
from typing import IO

__all__ = ["bar_disabled"]


def bar_disabled(progress: bool | None, stream: IO[str] | None = None) -> bool:
    """tqdm's ``disable`` for a bar the caller asked for with ``progress``: off when not asked, and when ``stream``
    (default ``sys.stderr``) is neither a terminal nor a notebook's output."""
    if not progress:
        return True
    if "ipykernel" in sys.modules:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())
