"""Cohort figures of the DyMo report: the selection summary chart, the trust map and the reward distributions.

Everything draws on matplotlib's Agg canvas directly (no pyplot state, no backend change).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import report_modalities
from .summary import accuracy_split, status_counts

__all__ = [
    "STATUS_COLORS",
    "STATUS_LABELS",
    "new_figure",
    "save_figure",
    "plot_selection_summary",
    "plot_trust_map",
    "plot_reward_distributions",
]

#: per-modality status -> plain-language label, in plotting order.
STATUS_LABELS = {
    "observed": "observed",
    "accepted": "recovered, accepted",
    "rejected": "recovered, rejected",
    "unused": "recovered, not used",
    "missing": "unusable (patient not processed)",
}
#: per-modality status -> colour (colour-blind friendly).
STATUS_COLORS = {
    "observed": "#3b75af",
    "accepted": "#4ca64c",
    "rejected": "#d1495b",
    "unused": "#c9c9c9",
    "missing": "#3a3a3a",
}


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> str:
    """Save ``fig`` as a PNG at ``path`` (folders made); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_selection_summary(
    records: Sequence[Mapping[str, Any]], modalities: Sequence[str] | None, path: str | os.PathLike
) -> str:
    """Per-modality stacked bars of the statuses (plain-language legend) and, where labels exist, the accuracy of the
    patients where DyMo accepted a recovered modality vs those where it used the observed ones only.

    Args:
        records: the report records.
        modalities: the bars, in order (None: from the records).
        path: PNG path.

    Returns:
        ``path``.
    """
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    counts = status_counts(records, modalities)
    num_patients = len(records)
    groups = [g for g in accuracy_split(records) if g[2] > 0]
    width = max(4.5, 1.5 + 0.7 * len(modalities)) + (3.2 if groups else 0.0)
    fig = new_figure(width, 4.2)
    if groups:
        gs = fig.add_gridspec(1, 2, width_ratios=[max(3.0, 0.7 * len(modalities) + 1.5), 2.4])
        ax = fig.add_subplot(gs[0, 0])
        ax_acc = fig.add_subplot(gs[0, 1])
    else:
        ax = fig.add_subplot(1, 1, 1)
        ax_acc = None
    x = list(range(len(modalities)))
    bottom = [0] * len(modalities)
    for status, label in STATUS_LABELS.items():
        values = list(counts.get(status, [0] * len(modalities)))
        ax.bar(x, values, bottom=bottom, label=label, color=STATUS_COLORS[status], edgecolor="white", linewidth=0.5)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x)
    many = len(modalities) > 4
    ax.set_xticklabels(modalities, rotation=30 if many else 0, ha="right" if many else "center")
    ax.set_ylabel("patients")
    ax.set_title(f"Which modalities were trusted ({num_patients} patients)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)
    if ax_acc is not None:
        names = [g[0].replace(" ", "\n") for g in groups]
        acc = [100.0 * c / n for _, c, n in groups]
        group_colors = {"all": "#8c8c8c", "accepted something": STATUS_COLORS["accepted"],
                        "observed only": STATUS_COLORS["observed"]}
        bars = ax_acc.bar(range(len(groups)), acc, color=[group_colors.get(g[0], "#8c8c8c") for g in groups])
        for b, (_, c, n), a in zip(bars, groups, acc):
            x = b.get_x() + b.get_width() / 2
            ax_acc.text(x, a + 1, f"{a:.1f}%\n{c}/{n}", ha="center", va="bottom", fontsize=8)
        ax_acc.set_xticks(range(len(groups)))
        ax_acc.set_xticklabels(names, fontsize=8)
        ax_acc.set_ylim(0, 118)
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_title("Accuracy by what was used", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_trust_map(
    statuses: Sequence[Sequence[str]],
    modalities: Sequence[str],
    path: str | os.PathLike,
    max_rows: int = 2000,
    group: bool = True,
) -> str:
    """Patients x modalities map coloured by status.

    With ``group`` the patients are sorted by their pattern of statuses (same pattern = adjacent rows, most frequent
    patterns first), otherwise they are in report order. Above ``max_rows`` patients each pixel row shows the most
    severe status among a block of consecutive rows (unusable > rejected > accepted > not used > observed)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    order = list(STATUS_LABELS)
    codes = np.array([[order.index(s) for s in row] for row in statuses], dtype=np.int64).reshape(-1, len(modalities))
    n = codes.shape[0]
    if group and n:
        patterns, inverse, freq = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        rank = np.empty(len(patterns), dtype=np.int64)
        rank[np.lexsort((np.arange(len(patterns)), -freq))] = np.arange(len(patterns))
        codes = codes[np.argsort(rank[inverse], kind="stable")]
    severity = np.array([0, 2, 3, 1, 4])  # observed < unused < accepted < rejected < missing
    if n > max_rows:
        block = math.ceil(n / max_rows)
        pad = (-n) % block
        padded = np.concatenate([codes, np.zeros((pad, codes.shape[1]), dtype=np.int64)]) if pad else codes
        blocks = padded.reshape(-1, block, codes.shape[1])
        idx = severity[blocks].argmax(axis=1)
        codes = np.take_along_axis(blocks, idx[:, None, :], axis=1)[:, 0, :]
    height = min(4.2, max(2.5, 1.2 + 0.16 * codes.shape[0]))
    fig = new_figure(max(3.6, 1.2 + 0.5 * len(modalities)), height)
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap([STATUS_COLORS[s] for s in order])
    ax.imshow(codes, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5)
    ax.set_xticks(range(len(modalities)))
    ax.set_xticklabels(modalities, rotation=30 if len(modalities) > 4 else 0)
    ax.set_ylabel(
        f"{n} patients" + (", grouped by pattern" if group else ", report order")
        + (f"\n({math.ceil(n / max_rows)} per row)" if n > max_rows else "")
    )
    ax.set_yticks([])
    ax.set_title("Trust map", fontsize=10)
    handles = [Patch(color=STATUS_COLORS[s], label=STATUS_LABELS[s]) for s in order]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="x-small", frameon=False,
              ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reward_distributions(
    rewards: Mapping[str, Mapping[str, Sequence[float]]], modalities: Sequence[str], path: str | os.PathLike
) -> str | None:
    """Histograms of the deciding reward of every recovered modality, one panel per modality, split by outcome.

    ``rewards[modality][status]`` lists the rewards at the step the modality was accepted / rejected (or, for
    ``unused``, the last step). Returns ``None`` (no file) when there is no reward at all.
    """
    mods = [m for m in modalities if any(len(v) for v in rewards.get(m, {}).values())]
    if not mods:
        return None
    values = [r for m in mods for v in rewards[m].values() for r in v]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1e-6)
    bins = np.linspace(lo - 0.02 * span, hi + 0.02 * span, 31)
    cols = min(len(mods), 4)
    rows = math.ceil(len(mods) / cols)
    fig = new_figure(2.9 * cols + 0.4, 2.3 * rows + 0.6)
    for i, m in enumerate(mods):
        ax = fig.add_subplot(rows, cols, i + 1)
        for status in ("accepted", "rejected", "unused"):
            v = rewards[m].get(status, [])
            if v:
                ax.hist(v, bins=bins, color=STATUS_COLORS[status], alpha=0.85, label=STATUS_LABELS[status])
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("patients", fontsize=8)
        ax.set_xlabel("reward", fontsize=8)
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.suptitle("Reward of each recovered modality when it was decided (> 0 helps, < 0 rejected)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return save_figure(fig, path)
