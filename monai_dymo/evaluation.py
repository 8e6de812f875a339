"""Method comparison on incomplete multimodal data (the DyMo paper's evaluation protocol).

For every batch of patients with a presence mask, four predictions are compared on the same fusion network:

- ``dymo``: recover the missing modalities, then :func:`monai_dymo.selection.select_modalities` decides per patient which
  recoveries to use;
- ``observed_only``: discard the missing modalities (fusion on the observed subset);
- ``all_recovered``: use every recovered modality (fusion on all modalities);
- ``complete``: the complete-data upper bound (fusion on all modalities, true images).

:func:`compare_methods` works on any loader; :func:`compare_over_patterns` runs it for a grid of missing-pattern files
(rate x seed) and :func:`write_comparison` writes the results table (CSV + markdown) and the accuracy plot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from monai_dymo.calibration import SubsetCalibration
from monai_dymo.keys import DyMoKeys
from monai_dymo.selection import select_modalities

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "compare_methods",
    "compare_over_patterns",
    "hide_missing",
    "summarise",
    "write_comparison",
]

logger = logging.getLogger(__name__)

METHODS = ("dymo", "observed_only", "all_recovered", "complete")
METHOD_LABELS = {
    "dymo": "DyMo",
    "observed_only": "discard missing (observed only)",
    "all_recovered": "all recovered",
    "complete": "complete data (upper bound)",
}
_PATTERN_NAME = re.compile(r"missing_rate(?P<rate>[0-9.]+)_seed(?P<seed>[0-9]+)\.csv$")


def hide_missing(images: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero the missing modalities before recovery: ``{name: [B, ...]}`` in ``present``'s column order, ``present``
    ``BoolTensor[B, M]``."""
    return {
        m: torch.where(present[:, i].reshape(-1, *([1] * (x.ndim - 1))), x, torch.zeros_like(x))
        for i, (m, x) in enumerate(images.items())
    }


@torch.no_grad()
def compare_methods(
    network: Any,
    calibration: SubsetCalibration,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    margin: float = 0.0,
    device: torch.device | str | None = None,
    present_key: str = DyMoKeys.PRESENT,
    label_key: str = DyMoKeys.LABEL,
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy of the four methods of :data:`METHODS` over ``loader``.

    Args:
        network: fusion network with ``encode``, ``fuse`` and ``modalities`` (e.g. ``DynamicFusionTransformer``).
        calibration: the fitted :class:`SubsetCalibration` of ``network``.
        loader: batches holding the TRUE image of every modality (``[B, ...]`` per modality name), ``present``
            (``[B, M]`` bool, the simulated missing pattern) and ``label`` (``[B]``). Missing modalities are hidden from
            ``recovery`` (zeroed) before recovery, so the true images are used only by the ``complete`` upper bound.
        recovery: ``recovery(inputs, present) -> inputs`` filling the missing modalities (None: the zeroed placeholders
            are used as "recoveries").
        temperature: DyMo's temperature ``τ``.
        margin: DyMo's reward margin (:func:`~monai_dymo.selection.select_modalities`; 0 is the method page's rule).
        device: where to run (default: the network's device).

    Returns:
        ``{method: accuracy}`` plus DyMo's selection statistics: ``dymo_accepted`` / ``dymo_rejected`` (mean number of
        recovered modalities accepted / rejected per patient), ``dymo_steps`` (mean steps), ``missing_rate`` (realised)
        and ``num_samples``.
    """
    modalities = tuple(network.modalities)
    if device is None:
        device = next(network.parameters()).device
    network.eval()
    cal = calibration.to(device)
    correct = dict.fromkeys(METHODS, 0)
    accepted = rejected = steps = missing = 0.0
    total = 0
    for batch in tqdm(loader, desc="comparing methods", disable=not progress, leave=False):
        for key in (*modalities, present_key, label_key):
            if key not in batch:
                raise ValueError(f"batch lacks key '{key}'; it has {sorted(map(str, batch.keys()))}.")
        true = {m: convert_to_tensor(batch[m], track_meta=False, device=device) for m in modalities}
        present = convert_to_tensor(batch[present_key], dtype=torch.bool, device=device, track_meta=False)
        labels = convert_to_tensor(batch[label_key], device=device, track_meta=False, wrap_sequence=True).long()
        labels = labels.reshape(-1)
        batch_size = labels.shape[0]
        everything = torch.ones_like(present)

        logits, _ = network.fuse(network.encode(true), everything)
        correct["complete"] += int((logits.argmax(-1) == labels).sum())

        hidden = hide_missing(true, present)
        recovered = dict(recovery(hidden, present)) if recovery is not None else hidden
        tokens = network.encode(recovered)
        logits, _ = network.fuse(tokens, present)
        correct["observed_only"] += int((logits.argmax(-1) == labels).sum())
        logits, _ = network.fuse(tokens, everything)
        correct["all_recovered"] += int((logits.argmax(-1) == labels).sum())
        result = select_modalities(
            network.fuse, tokens, present, cal, temperature=temperature, modalities=modalities, margin=margin
        )
        correct["dymo"] += int((result.logits.argmax(-1) == labels).sum())

        accepted += float(result.accepted.sum())
        rejected += float(result.rejected.sum())
        steps += float(result.steps.sum())
        missing += float((~present).sum())
        total += batch_size
    if total == 0:
        raise ValueError("the loader gave no samples.")
    out = {m: correct[m] / total for m in METHODS}
    out.update(
        dymo_accepted=accepted / total,
        dymo_rejected=rejected / total,
        dymo_steps=steps / total,
        missing_rate=missing / (total * len(modalities)),
        num_samples=float(total),
    )
    return out


def compare_over_patterns(
    network: Any,
    calibration: SubsetCalibration,
    pattern_files: Sequence[str | Path] | str | Path,
    make_loader: Callable[[Path], Iterable[Mapping[str, Any]]],
    *,
    rates: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Run :func:`compare_methods` once per missing-pattern file; one row per (rate, seed).

    Args:
        pattern_files: pattern CSVs named ``missing_rate{rate}_seed{seed}.csv``, or the folder holding them.
        make_loader: ``make_loader(pattern_csv) -> loader`` yielding batches as :func:`compare_methods` expects.
        rates, seeds: keep only these (None: all found).
        kwargs: passed to :func:`compare_methods`.
    """
    if isinstance(pattern_files, (str, Path)):
        folder = Path(pattern_files)
        if not folder.is_dir():
            raise FileNotFoundError(f"missing-pattern folder not found: {folder}")
        files = sorted(folder.glob("missing_rate*_seed*.csv"))
    else:
        files = [Path(f) for f in pattern_files]
    rows = []
    for f in files:
        match = _PATTERN_NAME.search(f.name)
        if match is None:
            raise ValueError(f"pattern file {f}: name must look like 'missing_rate0.8_seed0.csv'.")
        rate, seed = float(match["rate"]), int(match["seed"])
        if (rates is not None and not any(np.isclose(rate, r) for r in rates)) or (
            seeds is not None and seed not in seeds
        ):
            continue
        scores = compare_methods(network, calibration, make_loader(f), **kwargs)
        logger.info("rate %.1f seed %d: %s", rate, seed, {k: round(v, 4) for k, v in scores.items()})
        rows.append({"rate": rate, "seed": seed, "pattern_file": f.name, **scores})
    if not rows:
        raise ValueError(f"no missing-pattern file matched rates={rates} seeds={seeds} among {[f.name for f in files]}.")
    return pd.DataFrame(rows).sort_values(["rate", "seed"]).reset_index(drop=True)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every method's accuracy (in %), one row per missing rate."""
    grouped = results.groupby("rate")
    table = pd.DataFrame(index=grouped.size().index)
    table["seeds"] = grouped.size()
    table["realised_missing_rate"] = grouped["missing_rate"].mean()
    for m in METHODS:
        table[f"{m}_mean"] = 100 * grouped[m].mean()
        table[f"{m}_std"] = 100 * grouped[m].std(ddof=0)
    best_baseline = table[["observed_only_mean", "all_recovered_mean"]].max(axis=1)
    table["dymo_minus_best_baseline"] = table["dymo_mean"] - best_baseline
    table["dymo_accepted"] = grouped["dymo_accepted"].mean()
    table["dymo_rejected"] = grouped["dymo_rejected"].mean()
    return table.reset_index()


def write_comparison(results: pd.DataFrame, output_dir: str | Path, title: str = "DyMo method comparison") -> dict:
    """Write ``results.csv`` (per seed), ``summary.csv``, ``results.md`` and ``accuracy_vs_missing_rate.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    table = summarise(results)
    table.to_csv(out / "summary.csv", index=False)

    lines = [f"# {title}", "", "Accuracy (%) on the test split, mean ± std over missing-pattern seeds.", ""]
    header = ["missing rate", "realised", "seeds", *(METHOD_LABELS[m] for m in METHODS), "DyMo − best baseline"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [f"{r['rate']:.1f}", f"{r['realised_missing_rate']:.3f}", str(int(r["seeds"]))]
        cells += [f"{r[f'{m}_mean']:.2f} ± {r[f'{m}_std']:.2f}" for m in METHODS]
        cells.append(f"{r['dymo_minus_best_baseline']:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "DyMo selection statistics (mean recovered modalities per sample):",
        "",
        "| missing rate | accepted | rejected |",
        "|---|---|---|",
    ]
    lines += [f"| {r['rate']:.1f} | {r['dymo_accepted']:.2f} | {r['dymo_rejected']:.2f} |" for _, r in table.iterrows()]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m, marker in zip(METHODS, "osD^"):
        ax.errorbar(
            table["rate"], table[f"{m}_mean"], yerr=table[f"{m}_std"], marker=marker, capsize=3, label=METHOD_LABELS[m]
        )
    ax.set_xlabel("missing rate")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_missing_rate.png", dpi=120)
    return {
        "results": str(out / "results.csv"),
        "summary": str(out / "summary.csv"),
        "markdown": str(out / "results.md"),
        "plot": str(out / "accuracy_vs_missing_rate.png"),
    }
