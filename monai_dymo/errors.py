"""Input errors at the surface: when a stage cannot start, the last line printed is one line naming the file and field.

monai_dymo raises ``ValueError`` / ``FileNotFoundError`` with a one-line message naming the file and the field when the
user's input is wrong (cohort file, datalist, clinical table, classes, weights that do not fit, an empty split).
Under ``python -m monai.bundle run`` MONAI wraps every error of a config expression in ``RuntimeError: Failed to
evaluate ConfigExpression ...`` (``monai.bundle.config_item``), so the user's message ends up in the middle of a long
double traceback. :func:`install_excepthook` (installed when ``monai_dymo`` is imported by a ``python -m monai.bundle``
process, as every stage of the project's bundles does, see :func:`running_monai_bundle`, and by ``monai-dymo demo``)
prints such an error as::

    monai-dymo: error: <the message>

as the last line, after one line saying how to see the traceback (``MONAI_DYMO_TRACEBACK=1``: the full traceback, then
the same last line); the exit status stays non-zero (1). Any other exception (a bug, an interrupted run) keeps
Python's normal traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = [
    "DyMoInputError",
    "input_error",
    "error_line",
    "install_excepthook",
    "running_monai_bundle",
    "TRACEBACK_ENV",
]

#: environment variable that shows the full traceback of an input error too.
TRACEBACK_ENV = "MONAI_DYMO_TRACEBACK"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class DyMoInputError(ValueError):
    """A stage cannot start because of its input; the message is one line naming the file and the field."""


def _raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by monai_dymo's own code (its innermost frame is in the package)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def input_error(exc: BaseException | None) -> BaseException | None:
    """The input error behind ``exc``, following the ``__cause__`` / ``__context__`` chain through MONAI's wrappers:
    a :class:`DyMoInputError`, or a ``ValueError`` / ``FileNotFoundError`` raised by monai_dymo's own code. ``None``
    when there is none (a bug or another failure: keep the traceback)."""
    seen: set[int] = set()
    found = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DyMoInputError) or (isinstance(exc, (ValueError, FileNotFoundError)) and _raised_here(exc)):
            found = exc  # keep walking its explicit causes: the innermost one is the root cause
            exc = exc.__cause__
        else:  # a wrapper (MONAI's RuntimeError) or another error raised while handling one
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return found


def error_line(exc: BaseException) -> str:
    """``"monai-dymo: error: <message>"`` on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"monai-dymo: error: {text}"


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    err = input_error(exc)
    previous = getattr(_hook, "previous", sys.__excepthook__)
    if err is None:
        previous(exc_type, exc, tb)
        return
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not hide the message
        pass
    if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        previous(exc_type, exc, tb)
    else:
        print(f"(the input of this stage is not usable; set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
    print(error_line(err), file=sys.stderr, flush=True)


def running_monai_bundle() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (also each process of ``torchrun -m monai.bundle``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) in ("monai.bundle.__main__", "monai.bundle")


def install_excepthook() -> None:
    """Print input errors as their one-line message (see the module docstring); idempotent, keeps the previous hook
    for every other exception."""
    if sys.excepthook is _hook:
        return
    _hook.previous = sys.excepthook  # type: ignore[attr-defined]
    sys.excepthook = _hook
