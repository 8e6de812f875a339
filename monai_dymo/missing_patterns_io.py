"""Missing-pattern CSV files: the one reader and writer used by the data generators and the transforms.

Format: header ``[index,]<modality names...>``, one row per sample, ``1`` = observed, ``0`` = missing. The optional
first column ``index`` gives each row's sample index (unique integers, any order); without it row ``i`` is sample
``i``. Every row keeps at least one modality observed. Seeded pattern files are named
``missing_rate{rate:g}_seed{seed}.csv`` (:func:`pattern_filename`).

This module depends on nothing but NumPy (and :mod:`monai_dymo.errors`), so that both ``monai_dymo.data`` and
``monai_dymo.transforms`` use it without importing each other. A file or rate that is not usable raises
:class:`~monai_dymo.errors.DyMoInputError` naming the file, row, line and modality.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = [
    "INDEX_COLUMN",
    "check_missing_rate",
    "pattern_filename",
    "parse_pattern_filename",
    "read_pattern_table",
    "write_pattern_table",
]

INDEX_COLUMN = "index"
_FILENAME = re.compile(r"^missing_rate(?P<rate>.+)_seed(?P<seed>-?\d+)\.csv$")


def check_missing_rate(rate: Any, what: str = "missing rate") -> float:
    """``float(rate)``, or a ``ValueError`` saying that it is out of [0, 1] (or not a number)."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise DyMoInputError(f"{what} must be a number in [0, 1], got {rate!r}.") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise DyMoInputError(f"{what} {rate!r} is out of [0, 1].")
    return value


def pattern_filename(rate: float, seed: int) -> str:
    """``missing_rate{rate:g}_seed{seed}.csv``, e.g. ``missing_rate0.2_seed0.csv``; the rate must be in [0, 1] and the
    seed a non-negative integer."""
    if int(seed) != seed or int(seed) < 0:
        raise DyMoInputError(f"pattern seed must be a non-negative integer, got {seed}")
    return f"missing_rate{check_missing_rate(rate):g}_seed{int(seed)}.csv"


def parse_pattern_filename(path: str | Path) -> tuple[float, int] | None:
    """``(rate, seed)`` of a seeded pattern file name, None for any other name (rate not range-checked)."""
    match = _FILENAME.match(Path(path).name)
    if match is None:
        return None
    try:
        return float(match["rate"]), int(match["seed"])
    except ValueError:
        return None


def write_pattern_table(
    path: str | Path,
    present: Any,
    modalities: Sequence[str],
    indices: Sequence[int] | None = None,
    index_column: str = INDEX_COLUMN,
) -> Path:
    """Write ``present`` (bool ``[N, M]``, True = observed; NumPy or torch) as ``index,<modalities>`` CSV with
    ``1`` = observed, ``0`` = missing; ``indices`` default ``0..N-1``. Parent folders are created."""
    if hasattr(present, "detach"):  # torch tensor
        present = present.detach().cpu().numpy()
    present = np.asarray(present).astype(bool)
    names = [str(n) for n in modalities]
    if present.ndim != 2 or present.shape[1] != len(names):
        raise ValueError(f"pattern has shape {present.shape}, expected [N, {len(names)}] for modalities {names}")
    if len(set(names)) != len(names) or index_column in names:
        raise ValueError(f"modality names must be unique and not {index_column!r}, got {names}")
    rows = np.arange(len(present)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.shape != (len(present),):
        raise ValueError(f"{len(rows)} indices for {len(present)} pattern rows")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([index_column, *names])
        for i, row in zip(rows.tolist(), present.astype(np.int8)):
            writer.writerow([i, *row.tolist()])
    return path


def _not_found(path: Path) -> DyMoInputError:
    """The error for a pattern file that does not exist: an out-of-range rate in its name is the real cause."""
    parsed = parse_pattern_filename(path)
    if parsed is not None:
        try:
            check_missing_rate(parsed[0])
        except ValueError as e:
            return DyMoInputError(f"{e} (missing-pattern file {path} was asked for)")
    return DyMoFileNotFoundError(f"missing-pattern file not found: {path}")


def read_pattern_table(
    path: str | Path, modalities: Sequence[str] | None = None, index_column: str = INDEX_COLUMN
) -> tuple[np.ndarray, np.ndarray]:
    """Read a pattern file -> ``(indices int64 [N], present bool [N, M])``, columns in the order of ``modalities``
    (default: the file's order), rows in the file's order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file's name asks for a missing rate outside [0, 1] (and it does not exist); an empty file, a
            header without modality or with duplicate names, a requested modality without column, no sample row, a
            row with a wrong number of fields, an index that is not an integer or repeats, a value other than 0/1,
            or a row with every modality missing (naming the file, row, line and modality).
    """
    path = Path(path)
    if not path.is_file():
        raise _not_found(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DyMoInputError(f"missing-pattern file {path} is empty; expected a header '{index_column},<modality "
                             "names>'")
    header = [h.strip() for h in rows[0]]
    has_index = header[0] == index_column
    names = header[1:] if has_index else header
    if not names:
        raise DyMoInputError(f"missing-pattern file {path}: header {rows[0]} names no modality")
    if len(set(names)) != len(names):
        raise DyMoInputError(f"missing-pattern file {path}: duplicate modality columns in header {header}")
    wanted = list(names) if modalities is None else [str(m) for m in modalities]
    absent = [m for m in wanted if m not in names]
    if absent:
        raise DyMoInputError(f"missing-pattern file {path}: no column for modality {absent}; file has {names}")
    body = rows[1:]
    if not body:
        raise DyMoInputError(f"missing-pattern file {path} has a header but no sample rows")
    values = np.zeros((len(body), len(names)), dtype=bool)
    indices = np.arange(len(body), dtype=np.int64)
    seen: dict[int, int] = {}
    for r, row in enumerate(body):
        where = f"missing-pattern file {path}, row {r} (line {r + 2})"
        if len(row) != len(header):
            raise DyMoInputError(f"{where}: {len(row)} fields, expected {len(header)}")
        if has_index:
            cell = row[0].strip()
            try:
                indices[r] = int(cell)
            except ValueError:
                raise DyMoInputError(f"{where}: index {cell!r} is not an integer sample index") from None
            if int(indices[r]) in seen:
                raise DyMoInputError(f"{where}: index {cell} repeats row {seen[int(indices[r])]}")
            seen[int(indices[r])] = r
        for c, cell in enumerate(row[1:] if has_index else row):
            cell = cell.strip()
            if cell not in ("0", "1"):
                raise DyMoInputError(
                    f"{where}, modality {names[c]}: value {cell!r}, expected 1 (observed) or 0 (missing)"
                )
            values[r, c] = cell == "1"
        if not values[r].any():
            raise DyMoInputError(f"{where}: every modality is missing; at least one must be observed")
    return indices, values[:, [names.index(m) for m in wanted]]
