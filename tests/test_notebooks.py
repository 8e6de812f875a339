"""Execute the tutorial notebooks (CI sizes) with nbclient and check the files they write.

Each notebook reads ``MONAI_DYMO_CI=1`` in its parameters cell (smaller data / fewer epochs) and writes everything
under ``MONAI_DYMO_NOTEBOOK_OUT`` (here a pytest temporary folder), so the repository stays untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = "01_polymnist_dymo_quickstart.ipynb"
BRAIN_MRI = "02_brain_mri_missing_modalities.ipynb"
OWN_COHORT = "03_dymo_on_your_own_cohort.ipynb"
SEQS = ["t1", "t1c", "t2", "flair"]
POLY = ["m0", "m1", "m2", "m3", "m4"]
LIST_COLUMNS = ["observed", "recovered", "selected", "accepted", "rejected", "unused", "error"]
STATUSES = {"observed", "accepted", "rejected", "unused", "missing"}

nbformat = pytest.importorskip("nbformat")


def _names(cell: str) -> list[str]:
    return [] if cell == "none" else [n for n in cell.split(";") if n]  # the report writes "none" for an empty list


def _read_report(path: Path, modalities: list[str]) -> pd.DataFrame:
    text = LIST_COLUMNS + [f"{m}_reason" for m in modalities] + [f"{m}_status" for m in modalities]
    report = pd.read_csv(path, dtype={c: str for c in text})
    report[text] = report[text].fillna("")
    return report


def _execute(name: str, out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Run notebook ``name`` from the notebooks folder with CI parameters; return the executed notebook."""
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel installed (pip install ipykernel)")
    monkeypatch.setenv("MONAI_DYMO_CI", "1")
    monkeypatch.setenv("MONAI_DYMO_NOTEBOOK_OUT", str(out_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    before = sorted(p.relative_to(NOTEBOOKS) for p in NOTEBOOKS.rglob("*"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    after = sorted(p.relative_to(NOTEBOOKS) for p in NOTEBOOKS.rglob("*"))
    assert after == before, f"the notebook wrote into {NOTEBOOKS}: {sorted(set(after) - set(before))}"
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind in o.get("data", {})]


@pytest.mark.parametrize("name", [QUICKSTART, BRAIN_MRI, OWN_COHORT])
def test_notebooks_are_committed_clean(name):
    """No outputs in the repository, and a parameters cell that honours MONAI_DYMO_CI."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs; clear them"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0] and "MONAI_DYMO_CI" in params[0].source
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_polymnist_quickstart_notebook(tmp_path, monkeypatch):
    mnist, backgrounds = SHARED / "mnist" / "mnist.npz", SHARED / "polymnist_backgrounds"
    if not mnist.is_file() or not backgrounds.is_dir():
        pytest.skip(f"MNIST / PolyMNIST backgrounds not found at {SHARED}")
    nb = _execute(QUICKSTART, tmp_path, monkeypatch)
    out = tmp_path / "01_polymnist_quickstart"

    info = json.loads((out / "polymnist" / "polymnist_info.json").read_text())
    num_test = info["sizes"]["test"]
    pattern = pd.read_csv(out / "patterns" / "missing_rate0.6_seed0.csv")
    assert len(pattern) == num_test and list(pattern.columns) == ["index", *POLY]

    report = _read_report(out / "polymnist_dymo_report.csv", POLY)
    assert list(report["patient_id"]) == [f"test-{i}" for i in range(num_test)]
    assert (report["error"] == "").all()
    for i, row in report.iterrows():
        observed, recovered = _names(row["observed"]), _names(row["recovered"])
        assert observed == [m for m in POLY if pattern.loc[i, m] == 1]  # the seeded pattern was applied
        assert sorted(observed + recovered) == POLY
        decided = _names(row["accepted"]) + _names(row["rejected"]) + _names(row["unused"])
        assert sorted(decided) == sorted(recovered)
        assert set(_names(row["selected"])) == set(observed) | set(_names(row["accepted"]))
        for m in POLY:
            if m in observed:
                assert row[f"{m}_reason"] == "observed"
            else:
                assert row[f"{m}_reason"].startswith("simulated missing")
            assert row[f"{m}_status"] in STATUSES - {"missing"}
    assert report["prediction"].between(0, 9).all() and report["probability"].between(0.1, 1.0).all()

    accuracy = pd.read_csv(out / "accuracy_summary.csv", index_col=0)["accuracy"]
    assert len(accuracy) == 3 and accuracy.between(0.0, 1.0).all()
    # a briefly trained network is far from good, but must beat chance (10 classes) on this test set
    assert accuracy["DyMo selection"] > 0.15
    assert abs(accuracy["DyMo selection"] - report["correct"].mean()) < 1e-9

    assert (out / "dymo_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(_outputs(nb, "image/png")) >= 2  # dataset preview + selection summary shown inline
    assert len(json.loads((out / "polymnist_dymo_report.json").read_text())["patients"]) == num_test


@pytest.mark.slow
def test_brain_mri_notebook(tmp_path, monkeypatch):
    brain = SHARED / "brain_mri_samples"
    if not brain.is_dir():
        pytest.skip(f"brain MRI samples not found at {brain}")
    nb = _execute(BRAIN_MRI, tmp_path, monkeypatch)
    out = tmp_path / "02_brain_mri"

    status = pd.read_csv(out / "cohort_loading_status.csv", keep_default_na=False).set_index("patient_id")
    assert status.loc["NEW-PATIENT-0005", "error"].startswith("no modality observed")

    report = _read_report(out / "mri_reliability_report.csv", SEQS).set_index("patient_id")
    assert list(report.index) == [
        "BraTS-GLI-00001-000", "AURORA-example", "TCGA-DU-7294", "TCGA-FG-6692", "NEW-PATIENT-0005"
    ]
    # the patient without any image still has a row, with its error and no prediction
    empty = report.loc["NEW-PATIENT-0005"]
    assert empty["error"].startswith("no modality observed")
    assert pd.isna(empty["prediction"]) and _names(empty["observed"]) == _names(empty["recovered"]) == []
    assert all(empty[f"{s}_status"] == "missing" for s in SEQS)
    assert empty["t1_reason"].startswith("absent") and empty["t1c_reason"].startswith("absent")
    assert empty["t2_reason"].startswith("file not found") and empty["flair_reason"].startswith("file not found")

    expected_missing = {
        "BraTS-GLI-00001-000": (None, None),
        "AURORA-example": ("flair", "file not found: "),
        "TCGA-DU-7294": ("t2", "unreadable: "),
        "TCGA-FG-6692": ("t1c", "absent: "),
    }
    for pid, (lost, prefix) in expected_missing.items():
        row = report.loc[pid]
        assert row["error"] == ""
        assert _names(row["observed"]) == [s for s in SEQS if s != lost]
        assert _names(row["recovered"]) == ([lost] if lost else [])
        assert int(row["prediction"]) in (0, 1) and 0.5 <= float(row["probability"]) <= 1.0
        for s in SEQS:
            if s == lost:
                assert row[f"{s}_reason"].startswith(prefix)
                assert row[f"{s}_status"] in {"accepted", "rejected", "unused"}
                assert (_names(row["accepted"]) + _names(row["rejected"]) + _names(row["unused"])) == [s]
            else:
                assert row[f"{s}_reason"] == "observed" and row[f"{s}_status"] == "observed"
    assert "t2.nii.gz" in report.loc["TCGA-DU-7294", "t2_reason"]
    assert int(report.loc["BraTS-GLI-00001-000", "steps"]) == 0

    records = json.loads((out / "mri_reliability_report.json").read_text())["patients"]
    assert [r["patient_id"] for r in records] == list(report.index)
    assert [r["error"] is None for r in records] == [True] * 4 + [False]
    work = Path(records[1]["reasons"]["flair"].split(": ", 1)[1]).parents[1]
    assert not work.exists(), "the notebook must remove its temporary copy of the cohort"

    from monai_dymo.calibration import SubsetCalibration

    calibration = SubsetCalibration.load(out / "calibration.pt")
    assert calibration.modalities == tuple(SEQS) and calibration.num_classes == 2
    for png in ("cohort_mid_slices.png", "mri_selection_summary.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(_outputs(nb, "image/png")) >= 3


@pytest.mark.slow
def test_own_cohort_notebook_runs_every_stage(tmp_path, monkeypatch):
    if not (SHARED / "brain_mri_samples").is_dir():
        pytest.skip(f"brain MRI samples not found at {SHARED / 'brain_mri_samples'}")
    _execute(OWN_COHORT, tmp_path, monkeypatch)
    out = tmp_path / "03_own_cohort"
    models = out / "bundle" / "models" / "my_brain_cohort"
    for name in ("clinical_stats.json", "recovery.pt", "fusion.pt", "calibration.pt"):
        assert (models / name).is_file(), name
    work = out / "bundle" / "runs" / "my_brain_cohort"
    datalist = json.loads((out / "cohort" / "datalist.json").read_text())["testing"]
    report = _read_report(work / "inference_testing" / "dymo_report.csv", [*SEQS, "clinical"])
    assert list(report["patient_id"]) == [e["patient_id"] for e in datalist]
    for entry, (_, row) in zip(datalist, report.iterrows()):
        for s in SEQS:
            if entry[s] is None:
                assert row[f"{s}_reason"].startswith("absent"), (entry["patient_id"], s)
                assert s in _names(row["recovered"])
    summary = json.loads((work / "evaluate_testing" / "summary.json").read_text())
    assert summary["patients"] == len(datalist)
