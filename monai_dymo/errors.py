"""Input errors at the surface: when a stage cannot start because of its input, the last line printed is one line
naming the file and field.

monai_dymo raises :class:`DyMoInputError` (a ``ValueError``) or :class:`DyMoFileNotFoundError` (also a
``FileNotFoundError``) with a one-line message naming the patient, modality, file and field where they apply, when the
user's input is wrong: the cohort file, the datalist and clinical table, plan overrides, bundle settings (checkpoint,
learning-rate schedule, metric, margin), weights or calibrations that do not fit, missing-pattern files, the source
folders of the data converters. Every other ``ValueError`` is an internal check (our own modules disagree, a
programming error) and keeps its traceback.

Under ``python -m monai.bundle run`` MONAI wraps every error of a config expression in ``RuntimeError: Failed to
evaluate ConfigExpression ...`` (``monai.bundle.config_item``), so the user's message ends up in the middle of a long
double traceback. :func:`install_excepthook` (installed when ``monai_dymo`` is imported by a ``python -m monai.bundle``
process, as every stage of the project's bundles does, see :func:`running_monai_bundle`, and by ``monai-dymo demo``)
prints an uncaught exception with a :class:`DyMoInputError` behind it (:func:`input_error`) as::

    monai-dymo: error: <the message>

as the last line, after one line saying how to see the traceback (``MONAI_DYMO_TRACEBACK=1``: the full traceback, then
the same last line); the exit status stays non-zero (1). Any other exception (a bug, an interrupted run) keeps
Python's normal traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = [
    "DyMoInputError",
    "DyMoFileNotFoundError",
    "input_error",
    "error_line",
    "install_excepthook",
    "running_monai_bundle",
    "TRACEBACK_ENV",
]

#: environment variable that shows the full traceback of an input error too.
TRACEBACK_ENV = "MONAI_DYMO_TRACEBACK"


class DyMoInputError(ValueError):
    """A stage cannot start because of its input; the message is one line naming the file and the field."""


class DyMoFileNotFoundError(DyMoInputError, FileNotFoundError):
    """An input file or folder the user named is not there (``except FileNotFoundError`` catches it too)."""


def input_error(exc: BaseException | None) -> DyMoInputError | None:
    """The :class:`DyMoInputError` behind ``exc``: ``exc`` itself or the first one down its explicit ``__cause__``
    chain (``raise ... from e``, as MONAI's wrappers chain). ``None`` when there is none (a bug or another failure,
    also one raised while handling an input error: keep the traceback)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DyMoInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


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
