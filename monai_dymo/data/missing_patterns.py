"""Seeded missing-modality patterns written as CSV, so that every method is evaluated on identical masks.

Generation rule (:func:`generate_missing_pattern`): for pattern seed ``s`` draw ``u ~ U[0, 1)`` of shape ``[N, M]``
with ``numpy.random.default_rng(s)``; modality ``m`` of sample ``i`` is *missing* when ``u[i, m] < rate`` (so each
modality is missing independently with probability ``rate``).  Rows where every modality came out missing keep the
modality with the largest ``u`` observed: given that all ``u < rate`` this is a uniformly random modality ("keep one"
rule), and it lowers the realised missing rate to ``rate - rate**M / M`` (M = 5: 0.2 -> 0.19994, 0.4 -> 0.39795,
0.6 -> 0.58445, 0.8 -> 0.73446).  Because ``u`` depends on the seed only, patterns of one seed are *nested* across
rates (what is missing at 0.4 is also missing at 0.6), and the first ``n`` rows do not depend on ``N``.

File format (read and written by :mod:`monai_dymo.missing_patterns_io`, shared with the transforms):
``missing_rate{rate}_seed{seed}.csv`` (rate written with ``{:g}``, e.g. ``missing_rate0.2_seed0.csv``),
header ``index,<modality names...>``, one row per sample ``i = 0..N-1`` in order, ``1`` = observed, ``0`` = missing.
:func:`generate_pattern_files` also writes ``summary.json`` and ``summary.md`` with the realised missing rates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.missing_patterns_io import check_missing_rate, pattern_filename, read_pattern_table, write_pattern_table
from monai_dymo.presence import keep_one_observed

__all__ = [
    "generate_missing_pattern",
    "expected_missing_rate",
    "pattern_filename",
    "write_pattern_csv",
    "read_pattern_csv",
    "pattern_stats",
    "generate_pattern_files",
    "generate_mixed_rate_pattern",
    "write_holdout_pattern",
]


def generate_missing_pattern(num_samples: int, num_modalities: int, rate: float, seed: int) -> np.ndarray:
    """Observed-modality mask, bool ``[num_samples, num_modalities]`` (True = observed), at least one True per row.

    See the module docstring for the rule (independent drop with probability ``rate``, keep-one for all-missing rows).
    """
    if num_samples < 1 or num_modalities < 1:
        raise ValueError(f"num_samples and num_modalities must be positive, got {num_samples}, {num_modalities}")
    rate = check_missing_rate(rate)
    u = np.random.default_rng(seed).random((num_samples, num_modalities))
    return ~keep_one_observed(np.ones_like(u, dtype=bool), u < rate, u)


def expected_missing_rate(rate: float, num_modalities: int) -> float:
    """Expected fraction of missing entries under the keep-one rule: ``rate - rate**M / M``."""
    return float(rate) - float(rate) ** num_modalities / num_modalities


write_pattern_csv = write_pattern_table
"""Write ``present`` (bool ``[N, M]``) as ``index,<modalities>`` CSV with 1 = observed, 0 = missing
(:func:`monai_dymo.missing_patterns_io.write_pattern_table`)."""


def read_pattern_csv(path: str | Path, modalities: Sequence[str] | None = None) -> np.ndarray:
    """Read a pattern file into bool ``[N, M]`` (True = observed), columns in the order of ``modalities``
    (default: the file's order), row ``i`` = sample ``i``.

    The file is validated by :func:`monai_dymo.missing_patterns_io.read_pattern_table` (``ValueError`` naming the
    file, row and modality; ``FileNotFoundError``; ``ValueError`` for a file name asking for a rate outside [0, 1]);
    here its rows must also be samples ``0..N-1`` in order.
    """
    indices, present = read_pattern_table(path, modalities)
    wrong = np.flatnonzero(indices != np.arange(len(indices)))
    if wrong.size:
        r = int(wrong[0])
        raise ValueError(
            f"missing-pattern file {path}, row {r} (line {r + 2}): index '{int(indices[r])}', expected {r} "
            "(rows 0..N-1 in order)"
        )
    return present


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


def generate_mixed_rate_pattern(num_samples: int, num_modalities: int, rates: Sequence[float], seed: int) -> np.ndarray:
    """Observed-modality mask where each sample first draws its missing rate uniformly from ``rates`` (then the rule of
    :func:`generate_missing_pattern`, keep-one included), with ``numpy.random.default_rng(seed)``: one pattern per
    sample over a mixture of rates, e.g. for held-out certification (every sample appears once)."""
    rates = np.asarray([check_missing_rate(r) for r in rates], dtype=float)
    if rates.size == 0:
        raise ValueError("rates must not be empty.")
    rng = np.random.default_rng(seed)
    rate = rates[rng.integers(0, rates.size, num_samples)]
    u = rng.random((num_samples, num_modalities))
    return ~keep_one_observed(np.ones_like(u, dtype=bool), u < rate[:, None], u)


def write_holdout_pattern(
    num_samples: int, modalities: Sequence[str], rates: Sequence[float], seed: int, path: str | Path
) -> str:
    """Write :func:`generate_mixed_rate_pattern` as a pattern CSV at ``path``; returns the path as a string."""
    present = generate_mixed_rate_pattern(int(num_samples), len(modalities), rates, seed)
    return str(write_pattern_csv(path, present, modalities))
