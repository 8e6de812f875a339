"""Tests of the selection reports (CSV / JSON / plot), SelectionReportWriter and DyMoEvaluator end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.metrics import Accuracy

from monai.data import DataLoader
from monai.handlers import from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_dymo.calibration import fit_calibration
from monai_dymo.engines.evaluator import DyMoEvaluator, PrepareDyMoEvalBatch
from monai_dymo.handlers import SelectionReportWriter
from monai_dymo.report import (
    ReportOptions,
    modality_status,
    plot_selection_summary,
    read_report,
    report_modalities,
    report_summary,
    summary_line,
    write_report,
    write_report_csv,
    write_report_json,
)
from monai_dymo.inferers import NO_MODALITY_ERROR, DyMoInferer

NAMES = ("t1", "t2", "flair", "adc")
C = 2


class ToyNet(nn.Module):
    def __init__(self, names=NAMES, in_dim=3, d=8, proj_dim=4, num_classes=C):
        super().__init__()
        self.modalities = tuple(names)
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.enc = nn.ModuleDict({n: nn.Linear(in_dim, 2 * d) for n in names})
        self.d = d
        self.head = nn.Linear(d, num_classes)
        self.proj = nn.Linear(d, proj_dim)

    def encode(self, inputs):
        return {n: self.enc[n](inputs[n]).reshape(-1, 2, self.d) for n in self.modalities}

    def fuse(self, tokens, subset):
        w = subset.float()
        h = torch.tanh(sum(tokens[n].mean(1) * w[:, i : i + 1] for i, n in enumerate(self.modalities)))
        return self.head(h), F.normalize(self.proj(h), dim=-1)

    def forward(self, inputs, subset):
        return self.fuse(self.encode(inputs), subset)


def _samples(n=22, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        present = torch.rand(len(NAMES), generator=g) > 0.6
        present[int(torch.randint(0, len(NAMES), (1,), generator=g))] = True
        if i == 5:
            present[:] = False  # a patient with nothing observed
        sample = {m: torch.randn(3, generator=g) if present[j] else torch.zeros(3) for j, m in enumerate(NAMES)}
        sample["present"] = present
        sample["modality_reasons"] = {
            m: "observed" if present[j] else f"file not found: /data/case{i}/{m}.nii.gz" for j, m in enumerate(NAMES)
        }
        sample["patient_id"] = f"case{i:03d}"
        sample["label"] = i % C
        out.append(sample)
    return out


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = ToyNet().eval()
    g = torch.Generator().manual_seed(1)
    train = [{**{m: torch.randn(16, 3, generator=g) for m in NAMES}, "label": torch.arange(16) % C} for _ in range(2)]
    calib = fit_calibration(net.encode, net.fuse, train, modalities=NAMES, num_classes=C, progress=False)
    return net, calib


def _records(setup):
    net, calib = setup
    samples = _samples(8)
    x = {m: torch.stack([s[m] for s in samples]) for m in NAMES}
    present = torch.stack([s["present"] for s in samples])
    inferer = DyMoInferer(calib)
    inferer(x, net, present=present)
    records = inferer.last_records(
        patient_ids=[s["patient_id"] for s in samples], reasons=[s["modality_reasons"] for s in samples]
    )
    for s, r in zip(samples, records):
        r["label"] = s["label"]
    return records


def test_write_report_csv_rows_and_columns(setup, tmp_path):
    records = _records(setup)
    path = write_report_csv(records, tmp_path / "sub" / "report.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 8
    cols = list(rows[0])
    for c in ["patient_id", "label", "prediction", "probability", "correct", "quality", "ics", "log_ics", "steps",
              "observed", "recovered", "selected", "accepted", "rejected", "error"]:
        assert c in cols
    assert [c for c in cols if c.endswith("_status")] == [f"{m}_status" for m in NAMES]
    for row, rec in zip(rows, records):
        assert row["patient_id"] == rec["patient_id"]
        assert row["observed"] == (";".join(rec["observed"]) or "none")
        assert row["accepted"] == (";".join(a["modality"] for a in rec["accepted"]) or "none")
        for m in NAMES:
            assert row[f"{m}_status"] == modality_status(rec, m)
            assert row[f"{m}_reason"] == rec["reasons"][m]
        if rec["error"] is None:
            assert int(row["prediction"]) == rec["prediction"]
            assert float(row["quality"]) == pytest.approx(rec["quality"])
            assert row["correct"] == str(int(rec["prediction"] == rec["label"]))
    err = rows[5]
    assert err["error"] == NO_MODALITY_ERROR and err["prediction"] == "" and err["correct"] == ""
    assert all(err[f"{m}_status"] == "missing" for m in NAMES)
    statuses = {rows[i][f"{m}_status"] for i in range(8) if i != 5 for m in NAMES}
    assert "observed" in statuses and statuses <= {"observed", "accepted", "rejected", "unused"}


def test_write_report_json_and_plot(setup, tmp_path):
    records = _records(setup)
    records[0] = {**records[0], "quality": float("nan")}  # non-finite values become null
    path = write_report_json(records, tmp_path / "r.json")
    doc = json.loads(open(path).read())
    assert set(doc) == {"summary", "patients"}
    back = doc["patients"]
    assert len(back) == 8 and back[0]["quality"] is None
    assert {k: v for k, v in back[3].items() if k != "decisions"} == records[3]
    assert set(back[3]["decisions"]) == set(NAMES)
    assert report_modalities(records) == list(NAMES)
    png = plot_selection_summary(records, None, tmp_path / "summary.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _evaluator(setup, tmp_path, decollate=True, postprocessing=None, batch_size=5, **kwargs):
    net, calib = setup
    loader = DataLoader(_samples(), batch_size=batch_size, shuffle=False, num_workers=0)
    writer = SelectionReportWriter(output_dir=tmp_path, progress=False)
    evaluator = DyMoEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        inferer=DyMoInferer(calib),
        key_val_metric={"acc": Accuracy(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[writer],
        decollate=decollate,
        postprocessing=postprocessing,
        **kwargs,
    )
    return evaluator, writer


def _expected(setup):
    net, calib = setup
    samples = _samples()
    x = {m: torch.stack([s[m] for s in samples]) for m in NAMES}
    present = torch.stack([s["present"] for s in samples])
    inferer = DyMoInferer(calib)
    logits = inferer(x, net, present=present)
    labels = torch.tensor([s["label"] for s in samples])
    return logits, labels, inferer.last_records()


@pytest.mark.parametrize("decollate", [True, False])
def test_evaluator_end_to_end(setup, tmp_path, decollate):
    evaluator, writer = _evaluator(setup, tmp_path, decollate=decollate)
    evaluator.run()
    logits, labels, expected = _expected(setup)
    # ignite's Accuracy: argmax of the logits (a NaN row counts as class 0)
    pred = torch.nan_to_num(logits, nan=0.0).argmax(1)
    pred[torch.isnan(logits).any(1)] = 0
    assert evaluator.state.metrics["acc"] == pytest.approx((pred == labels).float().mean().item())

    with open(tmp_path / "dymo_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient_id"] for r in rows] == [f"case{i:03d}" for i in range(22)]
    assert rows[5]["error"] == NO_MODALITY_ERROR
    assert [int(r["label"]) for r in rows] == labels.tolist()
    for row, rec in zip(rows, expected):
        assert row["selected"] == (";".join(rec["selected"]) or "none")
        if rec["error"] is None:
            assert int(row["prediction"]) == rec["prediction"]
            assert float(row["log_ics"]) == pytest.approx(rec["log_ics"], rel=1e-6)
    assert rows[0]["t2_reason"] in ("observed", "file not found: /data/case0/t2.nii.gz")
    records = json.loads((tmp_path / "dymo_report.json").read_text())["patients"]
    assert len(records) == 22 and records[5]["error"] == NO_MODALITY_ERROR and records[5]["label"] == 1
    assert (tmp_path / "dymo_summary.png").exists()
    assert len(writer.records) == 22

    out = evaluator.state.output
    if decollate:
        assert isinstance(out, list) and len(out) == 2  # last batch of 22 with batch size 5
        assert isinstance(out[0]["dymo_selection"], dict) and out[0]["dymo_selection"]["patient_id"] == "case020"
        assert out[0]["patient_id"] == "case020"
    else:
        assert isinstance(out, dict) and out["pred"].shape == (2, C) and len(out["dymo_selection"]) == 2


def test_evaluator_progress_bar(setup, tmp_path, capsys):
    evaluator, _ = _evaluator(setup, tmp_path, progress=True)
    assert evaluator.progress_bar is not None
    evaluator.run()
    err = capsys.readouterr().err
    assert "DyMo evaluation" in err and f"/{len(evaluator.data_loader)}]" in err  # iterations of the epoch
    quiet, _ = _evaluator(setup, tmp_path / "quiet")  # default: only when stderr is a terminal (not under pytest)
    assert quiet.progress_bar is None
    quiet.run()
    assert "DyMo evaluation" not in capsys.readouterr().err


def test_evaluator_with_postprocessing(setup, tmp_path):
    post = Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True, to_onehot=C)])
    evaluator, writer = _evaluator(setup, tmp_path, postprocessing=post)
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (C,)
    assert len(writer.records) == 22 and writer.paths["csv"].endswith("dymo_report.csv")


def test_prepare_batch_and_bad_inputs(setup):
    net, calib = setup
    batch = DataLoader(_samples(4), batch_size=4)
    data = next(iter(batch))
    inputs, label, args, kwargs = PrepareDyMoEvalBatch(NAMES)(data, "cpu")
    assert set(inputs) == set(NAMES) and label.tolist() == [0, 1, 0, 1] and kwargs["present"].shape == (4, 4)
    with pytest.raises(ValueError, match="adc"):
        PrepareDyMoEvalBatch(NAMES)({k: v for k, v in data.items() if k != "adc"})
    with pytest.raises(ValueError, match="DyMoInferer"):
        DyMoEvaluator(device="cpu", val_data_loader=batch, network=net, inferer=None)
    writer = SelectionReportWriter()
    with pytest.raises(ValueError, match="dymo_selection"):
        writer.collect({"pred": torch.zeros(2, 2)})
    recs = writer.collect({"dymo_selection": [{"patient_id": "a"}, {"patient_id": "b"}], "label": torch.tensor([1, 0])})
    assert [r["label"] for r in recs] == [1, 0]
    recs = writer.collect([{"dymo_selection": {"patient_id": "a"}, "label": torch.tensor([0.0, 1.0])}])
    assert recs[0]["label"] == 1  # one-hot label -> class index


def test_report_without_labels_or_reasons(tmp_path):
    rec = {"patient_id": "x", "observed": ["a"], "recovered": ["b"], "selected": ["a", "b"],
           "accepted": [{"modality": "b", "step": 0, "reward": 0.1}], "rejected": [], "unused": [],
           "quality": 0.9, "log_ics": -1.0, "ics": math.exp(-1.0), "prediction": 1, "probability": 0.8,
           "steps": 1, "reasons": {}, "error": None}
    path = write_report_csv([rec], tmp_path / "r.csv")
    row = next(csv.DictReader(open(path, newline="")))
    assert row["label"] == "" and row["correct"] == "" and row["a_status"] == "observed"
    assert row["b_status"] == "accepted" and row["b_reason"] == ""


def test_class_names_beside_indices_in_csv_json_and_html(setup, tmp_path, capsys):
    """The cohort's class names in every place a label or a prediction is shown; the three files agree."""
    import pandas as pd
    from html.parser import HTMLParser

    classes = ["glioma", "meningioma"]
    evaluator, writer = _evaluator(setup, tmp_path)
    writer.options.class_names = classes
    evaluator.run()
    df = pd.read_csv(tmp_path / "dymo_report.csv", keep_default_na=False)
    cols = list(df.columns)
    assert cols[cols.index("label") + 1] == "label_name" and cols[cols.index("prediction") + 1] == "prediction_name"
    for _, row in df.iterrows():
        assert row["label_name"] == classes[int(row["label"])]
        if row["error"]:
            assert row["prediction_name"] == "" and row["prediction"] == ""
        else:
            assert row["prediction_name"] == classes[int(row["prediction"])]
    doc = read_report(tmp_path / "dymo_report.json")
    for rec, (_, row) in zip(doc["patients"], df.iterrows()):
        assert rec["label_name"] == row["label_name"] and (rec["prediction_name"] or "") == row["prediction_name"]

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self._row, self._in = [], None, False

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self._row = []
            elif tag == "td" and self._row is not None:
                self._row.append("")
                self._in = True

        def handle_endtag(self, tag):
            if tag == "td":
                self._in = False
            elif tag == "tr" and self._row:
                self.rows.append(self._row)
                self._row = None

        def handle_data(self, data):
            if self._in and self._row:
                self._row[-1] += data

    parser = Cells()
    parser.feed((tmp_path / "dymo_report.html").read_text())
    table = {r[0]: r for r in parser.rows if r and r[0].startswith("case")}
    assert len(table) == len(df)
    for _, row in df.iterrows():
        cells = table[row["patient_id"]]
        assert cells[1] == row["label_name"] and cells[2] == row["prediction_name"]  # names, not indices
    # the summary: JSON block, HTML card and printed line carry the same accuracy
    s = doc["summary"]
    labelled = df[df["correct"] != ""]
    assert s["labelled"] == len(labelled) and s["correct"] == int(labelled["correct"].astype(int).sum())
    assert s["accuracy"] == round(100.0 * s["correct"] / s["labelled"], 2)
    assert f"{s['accuracy']:.1f}%" in (tmp_path / "dymo_report.html").read_text()
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == summary_line(s, str(tmp_path / "dymo_report.html"))
    assert f"accuracy {s['accuracy']:.2f} %" in out[-1]


def test_summary_block_counts_and_extra_blocks(setup, tmp_path):
    records = _records(setup)
    s = report_summary(records, NAMES)
    assert s["patients"] == 8 and s["errors"] == sum(r["error"] is not None for r in records)
    for m in NAMES:
        statuses = [modality_status(r, m) for r in records]
        c = s["modalities"][m]
        assert c["observed"] == statuses.count("observed") and c["accepted"] == statuses.count("accepted")
        assert c["rejected"] == statuses.count("rejected") and c["missing"] == statuses.count("missing")
        assert c["recovered"] == c["accepted"] + c["rejected"] + c["unused"]
        assert sum(c[k] for k in ("observed", "recovered", "missing")) == 8
    # other code adds its own blocks (e.g. a referral summary) without touching this function
    extra = {"refer": {"patients": 2}}
    assert report_summary(records, NAMES, extra=extra)["refer"] == {"patients": 2}
    with pytest.raises(ValueError, match="accuracy"):
        report_summary(records, NAMES, extra={"accuracy": 1.0})
    writer = SelectionReportWriter(output_dir=tmp_path, progress=False, html=False, plot=False,
                                   summary_extra=lambda recs: {"single_modality": {"n": len(recs)}})
    writer.write(records)
    assert read_report(tmp_path / "dymo_report.json")["summary"]["single_modality"] == {"n": 8}
    # no labels: no accuracy, and the line says so
    unlabelled = [{k: v for k, v in r.items() if k != "label"} for r in records]
    s = report_summary(unlabelled, NAMES)
    assert s["accuracy"] is None and s["labelled"] == 0 and "no labels" in summary_line(s)


def test_read_report_reads_old_bare_list_files(setup, tmp_path):
    records = _records(setup)
    path = write_report_json(records, tmp_path / "new.json")
    new = read_report(path)
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(new["patients"]))  # the format before the summary block
    old = read_report(old_path)
    assert old["patients"] == new["patients"] and old["summary"] == new["summary"]
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a DyMo JSON report"):
        read_report(tmp_path / "bad.json")


def test_region_of_interest_column_says_where_the_volumes_were_read(tmp_path):
    writer = SelectionReportWriter()
    records = {"dymo_selection": [{"patient_id": "a"}, {"patient_id": "b"}, {"patient_id": "c"}]}
    recs = writer.collect(records, batch={"roi_guide": ["flair", "foreground", "t1c"]})
    assert [r["roi_guide"] for r in recs] == ["flair", "foreground", "t1c"]
    assert [r.get("roi_guide") for r in writer.collect(records, batch={})] == [None, None, None]
    base = {"observed": ["a"], "recovered": [], "selected": ["a"], "accepted": [], "rejected": [], "unused": [],
            "quality": 0.9, "log_ics": -1.0, "ics": math.exp(-1.0), "prediction": 1, "probability": 0.8, "steps": 0,
            "reasons": {}, "error": None}
    rows = [{**base, "patient_id": "p1", "roi_guide": "flair"}, {**base, "patient_id": "p2", "roi_guide": "foreground"},
            {**base, "patient_id": "p3"}]
    path = write_report_csv(rows, tmp_path / "r.csv")
    text = [r["region_of_interest"] for r in csv.DictReader(open(path, newline=""))]
    assert text[0] == "around the lesion found in flair"
    assert text[1].startswith("centre of the scanned volume") and "not located" in text[1] and text[2] == ""


def test_write_report_without_ignite_matches_the_handler(setup, tmp_path):
    """The function-level API writes what the handler writes; options come as a ReportOptions or as keywords."""
    records = _records(setup)
    options = ReportOptions(prefix="r", html=False, class_names=["a", "b"], progress=False)
    written = write_report(records, tmp_path / "fn", NAMES, options, plot=False)
    assert sorted(written.paths) == ["columns", "csv", "json", "trust"] and written.summary["patients"] == 8
    writer = SelectionReportWriter(tmp_path / "handler", modalities=NAMES, options=options, plot=False)
    assert writer.write(records) == {k: p.replace(str(tmp_path / "fn"), str(tmp_path / "handler"))
                                     for k, p in written.paths.items()}
    assert writer.summary == written.summary
    for name in ("r.csv", "r_columns.csv", "r_trust.json"):
        assert (tmp_path / "fn" / name).read_text() == (tmp_path / "handler" / name).read_text()
    assert read_report(tmp_path / "fn" / "r.json")["patients"][0]["label_name"] in ("a", "b")
    with pytest.raises(ValueError, match="max_patient_pages"):
        ReportOptions(max_patient_pages=-1)
    with pytest.raises(TypeError):
        SelectionReportWriter(no_such_option=1)
