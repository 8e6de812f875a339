"""DyMo, discarding, every recovery and complete data compared on data whose missingness is simulated (hidden
patterns): :func:`compare_methods` on one loader, :func:`compare_over_patterns` over a grid of missing-pattern files
(rate x seed), :func:`write_comparison` for the table and the accuracy plot."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from monai_dymo._console import bar_disabled
from monai_dymo.calibration import SubsetCalibration
from monai_dymo.certification import resolve_margin
from monai_dymo.keys import DyMoKeys
from monai_dymo.missing_patterns_io import parse_pattern_filename
from monai_dymo.presence import align_present
from monai_dymo.step import run_dymo

logger = logging.getLogger(__name__)


METHODS = ("dymo", "observed_only", "all_recovered", "complete")
METHOD_LABELS = {
    "dymo": "DyMo",
    "observed_only": "discard missing (observed only)",
    "all_recovered": "all recovered",
    "complete": "complete data (upper bound)",
}


@torch.no_grad()
def compare_methods(
    network: Any,
    calibration: SubsetCalibration,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    margin: float | str = 0.0,
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
        margin: DyMo's reward margin (:func:`~monai_dymo.selection.select_modalities`; 0 is docs/method.md's rule;
            ``"certified"``: the calibration file's held-out certified margin, :mod:`monai_dymo.certification`).
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
    margin, _ = resolve_margin(margin, calibration.certification)
    cal = calibration.to(device)
    correct = dict.fromkeys(METHODS, 0)
    accepted = rejected = steps = missing = 0.0
    total = 0
    for batch in tqdm(loader, desc="comparing methods", disable=bar_disabled(progress), leave=False):
        for key in (*modalities, present_key, label_key):
            if key not in batch:
                raise ValueError(f"batch lacks key '{key}'; it has {sorted(map(str, batch.keys()))}.")
        true = {m: convert_to_tensor(batch[m], track_meta=False, device=device) for m in modalities}
        present = align_present(batch[present_key], modalities, "compare_methods").to(device=device, dtype=torch.bool)
        labels = convert_to_tensor(batch[label_key], device=device, track_meta=False, wrap_sequence=True).long()
        labels = labels.reshape(-1)
        batch_size = labels.shape[0]

        logits, _ = network.fuse(network.encode(true), torch.ones_like(present))
        correct["complete"] += int((logits.argmax(-1) == labels).sum())

        result = run_dymo(network, cal, true, present, recovery=recovery, hide_missing=True, temperature=temperature,
                          margin=margin, compare=True)
        if result.errors is not None:
            idx = [b for b, e in enumerate(result.errors) if e is not None]
            raise ValueError(f"patient(s) at batch index {idx} have no modality observed; DyMo needs at least one.")
        for method, out in (("observed_only", result.discard_logits), ("all_recovered", result.all_recovered_logits),
                            ("dymo", result.logits)):
            correct[method] += int((out.argmax(-1) == labels).sum())

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
        dymo_margin=float(margin),
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
        parsed = parse_pattern_filename(f)
        if parsed is None:
            raise ValueError(f"pattern file {f}: name must look like 'missing_rate0.8_seed0.csv'.")
        rate, seed = parsed
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


_METHOD_STYLE = {
    "dymo": {"color": "#d1495b", "marker": "o", "linestyle": "-", "linewidth": 2.4, "zorder": 4},
    "observed_only": {"color": "#3b75af", "marker": "s", "linestyle": "--", "linewidth": 1.6, "zorder": 3},
    "all_recovered": {"color": "#8c8c8c", "marker": "^", "linestyle": "--", "linewidth": 1.6, "zorder": 2},
    "complete": {"color": "#2f2f2f", "marker": "", "linestyle": ":", "linewidth": 1.4, "zorder": 1},
}


def plot_accuracy_vs_missing_rate(
    results: pd.DataFrame,
    path: str | Path,
    title: str = "DyMo method comparison",
    methods: Sequence[str] = METHODS,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Accuracy (%) against the missing rate for DyMo and the baselines, as a paper would show it.

    Mean over seeds with a shaded band of ± one standard deviation; DyMo solid, the baselines dashed, the
    complete-data upper bound dotted; the seed count and the realised missing rates are in the caption line.

    Args:
        results: the per-seed table of :func:`compare_over_patterns` (one row per rate and seed, accuracies in
            0-1) or the :func:`summarise` table (``<method>_mean`` / ``<method>_std`` in %).
        path: PNG path.
        title: plot title.
        methods: the methods to draw (columns of ``results``), in legend order.
        labels: legend names (default: :data:`METHOD_LABELS`).

    Returns:
        ``path`` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = results if any(c.endswith("_mean") for c in results.columns) else summarise(results)
    labels = {**METHOD_LABELS, **(labels or {})}
    rate = table["rate"].to_numpy(dtype=float)
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m in methods:
        if f"{m}_mean" not in table:
            raise ValueError(f"results have no column for method {m!r}; columns: {list(table.columns)}.")
        mean = table[f"{m}_mean"].to_numpy(dtype=float)
        std = np.nan_to_num(table[f"{m}_std"].to_numpy(dtype=float)) if f"{m}_std" in table else 0 * mean
        style = _METHOD_STYLE.get(m, {"marker": "o", "linestyle": "-"})
        line = ax.plot(rate, mean, label=labels.get(m, m), **style)[0]
        ax.fill_between(rate, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("missing rate (probability that a modality is missing)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(rate)
    ax.set_title(title, fontsize=11)
    note = []
    if "seeds" in table:
        note.append(f"mean ± std over {int(table['seeds'].max())} missing-pattern seeds")
    if "realised_missing_rate" in table:
        note.append("realised rates " + ", ".join(f"{v:.2f}" for v in table["realised_missing_rate"]))
    if note:
        ax.text(0.01, 0.01, "; ".join(note), transform=ax.transAxes, fontsize=7, color="#555555", va="bottom")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left", bbox_to_anchor=(0.0, 0.06))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return str(path)


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

    plot_accuracy_vs_missing_rate(table, out / "accuracy_vs_missing_rate.png", title=title)
    return {
        "results": str(out / "results.csv"),
        "summary": str(out / "summary.csv"),
        "markdown": str(out / "results.md"),
        "plot": str(out / "accuracy_vs_missing_rate.png"),
    }


# ---------------------------------------------------------------------------------------------------- natural missingness
