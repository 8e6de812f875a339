"""The HTML DyMo selection report: one cohort page and per-patient pages, readable without the code.

Layout written by :func:`write_report_html` for ``<dir>/dymo_report.html``::

    dymo_report.html                   cohort page: legend, per-modality rates, accuracy split, figures, errors,
                                       one table row per patient (linked to its page when it has one)
    dymo_report_files/trust_map.png    patients x modalities map of what was used
    dymo_report_files/reliability.png  reliability diagram of the calibrated probabilities (labelled patients)
    dymo_report_files/rewards.png      reward distributions per modality
    dymo_report_files/patients/*.html  per-patient pages (at most ``max_patient_pages``: errors first, then patients
                                       with a rejected, then an accepted recovered modality)
    dymo_report_files/img/*.png        the pictures of those pages (observed and recovered images)
    dymo_report_files/table/*.html     the patient table beyond its first ``table_rows_per_page`` rows

Pages use relative links only and no script, so the folder can be zipped and opened anywhere. They are rendered from
the Jinja2 templates shipped in ``monai_dymo/report/templates`` (``cohort.html.j2``, ``patient.html.j2``,
``table_page.html.j2``, their shared ``base.html.j2`` / ``macros.html.j2`` and the style sheet ``report.css``), with
autoescaping. A site restyles its report without touching code: copy the files it wants to change into a folder and
pass that folder as ``template_dir`` (:func:`~monai_dymo.report.writer.write_report`, ``SelectionReportWriter``, the
bundles' ``report_templates``); files found there are used, the others come from the package.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from .._console import bar_disabled
from .figures import STATUS_COLORS, STATUS_LABELS, plot_reward_distributions, plot_trust_map
from .pictures import save_picture
from .records import (
    class_name,
    format_reward,
    is_correct,
    label_value,
    modality_decision,
    modality_status,
    patient_priority,
    region_of_interest_text,
    report_modalities,
)
from .summary import accuracy_split, report_summary
from .trust import patient_trust_html, trust_section_html

__all__ = ["write_report_html", "patient_page_name", "report_environment", "LEGEND_SCORES", "TEMPLATE_DIR"]

#: the templates shipped with the package.
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

#: at most this many rows in the cohort page's error list (the CSV has every error).
MAX_ERROR_ROWS = 1000

#: plain-language meaning of every score in the report (also shown on every page).
LEGEND_SCORES = {
    "observed": "the modality was measured for this patient and is always used as it came.",
    "recovered": "the modality was missing; the recovery network generated a stand-in from the observed ones. DyMo "
    "then decides, one step at a time, whether each stand-in helps.",
    "quality (q)": "how confident the classifier is on a set of modalities: the largest class probability of the "
    "set's embedding against the class prototypes, 0-1, higher = more confident.",
    "ICS (in-class Gaussian score, p)": "how typical the set's embedding is of the predicted class, compared with "
    "training patients who had the same modalities, 0-1; a low value means an unusual case. log ICS is its natural "
    "logarithm.",
    "reward": "what adding one recovered modality changes: q with it, scaled down by the calibration factor G "
    "(G = 1 unless the ICS drops), minus q without it. Reward > 0: it helps; the best such modality is accepted. "
    "Reward < 0: rejected for good. If no reward is > 0 the selection stops and the remaining ones are not used.",
    "step": "one round of the selection: step 0 scores every recovered modality against the observed ones; each "
    "later step scores the remaining ones against the set grown by the accepted modality.",
    "calibration fallback": "some score of this patient used calibration statistics pooled from smaller modality "
    "sets, because too few training patients had that exact set of modalities (natural missingness); its ICS is "
    "then less specific.",
    "missing fields": "clinical fields left blank or holding a missing-value code (e.g. -999, NA); a clinical group "
    "with at least one field counts as observed.",
}


def report_environment(template_dir: str | os.PathLike | None = None) -> Any:
    """The Jinja2 environment of the report pages: templates from ``template_dir`` first (a site's own, any subset of
    the shipped files), then the shipped ones (:data:`TEMPLATE_DIR`); every value is HTML-escaped."""
    import jinja2

    folders = [TEMPLATE_DIR]
    if template_dir is not None:
        if not os.path.isdir(template_dir):
            raise FileNotFoundError(f"report template folder not found: {os.fspath(template_dir)}")
        folders.insert(0, os.fspath(template_dir))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders), autoescape=True, trim_blocks=False, lstrip_blocks=False,
        keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
    )


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}%" if d else "–"


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else format(v, fmt)
    return str(v)


def _median(values: Sequence[float]) -> float | None:
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


def patient_page_name(index: int, patient_id: Any) -> str:
    """File name of a patient's page: report position and a file-safe form of the id (e.g. ``00012_case012``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(patient_id)).strip("._")[:48] or "patient"
    return f"{index:05d}_{safe}"


def _rel(path: str, start_dir: str) -> str:
    return os.path.relpath(path, start_dir).replace(os.sep, "/")


def _names(rec: Mapping[str, Any]) -> tuple[str, str]:
    """``(label name, prediction name)`` of a record as the CSV writes them."""
    label = rec.get("label_name")
    label = label if label is not None else class_name(rec.get("label"))
    pred = rec.get("prediction_name")
    pred = pred if pred is not None else (None if rec.get("error") else class_name(rec.get("prediction")))
    return label or "", pred or ""


def _modality_rows(records: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    n = len(records)
    for m in modalities:
        c = {s: 0 for s in STATUS_LABELS}
        rew: dict[str, list[float]] = {"accepted": [], "rejected": []}
        for rec in records:
            d = modality_decision(rec, m)
            c[d["status"]] += 1
            if d["status"] in rew and d["reward"] is not None:
                rew[d["status"]].append(d["reward"])
        rec_n = c["accepted"] + c["rejected"] + c["unused"]
        rows.append({
            "name": m, "observed": c["observed"], "observed_pct": _pct(c["observed"], n), "recovered": rec_n,
            "accepted": c["accepted"], "accepted_pct": _pct(c["accepted"], rec_n), "rejected": c["rejected"],
            "rejected_pct": _pct(c["rejected"], rec_n), "unused": c["unused"], "missing": c["missing"],
            "median_accepted": format_reward(_median(rew["accepted"])),
            "median_rejected": format_reward(_median(rew["rejected"])),
        })
    return rows


_ACCURACY_MEANING = {
    "all": "every labelled patient that was processed",
    "accepted something": "DyMo accepted at least one recovered modality",
    "observed only": "DyMo used the observed modalities only (nothing missing, or every recovery declined)",
}


def _majority_rate(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Chance as the majority-class rate (%) of the labelled records (None without labels)."""
    labels = [str(label_value(r.get("label"))) for r in records if label_value(r.get("label")) is not None]
    if not labels:
        return None
    return 100.0 * max(labels.count(v) for v in set(labels)) / len(labels)


def _pct_ci(v: float | None, ci: Sequence[float] | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    if v is None:
        return "n/a"
    text = format(scale * v, fmt) + ("%" if scale == 100.0 else "")
    return text + (f" [{format(scale * ci[0], fmt)}, {format(scale * ci[1], fmt)}]" if ci else "")


def _clinical_context(s: Mapping[str, Any], files_dir: str, out_dir: str) -> dict[str, Any] | None:
    """The cohort page's clinical metrics (DyMo on the labelled records) and the reliability diagram, written to
    ``files_dir/reliability.png``; None without ``metrics`` in the summary."""
    from ..confidence import plot_reliability_diagram

    m = (s.get("metrics") or {}).get("dymo")
    if not m or not m.get("num_patients"):
        return None
    ci = m.get("ci95") or {}
    headline = [
        ("balanced accuracy [95% CI]", _pct_ci(m["balanced_accuracy"], ci.get("balanced_accuracy"))),
        ("accuracy [95% CI]", _pct_ci(m["accuracy"], ci.get("accuracy"))),
        ("macro F1", f"{m['macro_f1']:.3f}"),
        ("AUROC [95% CI]", _pct_ci(m["auroc"], ci.get("auroc"), 1.0, ".3f")
         + (f" ({m['auroc_note']})" if m.get("auroc_note") else "")),
        ("chance (always the majority class, " + str(m["majority_class"]) + ")", _pct_ci(m["chance"], None)),
    ]
    if s.get("ece") is not None:
        headline.append(("ECE (top-label, 10 bins)", _pct_ci(float(s["ece"]), None)))
    names = list(m["per_class"])
    per_class = [
        {"name": n, "support": c["support"], "sensitivity": _pct_ci(c["sensitivity"], None),
         "precision": _pct_ci(c["precision"], None), "f1": "n/a" if c["f1"] is None else f"{c['f1']:.3f}",
         "auroc": "n/a" if c["auroc"] is None else f"{c['auroc']:.3f}"}
        for n, c in m["per_class"].items()
    ]
    figure = None
    if s.get("reliability"):
        os.makedirs(files_dir, exist_ok=True)
        png = plot_reliability_diagram(s["reliability"], os.path.join(files_dir, "reliability.png"),
                                       title="DyMo: calibrated probabilities")
        figure = _rel(png, out_dir)
    boot = m.get("bootstrap")
    return {
        "patients": m["num_patients"], "headline": headline, "per_class": per_class, "names": names,
        "confusion": [{"name": n, "counts": row} for n, row in zip(names, m["confusion_matrix"])],
        "reliability": figure,
        "temperature": (None if s.get("probability_temperature") is None
                        else f"{float(s['probability_temperature']):.4g}"),
        "intervals": None if not boot else f"{boot['method']}, {boot['replicates']} replicates (seed {boot['seed']})",
    }


def _accuracy_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"group": g, "meaning": _ACCURACY_MEANING[g], "n": n, "correct": c, "accuracy": _pct(c, n)}
        for g, c, n in accuracy_split(records)
    ]


_CELL_TEXT = {"observed": "obs", "accepted": "acc", "rejected": "rej", "unused": "n/u", "missing": "–"}


def _patient_row(rec: Mapping[str, Any], modalities: Sequence[str], link: str | None) -> dict[str, Any]:
    cells = []
    for m in modalities:
        d = modality_decision(rec, m)
        s = d["status"]
        text = _CELL_TEXT[s]
        if s in ("accepted", "rejected", "unused") and d["reward"] is not None:
            text += f" {d['reward']:+.3g}"
        cells.append({"status": s, "text": text})
    label, pred = _names(rec)
    return {
        "patient_id": str(rec.get("patient_id")), "link": link, "label_name": label, "prediction_name": pred,
        "correct": is_correct(rec), "quality": _num(rec.get("quality"), ".3f"), "ics": _num(rec.get("ics"), ".3f"),
        "cells": cells, "error": str(rec["error"]) if rec.get("error") else None,
    }


def _svg_scores(traj: Sequence[Mapping[str, Any]]) -> str:
    """Inline SVG line chart of quality and ICS along the steps (both 0-1); numbers and fixed words only."""
    pts = [(t.get("step", i), t.get("quality"), t.get("ics")) for i, t in enumerate(traj)]
    if not pts:
        return ""
    w, h, l, r, top, bot = 360, 170, 40, 110, 12, 30
    n = max(1, len(pts) - 1)

    def xy(k: int, v: float) -> tuple[float, float]:
        return l + (w - l - r) * (k / n if len(pts) > 1 else 0.5), top + (h - top - bot) * (1 - v)

    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="quality and ICS by step">']
    for v in (0, 0.5, 1):
        _, y = xy(0, v)
        out.append(f'<line x1="{l}" y1="{y:.1f}" x2="{w - r}" y2="{y:.1f}" stroke="#d0d7de"/>'
                   f'<text x="{l - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
    for k, _, _ in pts:
        x, _ = xy(int(k), 0)
        out.append(f'<text x="{x:.1f}" y="{h - 12}" font-size="11" text-anchor="middle">{int(k)}</text>')
    out.append(f'<text x="{(l + w - r) / 2:.1f}" y="{h - 1}" font-size="11" text-anchor="middle">step</text>')
    for idx, (name, color) in enumerate((("quality q", "#3b75af"), ("ICS p", "#e08214"))):
        coords = [xy(int(k), float(v)) for k, *vals in pts if (v := vals[idx]) is not None and math.isfinite(v)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in coords]
        ly = top + 14 + 18 * idx
        out.append(f'<line x1="{w - r + 10}" y1="{ly}" x2="{w - r + 28}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{w - r + 32}" y="{ly + 4}" font-size="11">{name}</text>')
    out.append("</svg>")
    return "".join(out)


def _patient_context(
    rec: Mapping[str, Any], modalities: Sequence[str], page_dir: str, img_dir: str, name: str, cohort: str
) -> dict[str, Any]:
    from markupsafe import Markup

    pid = str(rec.get("patient_id"))
    ok = is_correct(rec)
    err = rec.get("error")
    label, pred = _names(rec)
    facts = [
        (label, "label"), (pred, "prediction"), (_num(rec.get("probability"), ".3f"), "probability (calibrated)"),
        ("" if ok is None else ("yes" if ok else "no"), "correct"),
        (_num(rec.get("quality"), ".4f"), "quality q (final)"), (_num(rec.get("ics"), ".4g"), "ICS p (final)"),
        (_num(rec.get("log_ics"), ".4g"), "log ICS"), (_num(rec.get("steps")), "accepted steps"),
    ]
    region = region_of_interest_text(rec.get("roi_guide"))
    if region:
        facts.append((region, "3D volumes read"))
    reasons = rec.get("reasons") or {}
    modality_rows = []
    for m in modalities:
        d = modality_decision(rec, m)
        rewards = ", ".join(f"step {k}: {format_reward(r)}" for k, r in enumerate(d["rewards"]) if r is not None)
        modality_rows.append({"name": m, "status": d["status"], "reason": str(reasons.get(m) or ""),
                              "rewards": rewards, "why": d["why"]})
    pictures = []
    for m in modalities:
        planes = (rec.get("_pictures") or {}).get(m)
        if not planes:
            continue
        d = modality_decision(rec, m)
        images = []
        for plane, arr in planes:
            fname = f"{name}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', m)}_{plane}.png"
            path = save_picture(arr, os.path.join(img_dir, fname))
            images.append({"src": _rel(path, page_dir), "plane": plane})
        decided = d["status"] in ("accepted", "rejected", "unused")
        pictures.append({
            "name": m, "status": d["status"], "color": STATUS_COLORS[d["status"]], "images": images,
            "kind": "observed image" if d["status"] == "observed" else "recovered image (generated)",
            "reward": format_reward(d["reward"]) if decided else None, "step": d["step"],
        })
    traj = rec.get("trajectory") or []
    trajectory = [
        {"step": t.get("step"), "added": str(t.get("added") or "observed set"), "quality": _num(t.get("quality"), ".4f"),
         "ics": _num(t.get("ics"), ".4g"), "log_ics": _num(t.get("log_ics"), ".4g")}
        for t in traj
    ]
    rewards = rec.get("rewards") or {}
    n_steps = max((len(v) for v in rewards.values()), default=0)
    candidates = [m for m in modalities if m in rewards]
    acc_at = {a.get("step"): a.get("modality") for a in rec.get("accepted") or [] if isinstance(a, Mapping)}
    steps = []
    for k in range(n_steps):
        cells = []
        for m in candidates:
            v = rewards[m][k] if k < len(rewards[m]) else None
            if v is None:
                cells.append({"text": None, "status": None})
                continue
            if acc_at.get(k) == m:
                s = "accepted"
            elif v < 0:
                s = "rejected"
            elif modality_status(rec, m) == "unused" and k == len(rewards[m]) - 1:
                s = "unused"
            else:
                s = None
            cells.append({"text": format_reward(v), "status": s})
        steps.append({"step": k, "cells": cells, "accepted": str(acc_at.get(k) or "stop")})
    missing_fields = rec.get("missing_fields") or {}
    sizes = rec.get("num_fields") or {}
    notes = rec.get("field_notes") or {}
    clinical_rows = [
        {"group": g, "fields": sizes.get(g, "?"), "missing": len(f), "text": (notes.get(g) or ", ".join(f)) if f else ""}
        for g, f in missing_fields.items()
    ]
    return {
        "title": f"DyMo report: patient {pid}", "cohort_href": cohort, "patient_id": pid, "facts": facts,
        "error": str(err) if err else None, "modality_rows": modality_rows, "pictures": pictures,
        "trajectory": trajectory, "svg": Markup(_svg_scores(traj)), "candidates": candidates, "steps": steps,
        "clinical_rows": clinical_rows, "trust_html": Markup(patient_trust_html(rec)),
    }


def write_report_html(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    modalities: Sequence[str] | None = None,
    summary_png: str | None = None,
    files: Mapping[str, str] | None = None,
    max_patient_pages: int = 100,
    progress: bool = False,
    pseudonymised: bool = False,
    table_rows_per_page: int = 1000,
    summary: Mapping[str, Any] | None = None,
    template_dir: str | os.PathLike | None = None,
) -> str:
    """Write the cohort page ``path`` and its folder ``<stem>_files/`` (figures, patient pages, pictures).

    The ``patients``, ``img`` and ``table`` folders of an earlier report in ``<stem>_files/`` are replaced.

    Args:
        records: the report records (the ``_pictures`` of a record, see
            :class:`~monai_dymo.report.pictures.PatientPictures`, are drawn; labels and predictions are shown by their
            ``label_name`` / ``prediction_name``).
        path: the cohort page, e.g. ``out/dymo_report.html``.
        modalities: column order (default: from the records).
        summary_png: the summary chart to show (a path), if written.
        files: ``{name: path}`` of the other report files to link (CSV, JSON, data dictionary).
        max_patient_pages: per-patient pages for at most this many patients (priority: errors, a rejected, an accepted
            recovered modality, then the rest, each in report order).
        progress: tqdm progress bar over the patient pages.
        pseudonymised: the ids are pseudonyms (said on the page).
        table_rows_per_page: patient table rows on the cohort page; further rows go to linked pages
            ``<stem>_files/table/rows_0002.html``, ... (so the cohort page opens quickly for any cohort size).
        summary: the cohort figures of the cards (default: :func:`~monai_dymo.report.summary.report_summary`
            of the records; the JSON's ``summary`` block, so that the two agree).
        template_dir: a folder of the site's own templates (any of the shipped ``*.html.j2`` / ``report.css``), used
            before the shipped ones (see :func:`report_environment`).

    Returns:
        ``path``.
    """
    env = report_environment(template_dir)
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    files_dir = os.path.join(out_dir, f"{stem}_files")
    page_dir, img_dir = os.path.join(files_dir, "patients"), os.path.join(files_dir, "img")
    for d in (page_dir, img_dir, os.path.join(files_dir, "table")):  # stale files of an earlier run
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(page_dir, exist_ok=True)
    modalities = list(modalities) if modalities is not None else report_modalities(records)
    n = len(records)
    common = {"legend_scores": LEGEND_SCORES, "labels": STATUS_LABELS}

    order = sorted(range(n), key=lambda i: (-patient_priority(records[i]), i))
    chosen = sorted(order[:max_patient_pages])
    links: dict[int, str] = {}  # record index -> page path relative to out_dir
    cohort_from_page = _rel(path, page_dir)
    patient_template = env.get_template("patient.html.j2")
    for i in tqdm(chosen, desc="patient pages", disable=bar_disabled(progress), leave=False):
        rec = records[i]
        name = patient_page_name(i, rec.get("patient_id"))
        page = os.path.join(page_dir, name + ".html")
        context = _patient_context(rec, modalities, page_dir, img_dir, name, cohort_from_page)
        with open(page, "w", encoding="utf-8") as f:
            f.write(patient_template.render(**common, **context))
        links[i] = _rel(page, out_dir)

    # cohort figures
    statuses = [[modality_status(r, m) for m in modalities] for r in records]
    figs = []
    if summary_png:
        figs.append((summary_png, "Per modality: how many patients had it observed, recovered and accepted, "
                                  "rejected or not used; right: accuracy by what was used."))
    if n and modalities:
        tm = plot_trust_map(statuses, modalities, os.path.join(files_dir, "trust_map.png"))
        figs.append((tm, "Trust map: one row per patient, one column per modality; patients with the same pattern "
                         "are grouped, the most frequent patterns at the top."))
        rewards: dict[str, dict[str, list[float]]] = {m: {} for m in modalities}
        for rec in records:
            for m in modalities:
                d = modality_decision(rec, m)
                if d["status"] in ("accepted", "rejected", "unused") and d["reward"] is not None:
                    rewards[m].setdefault(d["status"], []).append(d["reward"])
        rw = plot_reward_distributions(rewards, modalities, os.path.join(files_dir, "rewards.png"))
        if rw:
            figs.append((rw, "Reward of each recovered modality at the step it was decided; dashed line: 0."))

    s = dict(summary) if summary is not None else report_summary(records, modalities)
    cards = [
        (str(s["patients"]), "patients"), (str(s["processed"]), "processed"),
        (str(s["errors"]), "not processed (errors)"),
        (f"{s['used_recovered']} ({_pct(s['used_recovered'], n)})", "used a recovered modality"),
        (f"{s['had_rejection']} ({_pct(s['had_rejection'], n)})", "had a recovery rejected"),
    ]
    if s.get("accuracy") is not None:
        cards.append((f"{s['accuracy']:.1f}%", f"accuracy ({s['labelled']} labelled)"))
    all_errors = [(i, r) for i, r in enumerate(records) if r.get("error")]
    errors = [
        {"patient_id": str(r.get("patient_id")), "link": links.get(i), "error": str(r.get("error")),
         "reasons": "; ".join(f"{m}: {v}" for m, v in (r.get("reasons") or {}).items() if v)}
        for i, r in all_errors[:MAX_ERROR_ROWS]
    ]

    per_page = max(1, int(table_rows_per_page))
    chunks = [range(a, min(a + per_page, n)) for a in range(0, n, per_page)] or [range(0)]
    table_dir = os.path.join(files_dir, "table")
    chunk_paths = [path] + [os.path.join(table_dir, f"rows_{k + 1:04d}.html") for k in range(1, len(chunks))]

    def table(k: int, here: str) -> dict[str, Any]:
        base = os.path.dirname(here)
        return {
            "first": chunks[k].start + 1, "last": chunks[k].stop, "total": n, "linked": len(links),
            "modalities": modalities,
            "rows": [
                _patient_row(records[i], modalities,
                             _rel(os.path.join(out_dir, links[i]), base) if i in links else None)
                for i in chunks[k]
            ],
            "pages": [
                {"text": f"{rng.start + 1}-{rng.stop}", "current": j == k, "href": _rel(p, base)}
                for j, (rng, p) in enumerate(zip(chunks, chunk_paths))
            ],
        }

    if len(chunks) > 1:
        os.makedirs(table_dir, exist_ok=True)
    table_template = env.get_template("table_page.html.j2")
    for k in tqdm(range(1, len(chunks)), desc="patient table", disable=bar_disabled(progress), leave=False):
        here = chunk_paths[k]
        with open(here, "w", encoding="utf-8") as f:
            f.write(table_template.render(
                **common, title=f"DyMo report: patients {chunks[k].start + 1}-{chunks[k].stop}",
                cohort_href=_rel(path, table_dir), table=table(k, here),
            ))
    from markupsafe import Markup

    html = env.get_template("cohort.html.j2").render(
        **common,
        title="DyMo modality selection report",
        n=n,
        modalities=modalities,
        when=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        files=[{"href": _rel(p, out_dir), "name": os.path.basename(p)} for p in (files or {}).values()],
        pseudonymised=pseudonymised,
        cards=cards,
        modality_rows=_modality_rows(records, modalities),
        alone={m: v for m, v in (s.get("single_modality") or {}).items()},
        chance=_majority_rate(records),
        clinical=_clinical_context(s, files_dir, out_dir),
        accuracy_rows=_accuracy_rows(records),
        figures=[{"src": _rel(p, out_dir), "caption": c} for p, c in figs],
        errors=errors,
        n_errors=len(all_errors),
        table=table(0, path),
        trust_section=Markup(trust_section_html(records, files_dir, out_dir)),
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return path
