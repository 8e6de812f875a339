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
import math
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
from monai_dymo.certification import refer_for_margin, resolve_margin, rule_threshold
from monai_dymo.keys import DyMoKeys
from monai_dymo.missing_patterns_io import parse_pattern_filename
from monai_dymo.presence import align_present
from monai_dymo.step import NO_MODALITY_ERROR, class_or_missing, run_dymo

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "compare_methods",
    "compare_over_patterns",
    "plot_accuracy_vs_missing_rate",
    "summarise",
    "write_comparison",
    "NATURAL_METHODS",
    "compare_on_natural_missingness",
    "single_modality_accuracy",
    "summarise_natural",
    "write_natural_comparison",
    "natural_summary_line",
]

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
        margin: DyMo's reward margin (:func:`~monai_dymo.selection.select_modalities`; 0 is the method page's rule;
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
NATURAL_METHODS = ("dymo", "observed_only", "all_recovered")


@torch.no_grad()
def compare_on_natural_missingness(
    network: Any,
    calibration: SubsetCalibration,
    loader: Iterable[Mapping[str, Any]],
    *,
    recovery: Callable[[Mapping[str, torch.Tensor], torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    temperature: float = 0.1,
    device: torch.device | str | None = None,
    present_key: str = DyMoKeys.PRESENT,
    label_key: str = DyMoKeys.LABEL,
    patient_id_key: str = DyMoKeys.PATIENT_ID,
    progress: bool = True,
    margin: float | str = 0.0,
    refer_alpha: float | None = None,
    refer_delta: float = 0.1,
    refer_guarantee: str = "auto",
    refer_per_class: bool | str = "auto",
    margin_source: str | None = None,
) -> pd.DataFrame:
    """Per-patient predictions of DyMo, "discard the missing modalities" and "use every recovery" on data whose
    missingness is real (nothing is hidden: what is missing was never acquired, so there is no complete-data truth).

    Args:
        network, calibration, recovery, temperature, device: as :func:`compare_methods`.
        loader: batches with one tensor per modality (placeholders where missing), ``present`` and ``label``.
        margin: DyMo's reward margin, as :func:`compare_methods` (``"certified"``: the calibration file's).
        refer_alpha, refer_delta, refer_guarantee, refer_per_class: with ``refer_alpha``, the refer flag of DyMo's
            prediction (:func:`monai_dymo.certification.refer_for_margin`, ``guarantee`` / ``per_class``): columns
            ``prob_dymo``, ``refer``, ``refer_threshold`` (the threshold that applied: the predicted class's under a
            per-class rule), ``refer_alpha``, ``refer_delta``, ``refer_guarantee``, ``refer_per_class``,
            ``refer_reason``; the rule itself in ``attrs["refer_rule"]`` (JSON-safe).
        margin_source: None, or ``"independent"`` (:func:`~monai_dymo.certification.resolve_margin`).

    Probabilities are calibrated: ``softmax(logits / T)``, ``T`` the calibration's ``probability_temperature``
    (column ``probability_temperature``).

    Under ``torchrun`` (a ``DistributedSampler`` in the loader) each rank compares its shard and the rows of every
    rank are gathered in datalist order (``index``).

    Returns:
        One row per patient: ``index`` (datalist position), ``patient_id``, ``label``, ``observed`` / ``accepted`` (``;``-joined names),
        ``complete`` (nothing missing), ``pred_<method>`` for :data:`NATURAL_METHODS` (``-1`` for a patient with
        nothing observed, who is kept with ``error``), ``prob_<method>_<k>``: that method's calibrated probability of
        class ``k`` (NaN for a patient with nothing observed), ``single_<modality>``: the fusion network's prediction
        from that modality alone where it is observed (``-1`` where it is missing: a recovery is never scored alone),
        ``calibration_fallback``.
    """
    modalities = tuple(network.modalities)
    if device is None:
        device = next(network.parameters()).device
    network.eval()
    margin, margin_source = resolve_margin(margin, calibration.certification, margin_source)
    t_prob = calibration.probability_temperature
    rule = (None if refer_alpha is None
            else refer_for_margin(calibration.certification, margin, margin_source, refer_alpha, refer_delta,
                                  per_class=refer_per_class, guarantee=refer_guarantee,
                                  num_classes=calibration.num_classes, probability_temperature=t_prob))
    cal = calibration.to(device)
    rows: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="comparing on natural missingness", disable=bar_disabled(progress), leave=False):
        for key in (*modalities, present_key, label_key):
            if key not in batch:
                raise ValueError(f"batch lacks key '{key}'; it has {sorted(map(str, batch.keys()))}.")
        x = {m: convert_to_tensor(batch[m], track_meta=False, device=device) for m in modalities}
        present = align_present(batch[present_key], modalities, "compare_on_natural_missingness").to(device).bool()
        labels = convert_to_tensor(batch[label_key], device=device, track_meta=False, wrap_sequence=True).long()
        labels = labels.reshape(-1)
        ids = batch.get(patient_id_key)
        ids = [str(i) for i in ids] if ids is not None else [str(len(rows) + b) for b in range(labels.shape[0])]
        index = batch.get(DyMoKeys.INDEX)
        index = [int(i) for i in index] if index is not None else [len(rows) + b for b in range(labels.shape[0])]
        res = run_dymo(network, cal, x, present, recovery=recovery, temperature=temperature, margin=margin,
                       compare=True, alone=True, refer_rule=rule)
        valid = present.any(1)
        method_logits = {"dymo": res.logits, "observed_only": res.discard_logits,
                         "all_recovered": res.all_recovered_logits}
        preds = {m: class_or_missing(method_logits[m]) for m in NATURAL_METHODS}
        probs = {m: torch.softmax(method_logits[m].float() / t_prob, -1).tolist() for m in NATURAL_METHODS}  # [B][C]
        single = class_or_missing(res.alone_logits)  # [B, M]: each observed modality alone, what its encoder learnt
        fallback = res.calibration_fallback if res.calibration_fallback is not None else torch.zeros_like(valid)
        prob = res.probabilities(t_prob).amax(-1)
        refer = reasons = None
        if refer_alpha is not None:  # no rule (no held-out certification): nobody flagged
            refer = res.refer.tolist() if res.refer is not None else [False] * labels.shape[0]
            reasons = res.refer_reasons or [NO_RULE_REASON] * len(refer)
        for b in range(labels.shape[0]):
            extra = {} if refer is None else {
                "prob_dymo": float(prob[b]), "refer": bool(refer[b]),
                "refer_threshold": _patient_threshold(rule, int(preds["dymo"][b])),
                "refer_alpha": refer_alpha, "refer_delta": refer_delta,
                "refer_guarantee": None if rule is None else rule["guarantee"],
                "refer_per_class": None if rule is None else bool(rule["per_class"]),
                "refer_reason": reasons[b],
            }
            rows.append(
                {
                    "index": index[b],
                    "patient_id": ids[b],
                    "label": int(labels[b]),
                    "observed": ";".join(m for i, m in enumerate(modalities) if present[b, i]),
                    "accepted": ";".join(m for i, m in enumerate(modalities) if res.accepted[b, i]),
                    "complete": bool(present[b].all()),
                    **{f"pred_{m}": int(preds[m][b]) for m in NATURAL_METHODS},
                    **{f"prob_{m}_{k}": p for m in NATURAL_METHODS for k, p in enumerate(probs[m][b])},
                    **{f"single_{m}": int(single[b, i]) for i, m in enumerate(modalities)},
                    "calibration_fallback": bool(fallback[b]),
                    "error": "" if bool(valid[b]) else NO_MODALITY_ERROR,
                    "margin": margin,
                    "margin_source": margin_source,
                    "probability_temperature": t_prob,
                    **extra,
                }
            )
    from monai_dymo.distributed import gather_rows

    rows = gather_rows(rows)  # torchrun: every rank's shard, in datalist order
    if not rows:
        raise ValueError("the loader gave no patients.")
    table = pd.DataFrame(rows)
    if rule is not None:
        from monai_dymo.report.records import plain

        table.attrs["refer_rule"] = plain(rule)
    return table


NO_RULE_REASON = "no refer rule: the calibration file has no held-out certification"


def _patient_threshold(rule: Mapping[str, Any] | None, prediction: int) -> float | None:
    """The refer threshold that applies to a patient predicted ``prediction`` (``-1``: not processed): None without a
    rule, or under a per-class rule without a prediction."""
    if rule is None or (rule.get("per_class") and prediction < 0):
        return None
    return rule_threshold(rule, prediction)


def single_modality_accuracy(per_patient: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{modality: {"patients": n observed, "accuracy": % or None}}`` from the ``single_<modality>`` columns of
    :func:`compare_on_natural_missingness` (a prediction of ``-1`` means the modality was missing)."""
    y = per_patient["label"].to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for col in per_patient.columns:
        if not col.startswith("single_"):
            continue
        pred = per_patient[col].to_numpy()
        seen = pred >= 0
        acc = round(100.0 * float((pred[seen] == y[seen]).mean()), 2) if seen.any() else None
        out[col[len("single_"):]] = {"patients": int(seen.sum()), "accuracy": acc}
    return out


def _class_names(per_patient: pd.DataFrame, classes: Sequence[Any] | None) -> list[str]:
    """Class names by index: ``classes``, else ``"0".."C-1"`` with ``C`` from the ``prob_dymo_<k>`` columns (or the
    largest class seen + 1)."""
    if classes is not None:
        return [str(c) for c in classes]
    cols = [c for c in per_patient.columns if c.startswith("prob_dymo_") and c[len("prob_dymo_"):].isdigit()]
    C = len(cols) or int(max(per_patient["label"].max(),
                             *(per_patient[f"pred_{m}"].max() for m in NATURAL_METHODS))) + 1
    return [str(k) for k in range(C)]


def _threshold_value(t: Any) -> float | str | None:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return None
    return "inf" if math.isinf(float(t)) else float(t)


def _refer_summary(df: pd.DataFrame, correct_dymo: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """The ``refer`` block of :func:`summarise_natural` from the per-patient refer columns (and the rule in
    ``df.attrs["refer_rule"]`` when the frame came from :func:`compare_on_natural_missingness`)."""
    rule = df.attrs.get("refer_rule") or {}
    kept = ~df["refer"].astype(bool).to_numpy()
    per_class = bool(rule.get("per_class", df["refer_per_class"].iloc[0] if "refer_per_class" in df else False))
    thresholds = None
    if per_class:
        if rule.get("thresholds") is not None:
            thresholds = {names[int(c)] if 0 <= int(c) < len(names) else str(c): _threshold_value(t)
                          for c, t in rule["thresholds"].items()}
        else:  # the classes predicted in this run
            pred = df["pred_dymo"].to_numpy()
            thresholds = {names[int(c)]: _threshold_value(df.loc[pred == c, "refer_threshold"].iloc[0])
                          for c in sorted(set(pred[pred >= 0].tolist())) if 0 <= int(c) < len(names)}
    guarantee = rule.get("guarantee", df["refer_guarantee"].iloc[0] if "refer_guarantee" in df else None)
    statement = rule.get("statement")
    return {
        "guarantee": None if guarantee is None or pd.isna(guarantee) else str(guarantee),
        "per_class": per_class,
        "alpha": float(df["refer_alpha"].iloc[0]),
        "delta": float(df["refer_delta"].iloc[0]),
        "threshold": None if per_class else _threshold_value(df["refer_threshold"].iloc[0]),
        "thresholds": thresholds,
        "referred": int((~kept).sum()),
        "not_referred": int(kept.sum()),
        "coverage": round(float(kept.mean()), 4),
        "error_not_referred": round(float((~correct_dymo[kept]).mean()), 4) if kept.any() else None,
        "statement": None if statement is None else statement.replace("{c}", "c"),
    }


def summarise_natural(per_patient: pd.DataFrame, classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Accuracy (%) of every method on the same patients, paired counts against discarding, a complete-data column
    only where complete patients exist, and the clinicians' figures.

    Returns ``{"patients", "incomplete", "accuracy": {method: %}, "fixed"/"broken": {method: n}`` (relative to
    ``observed_only``: wrong -> right / right -> wrong), ``"complete": {"patients", "accuracy"}`` or ``None``,
    ``"accepted_any"``: patients that accepted at least one recovery, ``"single_modality"``: modality name ->
    accuracy (%) of the fusion network on that modality alone over the patients who have it observed (None when
    nobody has it), ``"single_modality_patients"``: modality name -> that patient count, ``"chance"``: the
    majority-class rate (%) of the labels, ``"metrics"``: :func:`monai_dymo.metrics.method_metrics` (1000 bootstrap
    replicates, seed 0), ``"ece"`` / ``"reliability"``: top-label expected calibration error and reliability bins (10
    bins) of DyMo's calibrated probabilities (``prob_dymo_<k>``; None without them), ``"probability_temperature"``,
    ``"margin"`` / ``"margin_source"``, and with a refer flag ``"refer": {"guarantee", "per_class", "alpha",
    "delta", "threshold"`` (None under a per-class rule), ``"thresholds"`` (per-class rule: ``{class name:
    threshold}``), ``"referred", "not_referred", "coverage", "error_not_referred"`` (measured on these patients),
    ``"statement"`` (the guarantee in words; None when the frame lost the rule, e.g. read back from CSV)``}``.
    ``classes``: class names by index (default ``"0".."C-1"``).
    """
    from monai_dymo.confidence import expected_calibration_error, reliability_bins
    from monai_dymo.metrics import method_metrics

    df = per_patient
    names = _class_names(df, classes)
    y = df["label"].to_numpy()
    correct = {m: df[f"pred_{m}"].to_numpy() == y for m in NATURAL_METHODS}
    base = correct["observed_only"]
    counts = np.bincount(y.astype(int), minlength=len(names))
    out: dict[str, Any] = {
        "patients": int(len(df)),
        "incomplete": int((~df["complete"]).sum()),
        "accuracy": {m: round(100.0 * float(c.mean()), 2) for m, c in correct.items()},
        "fixed": {m: int((correct[m] & ~base).sum()) for m in ("dymo", "all_recovered")},
        "broken": {m: int((~correct[m] & base).sum()) for m in ("dymo", "all_recovered")},
        "accepted_any": int((df["accepted"] != "").sum()),
        "calibration_fallback": int(df["calibration_fallback"].sum()),
        "complete": None,
        "chance": round(100.0 * float(counts.max()) / max(1, len(y)), 2),
        "majority_class": names[int(counts.argmax())] if int(counts.argmax()) < len(names) else str(counts.argmax()),
    }
    single = single_modality_accuracy(df)
    out["single_modality"] = {m: v["accuracy"] for m, v in single.items()}
    out["single_modality_patients"] = {m: v["patients"] for m, v in single.items()}
    out["metrics"] = method_metrics(df, names, bootstrap=1000, seed=0)
    prob_cols = [f"prob_dymo_{k}" for k in range(len(names))]
    done = df["pred_dymo"].to_numpy() >= 0
    out["ece"] = out["reliability"] = None
    if all(c in df for c in prob_cols) and done.any():
        prob = df[prob_cols].to_numpy(dtype=float)[done]
        out["reliability"] = reliability_bins(prob, correct["dymo"][done], 10)
        out["ece"] = expected_calibration_error(prob, correct["dymo"][done], 10)
    out["probability_temperature"] = (float(df["probability_temperature"].iloc[0])
                                      if "probability_temperature" in df else None)
    if "margin" in df:
        m = float(df["margin"].iloc[0])
        out["margin"] = "inf" if math.isinf(m) else m
        out["margin_source"] = str(df["margin_source"].iloc[0])
    if "refer" in df:
        out["refer"] = _refer_summary(df, correct["dymo"], names)
    complete = df["complete"].to_numpy()
    if complete.any():
        out["complete"] = {"patients": int(complete.sum()),
                           "accuracy": round(100.0 * float(correct["dymo"][complete].mean()), 2)}
    return out


def natural_summary_line(summary: Mapping[str, Any], title: str = "DyMo evaluation") -> str:
    """One line of :func:`summarise_natural`'s figures (printed at the end of an evaluate run)."""
    acc = summary["accuracy"]
    line = (
        f"{title}: {summary['patients']} patients ({summary['incomplete']} incomplete); accuracy DyMo "
        f"{acc['dymo']:.2f} %, discard missing {acc['observed_only']:.2f} %, all recovered {acc['all_recovered']:.2f} %;"
        f" DyMo fixed / broken {summary['fixed']['dymo']} / {summary['broken']['dymo']}"
    )
    dymo = (summary.get("metrics") or {}).get("dymo") or {}
    if dymo.get("num_patients"):
        ci = dymo.get("ci95") or {}
        bal = ci.get("balanced_accuracy")
        line += f"; DyMo balanced accuracy {100 * dymo['balanced_accuracy']:.1f} %" + (
            f" [{100 * bal[0]:.1f}, {100 * bal[1]:.1f}]" if bal else "")
        auc = ci.get("auroc")
        line += ", AUROC " + ("n/a" if dymo["auroc"] is None else f"{dymo['auroc']:.3f}" + (
            f" [{auc[0]:.3f}, {auc[1]:.3f}]" if auc else ""))
    if summary.get("chance") is not None:
        line += f"; chance (majority class) {summary['chance']:.1f} %"
    test = ((summary.get("metrics") or {}).get("paired") or {}).get("dymo_vs_observed_only")
    if test:
        line += f"; McNemar p vs discarding {test['p_value']:.3g}"
    alone = summary.get("single_modality") or {}
    if alone:
        line += "; alone: " + ", ".join(f"{m} {'n/a' if a is None else f'{a:.1f} %'}" for m, a in alone.items())
    return line


def write_natural_comparison(
    per_patient: pd.DataFrame, output_dir: str | Path, title: str, classes: Sequence[Any] | None = None
) -> dict[str, str]:
    """Write ``per_patient.csv`` (with the calibrated probabilities), ``summary.json`` (:func:`summarise_natural`),
    ``results.md`` (the accuracy table, the clinical metrics of :func:`monai_dymo.metrics.metrics_markdown`, each
    modality alone, the margin and the refer rule), ``accuracy.png`` (bars with paired counts) and ``reliability.png``
    (reliability diagram of DyMo's calibrated probabilities, when they are there).

    With ``classes`` (class names by index) the CSV has ``label_name`` and ``pred_<method>_name`` beside the indices
    (blank for a patient that was not processed)."""
    import json

    from monai_dymo.confidence import plot_reliability_diagram
    from monai_dymo.metrics import metrics_markdown
    from monai_dymo.report.records import plain

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = per_patient
    if classes is not None:
        names = [str(c) for c in classes]

        def name(i: Any) -> str:
            return names[int(i)] if 0 <= int(i) < len(names) else ""

        columns: list[str] = []
        for c in table.columns:
            columns.append(c)
            if c == "label" or (c.startswith("pred_") and c[5:] in NATURAL_METHODS):
                columns.append(f"{c}_name")
        table = table.assign(**{
            f"{c}_name": table[c].map(name) for c in table.columns
            if c == "label" or (c.startswith("pred_") and c[5:] in NATURAL_METHODS)
        })[columns]
    table.to_csv(out / "per_patient.csv", index=False)
    s = summarise_natural(per_patient, classes)
    (out / "summary.json").write_text(json.dumps(plain(s), indent=2, allow_nan=False))
    names = _class_names(per_patient, classes)
    labels = {"dymo": "DyMo", "observed_only": "discard missing", "all_recovered": "all recovered"}
    header = ["patients", "incomplete", *(labels[m] for m in NATURAL_METHODS), "DyMo fixed / broken",
              "all-recovered fixed / broken"]
    cells = [str(s["patients"]), str(s["incomplete"]), *(f"{s['accuracy'][m]:.2f}" for m in NATURAL_METHODS),
             f"{s['fixed']['dymo']} / {s['broken']['dymo']}",
             f"{s['fixed']['all_recovered']} / {s['broken']['all_recovered']}"]
    if s["complete"] is not None:
        header.append("complete patients (n, accuracy)")
        cells.append(f"{s['complete']['patients']}, {s['complete']['accuracy']:.2f}")
    chance = s["chance"]
    lines = [
        f"# {title}",
        "",
        "Accuracy (%) on the same patients with their natural missingness. Fixed / broken: predictions that go from",
        "wrong to right / right to wrong relative to discarding the missing modalities. Chance (always answering the",
        f"majority class, {s['majority_class']}): {chance:.1f} %.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(cells) + " |",
        "",
        f"Patients accepting at least one recovered modality: {s['accepted_any']}; scored with fallback calibration "
        f"statistics: {s['calibration_fallback']}.",
        "",
        "## Clinical metrics",
        "",
        "Probabilities are calibrated (temperature scaling"
        + ("" if s["probability_temperature"] is None else f", T = {s['probability_temperature']:.4g}") + ")"
        + ("" if s["ece"] is None else f"; DyMo's top-label expected calibration error (10 bins): "
           f"{100 * s['ece']:.1f} % (reliability.png)") + ".",
        "",
        metrics_markdown(s["metrics"], names).rstrip("\n"),
    ]
    if s["single_modality"]:
        lines += [
            "",
            "Each modality alone (the fusion network on that one modality, patients who have it observed; chance, the",
            f"majority-class rate, is {chance:.0f} %): an encoder near chance has learnt nothing its modality "
            "could add.",
            "",
            "| modality | patients | accuracy alone |",
            "|---|---|---|",
            *(f"| {m} | {s['single_modality_patients'][m]} | "
              + ("n/a" if a is None else f"{a:.2f}") + (" (near chance)" if a is not None and a < chance + 10 else "")
              + " |" for m, a in s["single_modality"].items()),
        ]
    if "margin" in s:
        lines += ["", f"Reward margin in force: {s['margin']} ({s['margin_source']})."]
    if s.get("refer"):
        r = s["refer"]
        threshold = (", ".join(f"{c}: {t}" for c, t in (r["thresholds"] or {}).items()) if r["per_class"]
                     else str(r["threshold"]))
        lines += [f"Refer (alpha {r['alpha']:g}, delta {r['delta']:g}, guarantee {r['guarantee']}"
                  + (", per predicted class" if r["per_class"] else "")
                  + f"): threshold{'s' if r['per_class'] else ''} {threshold}, coverage {100 * r['coverage']:.1f} %, "
                  "error among patients not referred "
                  + ("n/a" if r["error_not_referred"] is None else f"{100 * r['error_not_referred']:.2f} %")
                  + f", {r['referred']} referred."
                  + ("" if not r["statement"] else f" Guarantee: {r['statement']}.")]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [s["accuracy"][m] for m in NATURAL_METHODS]
    bars = ax.bar([labels[m] for m in NATURAL_METHODS], values, color=["#1f77b4", "#7f7f7f", "#ff7f0e"])
    for bar, m in zip(bars, NATURAL_METHODS):
        note = "" if m == "observed_only" else f"\n+{s['fixed'][m]} / -{s['broken'][m]}"
        ax.annotate(f"{bar.get_height():.1f}{note}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(chance, color="#555555", linestyle=":", linewidth=1)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    written = {k: str(out / f) for k, f in (("per_patient", "per_patient.csv"), ("summary", "summary.json"),
                                             ("markdown", "results.md"), ("plot", "accuracy.png"))}
    if s["reliability"] is not None:
        written["reliability"] = plot_reliability_diagram(s["reliability"], out / "reliability.png",
                                                          title=f"{title}: calibrated probabilities")
    return written
