"""Seeded missing-modality patterns written as CSV, so that every method is evaluated on identical masks.

Generation rule (:func:`generate_missing_pattern`): for pattern seed ``s`` draw ``u ~ U[0, 1)`` of shape ``[N, M]``
with ``numpy.random.default_rng(s)``; modality ``m`` of sample ``i`` is *missing* when ``u[i, m] < rate`` (so each
modality is missing independently with probability ``rate``).  Rows where every modality came out missing keep the
modality with the largest ``u`` observed: given that all ``u < rate`` this is a uniformly random modality ("keep one"
rule), and it lowers the realised missing rate to ``rate - rate**M / M`` (M = 5: 0.2 -> 0.19994, 0.4 -> 0.39795,
0.6 -> 0.58445, 0.8 -> 0.73446).  Because ``u`` depends on the seed only, patterns of one seed are *nested* across
rates (what is missing at 0.4 is also missing at 0.6), and the first ``n`` rows do not depend on ``N``.

File format: ``missing_rate{rate}_seed{seed}.csv`` (rate written with ``{:g}``, e.g. ``missing_rate0.2_seed0.csv``),
header ``index,<modality names...>``, one row per sample ``i = 0..N-1`` in order, ``1`` = observed, ``0`` = missing.
:func:`generate_pattern_files` also writes ``summary.json`` and ``summary.md`` with the realised missing rates.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "generate_missing_pattern",
    "expected_missing_rate",
    "pattern_filename",
    "write_pattern_csv",
    "read_pattern_csv",
    "pattern_stats",
    "generate_pattern_files",
]


def generate_missing_pattern(num_samples: int, num_modalities: int, rate: float, seed: int) -> np.ndarray:
    """Observed-modality mask, bool ``[num_samples, num_modalities]`` (True = observed), at least one True per row.

    See the module docstring for the rule (independent drop with probability ``rate``, keep-one for all-missing rows).
    """
    if num_samples < 1 or num_modalities < 1:
        raise ValueError(f"num_samples and num_modalities must be positive, got {num_samples}, {num_modalities}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"missing rate must be in [0, 1], got {rate}")
    u = np.random.default_rng(seed).random((num_samples, num_modalities))
    present = u >= rate
    empty = ~present.any(axis=1)
    present[np.flatnonzero(empty), u[empty].argmax(axis=1)] = True
    return present


def expected_missing_rate(rate: float, num_modalities: int) -> float:
    """Expected fraction of missing entries under the keep-one rule: ``rate - rate**M / M``."""
    return float(rate) - float(rate) ** num_modalities / num_modalities


def pattern_filename(rate: float, seed: int) -> str:
    """``missing_rate{rate:g}_seed{seed}.csv``, e.g. ``missing_rate0.2_seed0.csv``; ``ValueError`` for a rate outside
    ``[0, 1]`` or a negative seed (no such file is ever generated)."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"missing rate must be in [0, 1], got {rate}")
    if int(seed) != seed or int(seed) < 0:
        raise ValueError(f"pattern seed must be a non-negative integer, got {seed}")
    return f"missing_rate{float(rate):g}_seed{int(seed)}.csv"


def write_pattern_csv(path: str | Path, present: np.ndarray, modalities: Sequence[str]) -> Path:
    """Write ``present`` (bool ``[N, M]``) as ``index,<modalities>`` CSV with 1 = observed, 0 = missing."""
    present = np.asarray(present, dtype=bool)
    names = [str(n) for n in modalities]
    if present.ndim != 2 or present.shape[1] != len(names):
        raise ValueError(f"pattern has shape {present.shape}, expected [N, {len(names)}] for modalities {names}")
    if len(set(names)) != len(names) or "index" in names:
        raise ValueError(f"modality names must be unique and not 'index', got {names}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["index", *names])
        for i, row in enumerate(present.astype(np.int8)):
            writer.writerow([i, *row.tolist()])
    return path


def read_pattern_csv(path: str | Path, modalities: Sequence[str] | None = None) -> np.ndarray:
    """Read a pattern file into bool ``[N, M]`` (True = observed), columns in the order of ``modalities``
    (default: the file's order).

    Validation (``ValueError`` naming the file and row): header ``index,<names>`` with unique names containing every
    requested modality; rows ``0..N-1`` in order; values ``0``/``1``; no row with every modality of the file missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing-pattern file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"missing-pattern file {path} is empty; expected a header 'index,<modality names>'")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2 or header[0] != "index":
        raise ValueError(f"missing-pattern file {path}: header {rows[0]} must be 'index' followed by modality names")
    names = header[1:]
    if len(set(names)) != len(names):
        raise ValueError(f"missing-pattern file {path}: duplicate modality columns in header {header}")
    wanted = list(names) if modalities is None else [str(m) for m in modalities]
    absent = [m for m in wanted if m not in names]
    if absent:
        raise ValueError(f"missing-pattern file {path}: no column for modality {absent}; file has {names}")
    body = rows[1:]
    if not body:
        raise ValueError(f"missing-pattern file {path} has a header but no sample rows")
    values = np.zeros((len(body), len(names)), dtype=bool)
    for r, row in enumerate(body):
        line = r + 2
        if len(row) != len(header):
            raise ValueError(
                f"missing-pattern file {path}, row {r} (line {line}): {len(row)} fields, expected {len(header)}"
            )
        if row[0].strip() != str(r):
            raise ValueError(
                f"missing-pattern file {path}, row {r} (line {line}): index {row[0]!r}, expected {r} "
                "(rows 0..N-1 in order)"
            )
        for c, cell in enumerate(row[1:]):
            cell = cell.strip()
            if cell not in ("0", "1"):
                raise ValueError(
                    f"missing-pattern file {path}, row {r} (line {line}), modality {names[c]}: value {cell!r}, "
                    f"expected 1 (observed) or 0 (missing)"
                )
            values[r, c] = cell == "1"
        if not values[r].any():
            raise ValueError(
                f"missing-pattern file {path}, row {r} (line {line}): every modality is missing; "
                f"at least one must be observed"
            )
    return values[:, [names.index(m) for m in wanted]]


def pattern_stats(present: np.ndarray, modalities: Sequence[str], rate: float | None = None) -> dict[str, Any]:
    """Realised statistics of a pattern: overall and per-modality missing rate, histogram of observed counts."""
    present = np.asarray(present, dtype=bool)
    n, num_mod = present.shape
    counts = present.sum(axis=1)
    out: dict[str, Any] = {
        "num_samples": int(n),
        "missing_rate": float(1.0 - present.mean()),
        "per_modality_missing_rate": {str(m): float(1.0 - present[:, k].mean()) for k, m in enumerate(modalities)},
        "observed_count_histogram": {str(c): int((counts == c).sum()) for c in range(1, num_mod + 1)},
        "complete_rows": int((counts == num_mod).sum()),
    }
    if rate is not None:
        out["target_rate"] = float(rate)
        out["expected_rate_keep_one"] = expected_missing_rate(rate, num_mod)
    return out


def generate_pattern_files(
    num_samples: int,
    modalities: Sequence[str],
    rates: Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write one CSV per (rate, seed) into ``out_dir`` plus ``summary.json`` / ``summary.md``; returns the summary."""
    names = [str(m) for m in modalities]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for rate in rates:
        for seed in seeds:
            present = generate_missing_pattern(num_samples, len(names), rate, seed)
            path = write_pattern_csv(out_dir / pattern_filename(rate, seed), present, names)
            stats = pattern_stats(present, names, rate)
            entries.append({"file": path.name, "rate": float(rate), "seed": int(seed), **stats})
    summary = {
        "num_samples": int(num_samples),
        "modalities": names,
        "rates": [float(r) for r in rates],
        "seeds": [int(s) for s in seeds],
        "rule": "missing where U[0,1) draw (numpy default_rng(seed), shape [N, M]) < rate; an all-missing row keeps "
        "its modality with the largest draw (uniformly random) observed; 1 = observed, 0 = missing",
        "files": entries,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Missing-modality patterns ({num_samples} samples, modalities {', '.join(names)})",
        "",
        summary["rule"] + ".",
        "",
        "| file | target rate | expected (keep-one) | realised | complete rows | rows with 1 observed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        lines.append(
            f"| {e['file']} | {e['rate']:.2f} | {e['expected_rate_keep_one']:.4f} | {e['missing_rate']:.4f} | "
            f"{e['complete_rows']} | {e['observed_count_histogram']['1']} |"
        )
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return summary
