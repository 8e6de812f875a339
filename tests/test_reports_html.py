"""Tests of the readable reports: HTML pages and pictures, reward / decision columns, clinical field gaps, the data
dictionary, pandas round trip, pseudonymised ids, and that image metadata never reaches a report."""

from __future__ import annotations

import csv
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.data import DataLoader, MetaTensor

from monai_dymo.calibration import fit_calibration
from monai_dymo.engines.evaluator import DyMoEvaluator
from monai_dymo.handlers import SelectionReportWriter
from monai_dymo.report import (
    STATUS_LABELS,
    accuracy_split,
    image_planes,
    modality_decision,
    patient_priority,
    pseudonymize_id,
    read_report_csv,
    write_report_html,
)
from monai_dymo.inferers import NO_MODALITY_ERROR, DyMoInferer

NAMES = ("t1", "flair", "xray", "labs")
SHAPES = {"t1": (1, 6, 7, 8), "flair": (1, 6, 7, 8), "xray": (3, 9, 10), "labs": (3,)}
LAB_FIELDS = ["crp", "wbc", "age"]
C = 2
SECRET = ("DOE^JANE", "19700101")  # DICOM-style header values carried by the image tensors' metadata


class ImageToyNet(nn.Module):
    """Flatten each modality, one linear token encoder per modality, a tanh-sum fusion."""

    def __init__(self, d=8, proj_dim=4):
        super().__init__()
        self.modalities = NAMES
        self.num_classes = C
        self.proj_dim = proj_dim
        self.d = d
        self.enc = nn.ModuleDict({n: nn.Linear(int(np.prod(SHAPES[n])), 2 * d) for n in NAMES})
        self.head = nn.Linear(d, C)
        self.proj = nn.Linear(d, proj_dim)

    def encode(self, inputs):
        return {n: self.enc[n](torch.as_tensor(inputs[n]).flatten(1).float()).reshape(-1, 2, self.d) for n in NAMES}

    def fuse(self, tokens, subset):
        w = subset.float()
        h = torch.tanh(sum(tokens[n].mean(1) * w[:, i : i + 1] for i, n in enumerate(NAMES)))
        return self.head(h), F.normalize(self.proj(h), dim=-1)


def _recovery(x, present):
    """Toy recovery: every modality becomes a scaled copy of the mean observed signal level."""
    out = {}
    for m, v in x.items():
        ramp = torch.arange(v.shape[0], dtype=v.dtype).reshape(-1, *[1] * (v.ndim - 1))
        out[m] = torch.full_like(v, 0.3) + 0.1 * ramp
    return out


def _samples(n=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        present = torch.rand(len(NAMES), generator=g) > 0.5
        present[int(torch.randint(0, len(NAMES), (1,), generator=g))] = True
        if i == 3:
            present[:] = False  # nothing observed: an error record
        sample = {}
        for j, m in enumerate(NAMES):
            v = torch.randn(SHAPES[m], generator=g) if present[j] else torch.zeros(SHAPES[m])
            if m != "labs":
                v = MetaTensor(v, meta={"PatientName": SECRET[0], "PatientBirthDate": SECRET[1]})
            sample[m] = v
        field_mask = torch.tensor([True, True, True]) if present[3] else torch.zeros(3, dtype=torch.bool)
        note = "" if present[3] else "crp = blank, wbc = blank, age = blank"
        if present[3] and i % 2 == 0:
            field_mask = torch.tensor([False, False, True])  # a -999 CRP and a blank WBC
            note = "crp = -999, wbc = blank"
        sample["field_mask"] = {"labs": field_mask}
        sample["field_notes"] = {"labs": note}
        sample["present"] = present
        sample["modality_reasons"] = {
            m: "observed" if present[j] else f"file not found: /data/case{i:03d}/{m}.nii.gz"
            for j, m in enumerate(NAMES)
        }
        sample["patient_id"] = f"case{i:03d}"
        sample["label"] = i % C
        out.append(sample)
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = ImageToyNet().eval()
    g = torch.Generator().manual_seed(1)
    train = [
        {**{m: torch.randn(16, *SHAPES[m], generator=g) for m in NAMES}, "label": torch.arange(16) % C}
        for _ in range(2)
    ]
    calib = fit_calibration(net.encode, net.fuse, train, modalities=NAMES, num_classes=C, progress=False)
    return net, calib


def _run(model, out_dir, keep_inputs=True, decollate=True, **writer_kwargs):
    net, calib = model
    writer = SelectionReportWriter(
        output_dir=out_dir, clinical_fields={"labs": LAB_FIELDS}, progress=False, picture_size=8, **writer_kwargs
    )
    evaluator = DyMoEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(_samples(), batch_size=5, shuffle=False, num_workers=0),
        network=net,
        inferer=DyMoInferer(calib, recovery=_recovery),
        val_handlers=[writer],
        keep_inputs=keep_inputs,
        decollate=decollate,
    )
    evaluator.run()
    return writer


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src"))
        if a.get("id"):
            self.ids.append(a["id"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def _check_resolvable(page: Path, parsed: _Links) -> None:
    for ref in parsed.images + [h for h in parsed.links if not h.startswith("#")]:
        assert ref and "://" not in ref and not os.path.isabs(ref), ref
        target, _, fragment = ref.partition("#")
        assert (page.parent / target).is_file(), f"{page.name} links {ref}, which is not on disk"
        if fragment:
            assert fragment in _parse(page.parent / target).ids, f"{page.name} links {ref}: no such anchor"


@pytest.fixture(scope="module")
def report(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    writer = _run(model, out, max_patient_pages=4)
    return out, writer


def test_html_cohort_and_patient_pages(report):
    out, writer = report
    records = writer.records
    cohort = out / "dymo_report.html"
    assert writer.paths["html"] == str(cohort)
    parsed = _parse(cohort)
    text = " ".join(parsed.text)
    for rec in records:  # every patient named
        assert rec["patient_id"] in text
    assert "legend" in parsed.ids and all(label in text for label in STATUS_LABELS.values())
    for word in ("quality", "ICS", "reward"):
        assert word in text
    _check_resolvable(cohort, parsed)
    assert any(src.endswith("trust_map.png") for src in parsed.images)
    assert "accepted something" in text and "observed only" in text  # accuracy split (labels exist)
    assert NO_MODALITY_ERROR in text  # errors listed with their reason

    pages = sorted((out / "dymo_report_files" / "patients").glob("*.html"))
    assert len(pages) == 4  # max_patient_pages
    # errors first, then patients with a rejection, ...: the chosen ones have the highest priorities
    linked = {p.stem.split("_", 1)[1] for p in pages}
    prios = sorted((patient_priority(r) for r in records), reverse=True)
    assert sorted((patient_priority(r) for r in records if r["patient_id"] in linked), reverse=True) == prios[:4]
    assert "case003" in linked  # the error patient
    n_pictures = 0
    for page in pages:
        p = _parse(page)
        _check_resolvable(page, p)
        page_text = " ".join(p.text)
        assert "legend" in p.ids and "Modalities" in page_text
        n_pictures += len(p.images)
    assert n_pictures > 0
    # pictures were kept in memory for at most max_patient_pages patients
    assert 0 < sum("_pictures" in r for r in records) <= 4


def test_patient_page_images_states_steps_and_fields(report):
    out, writer = report
    rec = next(r for r in writer.records if "_pictures" in r and r["rejected"])
    page = next((out / "dymo_report_files" / "patients").glob(f"*_{rec['patient_id']}.html"))
    p = _parse(page)
    text = " ".join(p.text)
    # 3D modalities: three mid planes each; the 2D one: one picture; clinical vector: none
    for m in ("t1", "flair"):
        assert sum(f"_{m}_" in s for s in p.images) == 3
    assert sum("_xray_" in s for s in p.images) == 1 and not any("_labs_" in s for s in p.images)
    assert "recovered image (generated)" in text and "Quality and ICS along the steps" in text
    assert "Rewards at each step" in text
    for m in NAMES:
        if m not in rec["observed"]:
            assert rec["reasons"][m] in text  # why it was missing
    if rec["missing_fields"]["labs"]:  # what the table held in each missing field
        assert rec["field_notes"]["labs"] in text and "blank" in text


def test_rejected_modality_reason_and_reward_in_csv_json_html(report):
    out, writer = report
    rec = next(r for r in writer.records if r["rejected"])
    rej = rec["rejected"][0]
    m, reward, step = rej["modality"], rej["reward"], rej["step"]
    assert reward < 0
    with open(out / "dymo_report.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["patient_id"] == rec["patient_id"])
    assert row[f"{m}_status"] == "rejected"
    assert float(row[f"{m}_reward"]) == pytest.approx(reward, rel=1e-5)
    assert f"rejected at step {step}" in row[f"{m}_decision"] and "< 0" in row[f"{m}_decision"]
    assert row[f"{m}_rewards"].split(";")[-1] == format(reward, ".6g")
    assert row[f"{m}_reason"] == rec["reasons"][m]  # why it was missing, kept apart from why it was rejected

    back = {r["patient_id"]: r for r in json.loads((out / "dymo_report.json").read_text())["patients"]}[rec["patient_id"]]
    d = back["decisions"][m]
    assert d["status"] == "rejected" and d["reward"] == pytest.approx(reward) and "rejected at step" in d["why"]
    assert back["rewards"][m][-1] == pytest.approx(reward)

    html_pages = list((out / "dymo_report_files" / "patients").glob(f"*_{rec['patient_id']}.html"))
    assert html_pages, "a patient with a rejection gets a page (priority)"
    text = " ".join(_parse(html_pages[0]).text)
    assert f"{reward:+.4g}" in text and f"rejected at step {step}" in text
    assert f"{reward:+.3g}" in " ".join(_parse(out / "dymo_report.html").text)  # cohort table cell


def test_csv_pandas_round_trip_fields_and_dictionary(report):
    out, writer = report
    df = pd.read_csv(out / "dymo_report.csv")
    list_cols = ["observed", "recovered", "selected", "accepted", "rejected", "unused", "labs_missing_fields",
                 *(f"{m}_rewards" for m in NAMES)]
    for c in list_cols:
        assert not df[c].isna().any(), f"list column {c} reads back NaN"
    back = read_report_csv(out / "dymo_report.csv")
    for rec, (_, row) in zip(writer.records, back.iterrows()):
        assert row["observed"] == rec["observed"] and row["unused"] == rec["unused"]
        assert row["accepted"] == [a["modality"] for a in rec["accepted"]]
        if rec["error"] is None:
            assert row["labs_missing_fields"] == rec["missing_fields"]["labs"]
    # the field-level gaps: a present clinical group with a sentinel / blank field names them
    gap = next(r for r in writer.records if "labs" in r["observed"] and r["missing_fields"]["labs"])
    assert gap["missing_fields"]["labs"] == ["crp", "wbc"] and gap["num_fields"]["labs"] == 3
    row = df[df.patient_id == gap["patient_id"]].iloc[0]
    assert row["labs_status"] == "observed" and row["labs_missing_fields"] == "crp;wbc"
    assert row["labs_num_missing_fields"] == 2
    # a sentinel told apart from a blank cell, in the CSV, the JSON and the patient page
    assert row["labs_missing_values"] == "crp = -999, wbc = blank"
    back = {r["patient_id"]: r for r in json.loads((out / "dymo_report.json").read_text())["patients"]}
    assert back[gap["patient_id"]]["field_notes"] == {"labs": "crp = -999, wbc = blank"}
    complete = next(r for r in writer.records if "labs" in r["observed"] and not r["missing_fields"]["labs"])
    assert df[df.patient_id == complete["patient_id"]].iloc[0]["labs_missing_values"] != "crp = -999, wbc = blank"
    for page in (out / "dymo_report_files" / "patients").glob(f"*_{gap['patient_id']}.html"):
        assert "crp = -999, wbc = blank" in " ".join(_parse(page).text)
    # data dictionary: every CSV column described
    dictionary = pd.read_csv(out / "dymo_report_columns.csv")
    described = set(dictionary[dictionary.file == "csv"].column)
    assert set(df.columns) == described
    assert dictionary.description.str.len().min() > 10


def test_pictures_and_field_gaps_from_batched_output(model, tmp_path):
    writer = _run(model, tmp_path, decollate=False, html=False, plot=False, max_patient_pages=20)
    with_pictures = [r for r in writer.records if "_pictures" in r]
    assert len(with_pictures) == sum(r["error"] is None for r in writer.records)  # all fit under the cap
    assert [p for p, _ in with_pictures[0]["_pictures"]["t1"]] == ["axial", "coronal", "sagittal"]
    assert all(r["missing_fields"]["labs"] in ([], ["crp", "wbc"], LAB_FIELDS) for r in writer.records)
    notes = {tuple(r["missing_fields"]["labs"]): r["field_notes"]["labs"] for r in writer.records if not r["error"]}
    assert notes[("crp", "wbc")] == "crp = -999, wbc = blank" and notes[()] == ""
    assert "_pictures" not in (tmp_path / "dymo_report.json").read_text()


def test_no_image_metadata_in_reports(report):
    out, _ = report
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".csv", ".json"):
            content = path.read_text(encoding="utf-8")
            for secret in SECRET:
                assert secret not in content, f"{secret} leaked into {path.name}"


def test_pseudonymised_ids(model, tmp_path):
    w1 = _run(model, tmp_path / "a", keep_inputs=False, pseudonymize_key="secret-1", max_patient_pages=3)
    _run(model, tmp_path / "b", keep_inputs=False, pseudonymize_key="secret-1", html=False, plot=False)
    _run(model, tmp_path / "c", keep_inputs=False, pseudonymize_key="another key", html=False, plot=False)
    raw = [r["patient_id"] for r in w1.records]
    ids = [pd.read_csv(tmp_path / d / "dymo_report.csv").patient_id.astype(str).tolist() for d in "abc"]
    assert ids[0] == ids[1]  # stable for one key
    assert ids[0] == [pseudonymize_id(p, "secret-1") for p in raw]
    assert all(a != b for a, b in zip(ids[0], raw)) and all(a != b for a, b in zip(ids[0], ids[2]))
    assert len(set(ids[0])) == len(raw) and all(len(i) == 16 for i in ids[0])
    for path in (tmp_path / "a").rglob("*"):  # raw ids appear nowhere: not in reasons, paths or page names
        assert not any(p in path.name for p in raw)
        if path.is_file() and path.suffix in (".html", ".csv", ".json"):
            content = path.read_text(encoding="utf-8")
            assert not any(p in content for p in raw), path.name
    assert "t1.nii.gz" in (tmp_path / "a" / "dymo_report.csv").read_text()  # file names kept, folders dropped
    with pytest.raises(ValueError, match="empty"):
        SelectionReportWriter(pseudonymize_key="")


def test_image_planes_shapes_and_downsampling():
    planes = image_planes(torch.randn(1, 20, 30, 40), max_size=16)
    assert [p for p, _ in planes] == ["axial", "coronal", "sagittal"]
    shapes = {p: a.shape for p, a in planes}
    assert shapes["axial"] == (16, 11) and shapes["coronal"] == (16, 8) and shapes["sagittal"] == (16, 12)
    assert all(a.dtype == np.uint8 for _, a in planes)
    rgb = image_planes(torch.rand(3, 8, 6))
    assert rgb[0][0] == "image" and rgb[0][1].shape == (8, 6, 3)
    assert image_planes(torch.rand(4, 8, 6))[0][1].shape == (8, 6)  # channel 0
    assert image_planes(torch.randn(5)) is None and image_planes(torch.full((1, 4, 4), float("nan")))[0][1].max() == 0
    vol = torch.zeros(1, 4, 4, 4)
    vol[0, 3, 1, 2] = 1.0  # x=3, y=1, in the mid axial slice z=2: row 4-1-y (anterior up), column 4-1-x (radiological)
    axial = dict(image_planes(vol))["axial"]
    assert axial[2, 0] == 255 and int(axial.sum()) == 255
    # (nearly) constant pictures: no rounding noise stretched to full contrast
    flat = image_planes(torch.full((3, 9, 10), 0.3), max_size=8)[0][1]
    assert flat.shape == (7, 8, 3) and (flat == 128).all()
    assert (image_planes(torch.zeros(1, 5, 5))[0][1] == 0).all()


def test_html_without_pictures_scales_to_table_rows(tmp_path):
    rec = {"patient_id": "x<1>", "observed": ["a"], "recovered": ["b", "c"], "selected": ["a", "b"],
           "accepted": [{"modality": "b", "step": 1, "reward": 0.02}],
           "rejected": [{"modality": "c", "step": 2, "reward": -0.01}], "unused": [],
           "quality": 0.9, "log_ics": -1.0, "ics": 0.37, "prediction": 1, "probability": 0.8, "steps": 1,
           "reasons": {"a": "observed", "b": "absent", "c": "absent"}, "error": None,
           "rewards": {"b": [0.01, 0.02], "c": [0.03, 0.01, -0.01]},
           "trajectory": [{"step": 0, "added": None, "quality": 0.8, "log_ics": -1.2, "ics": 0.3}]}
    records = [dict(rec, patient_id=f"p{i}") for i in range(30)] + [rec]
    path = write_report_html(records, tmp_path / "r.html", max_patient_pages=2, table_rows_per_page=10)
    parsed = _parse(Path(path))
    assert len(list((tmp_path / "r_files" / "patients").glob("*.html"))) == 2
    _check_resolvable(Path(path), parsed)
    # a big cohort: the cohort page holds the first 10 table rows, linked pages the others; every patient named once
    tables = sorted((tmp_path / "r_files" / "table").glob("rows_*.html"))
    assert [t.name for t in tables] == ["rows_0002.html", "rows_0003.html", "rows_0004.html"]
    named = []
    for page in [Path(path), *tables]:
        p = _parse(page)
        _check_resolvable(page, p)
        named += [t for t in p.text if t in {r["patient_id"] for r in records}]
    assert sorted(set(named)) == sorted(r["patient_id"] for r in records)
    assert "p15" not in " ".join(parsed.text) and any("p15" in t.read_text() for t in tables)
    assert "x<1>" in " ".join(_parse(tables[-1]).text)  # escaped in the HTML, read back as text
    d = modality_decision(rec, "c")
    assert d["status"] == "rejected" and d["step"] == 2 and d["reward"] == -0.01
    assert "step 0: reward +0.03, positive but not the best" not in d["why"]  # step 0 accepted nobody in this record
    assert "step 1: reward +0.01, positive but not the best candidate (b +0.02 was accepted)" in d["why"]
    # an unused recovery says why in the terms of the margin in force
    unused = dict(rec, rejected=[], unused=["c"], margin="inf")
    assert "the margin in force is inf" in modality_decision(unused, "c")["why"]
    assert "(not > the margin 0.1)" in modality_decision(dict(unused, margin=0.1), "c")["why"]
    assert "(not > 0)" in modality_decision(dict(unused, margin=0), "c")["why"]
    assert accuracy_split([dict(rec, label=1), dict(rec, label=0, accepted=[]), dict(rec, error="x")]) == [
        ("all", 1, 2), ("accepted something", 1, 1), ("observed only", 0, 1)
    ]


def test_3d_pictures_in_radiological_orientation():
    """RAS volume [C, X, Y, Z] (X to the patient's right, Y anterior, Z superior): the patient's right on the picture's
    left in the axial and coronal planes, anterior up (axial), superior up (coronal, sagittal), anterior on the left
    (sagittal)."""
    n = 8
    vol = torch.zeros(1, n, n, n)
    c = n // 2
    vol[0, n - 1, 6, c] = 1.0  # axial slice z=c: far right (x max), anterior (y=6)
    vol[0, n - 1, c, 7] = 2.0  # coronal slice y=c: far right, top of the head (z max)
    vol[0, c, 7, 1] = 3.0  # sagittal slice x=c: nose (y max), low (z=1)
    planes = dict(image_planes(vol, max_size=n))
    rows, cols = np.nonzero(planes["axial"])
    assert (rows.tolist(), cols.tolist()) == ([n - 1 - 6], [0])  # right -> left column, anterior -> upper half
    rows, cols = np.nonzero(planes["coronal"])
    assert (rows.tolist(), cols.tolist()) == ([0], [0])  # superior -> top row, right -> left column
    rows, cols = np.nonzero(planes["sagittal"])
    assert (rows.tolist(), cols.tolist()) == ([n - 1 - 1], [0])  # anterior -> left column, inferior -> bottom


def test_2d_picture_has_the_source_png_orientation(tmp_path):
    """A PNG read by MONAI's LoadImage ([C, x, y], x = the file's columns) is drawn as the file shows it."""
    from PIL import Image

    from monai.transforms import LoadImage

    from monai_dymo.report import save_picture

    src = np.zeros((12, 20), dtype=np.uint8)  # 12 rows, 20 columns: a wide picture
    src[1:4, 2:15] = 255  # a bar in the upper left
    src[9:11, 17:19] = 128
    Image.fromarray(src).save(tmp_path / "src.png")
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "src.png"))
    assert tuple(loaded.shape) == (1, 20, 12)  # MONAI's order: x (columns) first
    ((_, drawn),) = image_planes(loaded, max_size=64, image2d_xy=True)
    back = np.asarray(Image.open(save_picture(drawn, tmp_path / "drawn.png")).convert("L"))
    assert back.shape == src.shape
    np.testing.assert_array_equal(back > 200, src > 200)
    np.testing.assert_array_equal((back > 50) & (back < 200), src == 128)
    # without image2d_xy the same tensor comes out transposed (the behaviour this fixes)
    ((_, raw),) = image_planes(loaded, max_size=64)
    assert raw.shape == src.shape[::-1]


def test_pages_come_from_shipped_templates_and_a_site_can_restyle(tmp_path):
    """The shipped Jinja2 templates render the pages; a site's folder replaces any of them (here the style sheet and
    the cohort page's heading) without code."""
    import tomllib

    from monai_dymo.report import TEMPLATE_DIR

    shipped = sorted(p.name for p in Path(TEMPLATE_DIR).iterdir())
    assert {"base.html.j2", "cohort.html.j2", "patient.html.j2", "table_page.html.j2", "report.css"} <= set(shipped)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["monai_dymo"]
    assert "report/templates/*.j2" in data and "report/templates/*.css" in data
    assert any(d.startswith("jinja2") for d in pyproject["project"]["dependencies"])
    rec = {"patient_id": "<p1>", "observed": ["a"], "recovered": [], "selected": ["a"], "accepted": [],
           "rejected": [], "unused": [], "prediction": 1, "label": 1, "label_name": "tumour & co",
           "prediction_name": "tumour & co", "reasons": {"a": "observed"}, "error": None}
    default = write_report_html([rec], tmp_path / "default" / "r.html")
    text = Path(default).read_text()
    assert Path(TEMPLATE_DIR, "report.css").read_text().strip()[:40] in text
    assert "&lt;p1&gt;" in text and "tumour &amp; co" in text and "<p1>" not in text  # autoescaped
    site = tmp_path / "site"
    site.mkdir()
    (site / "report.css").write_text("body{background:#fffbe6}")
    cohort = Path(TEMPLATE_DIR, "cohort.html.j2").read_text()
    (site / "cohort.html.j2").write_text(cohort.replace("<h1>DyMo modality selection report</h1>",
                                                        "<h1>St Elsewhere radiology: DyMo report</h1>"))
    styled = Path(write_report_html([rec], tmp_path / "styled" / "r.html", template_dir=site)).read_text()
    assert "body{background:#fffbe6}" in styled and "St Elsewhere radiology" in styled
    page = next((tmp_path / "styled" / "r_files" / "patients").glob("*.html")).read_text()
    assert "body{background:#fffbe6}" in page and "Patient &lt;p1&gt;" in page  # shipped page, site's style
    with pytest.raises(FileNotFoundError, match="template folder"):
        write_report_html([rec], tmp_path / "x.html", template_dir=tmp_path / "nope")


def test_patient_table_caption_matches_row_order(report):
    out, writer = report
    text = " ".join(_parse(out / "dymo_report.html").text)
    assert "Rows in datalist order" in text
    ids = [t for t in _parse(out / "dymo_report.html").text if t in {r["patient_id"] for r in writer.records}]
    table_ids = ids[-len(writer.records):]
    assert table_ids == [r["patient_id"] for r in writer.records]
