"""The HTML DyMo selection report: one cohort page and per-patient pages, readable without the code.

Layout written by :func:`write_report_html` for ``<dir>/dymo_report.html``::

    dymo_report.html                   cohort page: legend, per-modality rates, accuracy split, figures, errors,
                                       one table row per patient (linked to its page when it has one)
    dymo_report_files/trust_map.png    patients x modalities map of what was used
    dymo_report_files/rewards.png      reward distributions per modality
    dymo_report_files/patients/*.html  per-patient pages (at most ``max_patient_pages``: errors first, then patients
                                       with a rejected, then an accepted recovered modality)
    dymo_report_files/img/*.png        the pictures of those pages (observed and recovered images)
    dymo_report_files/table/*.html     the patient table beyond its first ``table_rows_per_page`` rows

Pages use relative links only and no script, so the folder can be zipped and opened anywhere. Text is escaped with
:func:`html.escape`.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from tqdm.auto import tqdm

from . import report_figures
from .report_figures import STATUS_COLORS, STATUS_LABELS
from .report_trust import patient_trust_html, trust_section_html
from .report_records import (
    accuracy_split,
    format_reward,
    is_correct,
    label_value,
    modality_decision,
    modality_status,
    patient_priority,
    report_modalities,
)

__all__ = ["write_report_html", "patient_page_name", "LEGEND_SCORES"]

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

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:0 auto;max-width:1320px;
padding:12px 24px 40px;color:#1f2328;line-height:1.4;font-size:14px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d0d7de;
padding-bottom:3px}h3{font-size:14px;margin:14px 0 6px}
.sub{color:#57606a;margin:0 0 10px}a{color:#0969da}
nav a{margin-right:14px}
table{border-collapse:collapse;margin:4px 0 10px}th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;
vertical-align:top}th{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}.card{border:1px solid #d0d7de;border-radius:6px;
padding:8px 14px;min-width:100px}.card b{display:block;font-size:20px}.card span{color:#57606a;font-size:12px}
.st{color:#fff;border-radius:3px;padding:1px 6px;white-space:nowrap;font-size:12px}
td.st{border-radius:0;text-align:center}
.s-observed{background:#3b75af}.s-accepted{background:#4ca64c}.s-rejected{background:#d1495b}
.s-unused{background:#c9c9c9;color:#1f2328}.s-missing{background:#3a3a3a}
.legend dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:6px 0}
.legend dt{font-weight:600}.legend dd{margin:0;color:#303840}
.legend-states span{margin-right:6px}
.figs{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:flex-start}.figs h2{flex-basis:100%}
.figs figure{margin:0;display:table}.figs img{border:1px solid #d0d7de;display:block}
.figs figcaption{display:table-caption;caption-side:bottom}
.row{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
.pics{display:flex;flex-wrap:wrap;gap:12px}.pic{border:3px solid #d0d7de;border-radius:6px;padding:6px;
background:#fafbfc;width:min-content}.pic .ims{display:flex;gap:4px}
.pic img{image-rendering:pixelated;height:150px;background:#000}
.pic .cap{font-size:12px;margin-top:4px;min-width:170px}
.patients td{padding:2px 6px;font-size:12.5px}.patients td.st{font-size:11.5px}
.pager{margin:6px 0}.warn{color:#a40e26}.muted{color:#6e7781}
"""


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}%" if d else "–"


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else format(v, fmt)
    return escape(str(v))


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


def _state(status: str, text: str | None = None) -> str:
    return f'<span class="st s-{status}">{escape(text or STATUS_LABELS[status])}</span>'


def _legend() -> str:
    states = "".join(
        f"<span>{_state(s)}</span>" for s in STATUS_LABELS
    )
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in LEGEND_SCORES.items())
    return (
        '<section id="legend" class="legend"><h2>Legend</h2>'
        f'<p class="legend-states">{states}</p>'
        "<p>Each modality of each patient is in one state: <b>observed</b> (measured), <b>recovered, accepted</b> "
        "(missing, generated, and used because it raised the calibrated confidence), <b>recovered, rejected</b> "
        "(generated but it lowered the calibrated confidence, reward &lt; 0), <b>recovered, not used</b> (generated, "
        "neither helping nor hurting when the selection stopped), <b>unusable</b> (the patient could not be "
        "processed, e.g. nothing was observed). The prediction uses the observed and accepted modalities only.</p>"
        f"<dl>{items}</dl></section>"
    )


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _rel(path: str, start_dir: str) -> str:
    return os.path.relpath(path, start_dir).replace(os.sep, "/")


def _modality_table(records: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> str:
    head = (
        "<tr><th>modality</th><th>observed</th><th>recovered</th><th>accepted<br><span class=muted>% of recovered"
        "</span></th><th>rejected<br><span class=muted>% of recovered</span></th><th>not used</th><th>unusable</th>"
        "<th>median reward<br>accepted</th><th>median reward<br>rejected</th></tr>"
    )
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
        rows.append(
            f"<tr><th>{escape(m)}</th><td class=num>{c['observed']} ({_pct(c['observed'], n)})</td>"
            f"<td class=num>{rec_n}</td><td class=num>{c['accepted']} ({_pct(c['accepted'], rec_n)})</td>"
            f"<td class=num>{c['rejected']} ({_pct(c['rejected'], rec_n)})</td><td class=num>{c['unused']}</td>"
            f"<td class=num>{c['missing']}</td><td class=num>{format_reward(_median(rew['accepted']))}</td>"
            f"<td class=num>{format_reward(_median(rew['rejected']))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _accuracy_table(records: Sequence[Mapping[str, Any]]) -> str:
    split = accuracy_split(records)
    if not split:
        return "<p class=muted>No labels in this run: accuracy cannot be computed.</p>"
    explain = {
        "all": "every labelled patient that was processed",
        "accepted something": "DyMo accepted at least one recovered modality",
        "observed only": "DyMo used the observed modalities only (nothing missing, or every recovery declined)",
    }
    rows = "".join(
        f"<tr><th>{escape(g)}</th><td>{escape(explain[g])}</td><td class=num>{n}</td><td class=num>{c}</td>"
        f"<td class=num>{_pct(c, n)}</td></tr>"
        for g, c, n in split
    )
    return (
        "<table><tr><th>patients</th><th>meaning</th><th>n</th><th>correct</th><th>accuracy</th></tr>"
        f"{rows}</table>"
    )


def _patient_row(rec: Mapping[str, Any], modalities: Sequence[str], link: str | None) -> str:
    pid = escape(str(rec.get("patient_id")))
    ok = is_correct(rec)
    cells = [f'<td><a href="{escape(link)}">{pid}</a></td>' if link else f"<td>{pid}</td>"]
    label = label_value(rec.get("label"))
    cells.append(f"<td class=num>{_num(label)}</td><td class=num>{_num(rec.get('prediction'))}</td>")
    cells.append(f"<td class=num>{'' if ok is None else ('yes' if ok else '<b class=warn>no</b>')}</td>")
    cells.append(f"<td class=num>{_num(rec.get('quality'), '.3f')}</td>")
    cells.append(f"<td class=num>{_num(rec.get('ics'), '.3f')}</td>")
    for m in modalities:
        d = modality_decision(rec, m)
        s = d["status"]
        text = {"observed": "obs", "accepted": "acc", "rejected": "rej", "unused": "n/u", "missing": "–"}[s]
        if s in ("accepted", "rejected", "unused") and d["reward"] is not None:
            text += f" {d['reward']:+.3g}"
        cells.append(f'<td class="st s-{s}">{text}</td>')
    err = rec.get("error")
    cells.append(f"<td class=warn>{escape(str(err))}</td>" if err else "<td></td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _svg_scores(traj: Sequence[Mapping[str, Any]]) -> str:
    """Inline SVG line chart of quality and ICS along the steps (both 0-1)."""
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
        x, _ = xy(k, 0)
        out.append(f'<text x="{x:.1f}" y="{h - 12}" font-size="11" text-anchor="middle">{k}</text>')
    out.append(f'<text x="{(l + w - r) / 2:.1f}" y="{h - 1}" font-size="11" text-anchor="middle">step</text>')
    for idx, (name, color) in enumerate((("quality q", "#3b75af"), ("ICS p", "#e08214"))):
        coords = [xy(k, v) for k, *vals in pts if (v := vals[idx]) is not None and math.isfinite(v)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in coords]
        ly = top + 14 + 18 * idx
        out.append(f'<line x1="{w - r + 10}" y1="{ly}" x2="{w - r + 28}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{w - r + 32}" y="{ly + 4}" font-size="11">{name}</text>')
    out.append("</svg>")
    return "".join(out)


def _patient_page(
    rec: Mapping[str, Any], modalities: Sequence[str], page_dir: str, img_dir: str, name: str, cohort: str
) -> str:
    pid = str(rec.get("patient_id"))
    ok = is_correct(rec)
    label = label_value(rec.get("label"))
    err = rec.get("error")
    body = [f'<p><a href="{escape(cohort)}">&larr; cohort report</a></p>', f"<h1>Patient {escape(pid)}</h1>"]
    facts = [
        ("label", _num(label)), ("prediction", _num(rec.get("prediction"))),
        ("probability", _num(rec.get("probability"), ".3f")),
        ("correct", "" if ok is None else ("yes" if ok else "<b class=warn>no</b>")),
        ("quality q (final)", _num(rec.get("quality"), ".4f")), ("ICS p (final)", _num(rec.get("ics"), ".4g")),
        ("log ICS", _num(rec.get("log_ics"), ".4g")), ("accepted steps", _num(rec.get("steps"))),
    ]
    body.append("<div class=cards>" + "".join(f"<div class=card><b>{v or '–'}</b><span>{escape(k)}</span></div>"
                                             for k, v in facts) + "</div>")
    if err:
        body.append(f"<p class=warn><b>Not processed:</b> {escape(str(err))}</p>")
    body.append(patient_trust_html(rec))
    reasons = rec.get("reasons") or {}
    # modalities table
    rows = []
    for m in modalities:
        d = modality_decision(rec, m)
        rewards = ", ".join(f"step {k}: {format_reward(r)}" for k, r in enumerate(d["rewards"]) if r is not None)
        rows.append(
            f"<tr><th>{escape(m)}</th><td>{_state(d['status'])}</td><td>{escape(str(reasons.get(m) or ''))}</td>"
            f"<td class=num>{escape(rewards) or '–'}</td><td>{escape(d['why'])}</td></tr>"
        )
    body.append(
        "<h2>Modalities</h2><table><tr><th>modality</th><th>state</th><th>in the data (why missing)</th>"
        f"<th>reward at each step</th><th>decision</th></tr>{''.join(rows)}</table>"
    )
    # pictures
    pictures = rec.get("_pictures") or {}
    if pictures:
        figs = []
        for m in modalities:
            planes = pictures.get(m)
            if not planes:
                continue
            d = modality_decision(rec, m)
            imgs = []
            for plane, arr in planes:
                fname = f"{name}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', m)}_{plane}.png"
                path = report_figures.save_picture(arr, os.path.join(img_dir, fname))
                imgs.append(f'<img src="{escape(_rel(path, page_dir))}" alt="{escape(m)} {escape(plane)}" '
                            f'title="{escape(m)}, {escape(plane)}">')
            kind = "observed image" if d["status"] == "observed" else "recovered image (generated)"
            cap = f"<b>{escape(m)}</b> {_state(d['status'])} <span class=muted>{escape(kind)}"
            if len(planes) > 1:
                cap += " · " + ", ".join(escape(p) for p, _ in planes)
            cap += "</span>"
            if d["status"] in ("accepted", "rejected", "unused"):
                cap += f"<br>reward {escape(format_reward(d['reward']))} at step {d['step']}"
            figs.append(f'<div class=pic style="border-color:{STATUS_COLORS[d["status"]]}">'
                        f'<div class=ims>{"".join(imgs)}</div><div class=cap>{cap}</div></div>')
        body.append("<h2>Images</h2><p class=muted>Observed images as given; recovered images are what the recovery "
                    "network generated for the missing modalities (what DyMo was offered). 3D volumes: mid slices."
                    f"</p><div class=pics>{''.join(figs)}</div>")
    elif not err:
        body.append("<h2>Images</h2><p class=muted>No pictures kept for this patient (run the evaluator with "
                    "<code>keep_inputs=True</code> to draw them).</p>")
    # steps
    traj = rec.get("trajectory") or []
    if traj:
        trows = "".join(
            f"<tr><td class=num>{t.get('step')}</td><td>{escape(str(t.get('added') or 'observed set'))}</td>"
            f"<td class=num>{_num(t.get('quality'), '.4f')}</td><td class=num>{_num(t.get('ics'), '.4g')}</td>"
            f"<td class=num>{_num(t.get('log_ics'), '.4g')}</td></tr>"
            for t in traj
        )
        body.append(
            "<h2>Quality and ICS along the steps</h2><div style='display:flex;gap:24px;align-items:flex-start'>"
            "<table><tr><th>after step</th><th>added</th><th>quality q</th><th>ICS p</th><th>log ICS</th></tr>"
            f"{trows}</table>{_svg_scores(traj)}</div>"
        )
    # rewards at each step, all candidates
    rewards = rec.get("rewards") or {}
    n_steps = max((len(v) for v in rewards.values()), default=0)
    if n_steps:
        cands = [m for m in modalities if m in rewards]
        acc_at = {a.get("step"): a.get("modality") for a in rec.get("accepted") or [] if isinstance(a, Mapping)}
        srows = []
        for k in range(n_steps):
            cells = []
            for m in cands:
                v = rewards[m][k] if k < len(rewards[m]) else None
                if v is None:
                    cells.append("<td class=muted>–</td>")
                    continue
                if acc_at.get(k) == m:
                    s = "accepted"
                elif v < 0:
                    s = "rejected"
                elif modality_status(rec, m) == "unused" and k == len(rewards[m]) - 1:
                    s = "unused"
                else:
                    s = None
                style = f' class="st s-{s}"' if s else " class=num"
                cells.append(f"<td{style}>{escape(format_reward(v))}</td>")
            srows.append(f"<tr><th>step {k}</th>{''.join(cells)}<td>{escape(str(acc_at.get(k) or 'stop'))}</td></tr>")
        body.append(
            "<h2>Rewards at each step</h2><p class=muted>Coloured: the decision of that step (accepted = largest "
            "positive reward, rejected = reward &lt; 0). Uncoloured positive rewards were not the best candidate and "
            "were scored again at the next step.</p>"
            f"<table><tr><th></th>{''.join(f'<th>{escape(m)}</th>' for m in cands)}<th>accepted</th></tr>"
            f"{''.join(srows)}</table>"
        )
    # clinical fields
    missing_fields = rec.get("missing_fields") or {}
    if missing_fields:
        sizes = rec.get("num_fields") or {}
        notes = rec.get("field_notes") or {}
        crow = "".join(
            f"<tr><th>{escape(g)}</th><td class=num>{sizes.get(g, '?')}</td><td class=num>{len(f)}</td>"
            f"<td>{escape(notes.get(g) or ', '.join(f)) if f else '<span class=muted>none</span>'}</td></tr>"
            for g, f in missing_fields.items()
        )
        body.append(
            "<h2>Clinical fields</h2><table><tr><th>group</th><th>fields</th><th>missing</th>"
            "<th>missing fields (= blank: an empty cell; else the missing-value code the table held)</th></tr>"
            f"{crow}</table>"
        )
    body.append(_legend())
    return _page(f"DyMo report: patient {pid}", "\n".join(body))


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
) -> str:
    """Write the cohort page ``path`` and its folder ``<stem>_files/`` (figures, patient pages, pictures).

    The ``patients``, ``img`` and ``table`` folders of an earlier report in ``<stem>_files/`` are replaced.

    Args:
        records: the report records (``_pictures`` of a record, from ``SelectionReportWriter``, are drawn).
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

    Returns:
        ``path``.
    """
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

    order = sorted(range(n), key=lambda i: (-patient_priority(records[i]), i))
    chosen = sorted(order[:max_patient_pages])
    links: dict[int, str] = {}  # record index -> page path relative to out_dir
    cohort_from_page = _rel(path, page_dir)
    for i in tqdm(chosen, desc="patient pages", disable=not progress, leave=False):
        rec = records[i]
        name = patient_page_name(i, rec.get("patient_id"))
        page = os.path.join(page_dir, name + ".html")
        with open(page, "w", encoding="utf-8") as f:
            f.write(_patient_page(rec, modalities, page_dir, img_dir, name, cohort_from_page))
        links[i] = _rel(page, out_dir)

    # cohort figures
    statuses = [[modality_status(r, m) for m in modalities] for r in records]
    figs = []
    if summary_png:
        figs.append((summary_png, "Per modality: how many patients had it observed, recovered and accepted, "
                                  "rejected or not used; right: accuracy by what was used."))
    if n and modalities:
        tm = report_figures.plot_trust_map(statuses, modalities, os.path.join(files_dir, "trust_map.png"))
        figs.append((tm, "Trust map: one row per patient, one column per modality; patients with the same pattern "
                         "are grouped, the most frequent patterns at the top."))
        rewards: dict[str, dict[str, list[float]]] = {m: {} for m in modalities}
        for rec in records:
            for m in modalities:
                d = modality_decision(rec, m)
                if d["status"] in ("accepted", "rejected", "unused") and d["reward"] is not None:
                    rewards[m].setdefault(d["status"], []).append(d["reward"])
        rw = report_figures.plot_reward_distributions(rewards, modalities, os.path.join(files_dir, "rewards.png"))
        if rw:
            figs.append((rw, "Reward of each recovered modality at the step it was decided; dashed line: 0."))

    n_err = sum(bool(r.get("error")) for r in records)
    n_acc = sum(bool(r.get("accepted")) for r in records)
    n_rej = sum(bool(r.get("rejected")) for r in records)
    split = {g: (c, k) for g, c, k in accuracy_split(records)}
    cards = [
        (str(n), "patients"), (str(n - n_err), "processed"), (str(n_err), "not processed (errors)"),
        (f"{n_acc} ({_pct(n_acc, n)})", "used a recovered modality"),
        (f"{n_rej} ({_pct(n_rej, n)})", "had a recovery rejected"),
    ]
    if "all" in split:
        cards.append((_pct(*split["all"]), f"accuracy ({split['all'][1]} labelled)"))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    file_links = " · ".join(
        f'<a href="{escape(_rel(p, out_dir))}">{escape(os.path.basename(p))}</a>' for p in (files or {}).values()
    )
    body = [
        "<h1>DyMo modality selection report</h1>",
        f"<p class=sub>{n} patients · modalities {escape(', '.join(modalities))} · written {when}"
        + (f" · {file_links}" if file_links else "")
        + (" · <b>patient ids are pseudonyms</b>" if pseudonymised else "")
        + "</p>",
        '<nav><a href="#summary">summary</a><a href="#legend">legend</a><a href="#modalities">modalities</a>'
        '<a href="#accuracy">accuracy</a><a href="#figures">figures</a><a href="#errors">errors</a>'
        '<a href="#patients">patients</a></nav>',
        '<section id="summary"><div class=cards>'
        + "".join(f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>" for v, k in cards)
        + "</div></section>",
        _legend(),
        '<div class=row>'
        f'<section id="modalities"><h2>Per modality</h2>{_modality_table(records, modalities)}</section>'
        f'<section id="accuracy"><h2>Accuracy by what was used</h2>{_accuracy_table(records)}</section></div>',
        trust_section_html(records, files_dir, out_dir),
        '<section id="figures" class=figs><h2>Figures</h2>'
        + "".join(
            f'<figure><img src="{escape(_rel(p, out_dir))}" alt="{escape(c)}"><figcaption class=muted>{escape(c)}'
            "</figcaption></figure>"
            for p, c in figs
        )
        + "</section>",
    ]
    all_errors = [(i, r) for i, r in enumerate(records) if r.get("error")]
    errors = all_errors[:MAX_ERROR_ROWS]
    if errors:
        erows = "".join(
            f"<tr><td>{_link(links.get(i), r.get('patient_id'))}</td><td class=warn>{escape(str(r.get('error')))}"
            f"</td><td>{escape('; '.join(f'{m}: {v}' for m, v in (r.get('reasons') or {}).items() if v))}</td></tr>"
            for i, r in errors
        )
        more = (f"<p class=muted>The first {len(errors)} of {len(all_errors)} are listed; the CSV has all "
                "(column <code>error</code>).</p>" if len(all_errors) > len(errors) else "")
        body.append(f'<section id="errors"><h2>Errors ({len(all_errors)})</h2>{more}<table><tr><th>patient</th>'
                    f"<th>error</th><th>reasons per modality</th></tr>{erows}</table></section>")
    else:
        body.append('<section id="errors"><h2>Errors</h2><p class=muted>Every patient was processed.</p></section>')
    head = (
        "<tr><th>patient</th><th>label</th><th>prediction</th><th>correct</th><th>q</th><th>ICS</th>"
        + "".join(f"<th>{escape(m)}</th>" for m in modalities)
        + "<th>error</th></tr>"
    )
    per_page = max(1, int(table_rows_per_page))
    chunks = [range(a, min(a + per_page, n)) for a in range(0, n, per_page)] or [range(0)]
    table_dir = os.path.join(files_dir, "table")
    chunk_paths = [path] + [os.path.join(table_dir, f"rows_{k + 1:04d}.html") for k in range(1, len(chunks))]
    explain = (
        f"<p class=muted>{len(links)} of {n} patients have their own page (linked; errors first, then patients with a "
        "rejected, then an accepted recovered modality). Cells: obs = observed, acc = recovered and accepted, rej = "
        "recovered and rejected, n/u = recovered, not used, – = unusable; the number is the reward at the deciding "
        "step.</p>"
    )

    def pager(current: int, here: str) -> str:
        if len(chunks) == 1:
            return ""
        items = []
        for k, (rng, p) in enumerate(zip(chunks, chunk_paths)):
            text = f"{rng.start + 1}-{rng.stop}"
            items.append(f"<b>{text}</b>" if k == current else
                         f'<a href="{escape(_rel(p, os.path.dirname(here)))}#patients">{text}</a>')
        return f"<p class=pager>patients: {' · '.join(items)}</p>"

    def table(k: int, here: str) -> str:
        base = os.path.dirname(here)
        rows = "\n".join(
            _patient_row(records[i], modalities, _rel(os.path.join(out_dir, links[i]), base) if i in links else None)
            for i in chunks[k]
        )
        return (f'<section id="patients"><h2>Patients {chunks[k].start + 1}-{chunks[k].stop} of {n}</h2>{explain}'
                f'{pager(k, here)}<table class="patients">{head}\n{rows}</table>{pager(k, here)}</section>')

    body.append(table(0, path))
    if len(chunks) > 1:
        os.makedirs(table_dir, exist_ok=True)
    for k in tqdm(range(1, len(chunks)), desc="patient table", disable=not progress, leave=False):
        here = chunk_paths[k]
        back = f'<p><a href="{escape(_rel(path, table_dir))}">&larr; cohort report</a> (legend, figures)</p>'
        with open(here, "w", encoding="utf-8") as f:
            f.write(_page(f"DyMo report: patients {chunks[k].start + 1}-{chunks[k].stop}", back + table(k, here)))
    with open(path, "w", encoding="utf-8") as f:
        f.write(_page("DyMo modality selection report", "\n".join(body)))
    return path


def _link(link: str | None, pid: Any) -> str:
    text = escape(str(pid))
    return f'<a href="{escape(link)}">{text}</a>' if link else text
