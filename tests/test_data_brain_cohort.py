"""Synthetic brain MRI + clinical cohort: files and datalist format, determinism, missingness, DICOM geometry, corrupt
files, class and source balance. Generated from the real brains at ../shared/data (skipped when absent), 32^3."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai.transforms import LoadImage, Orientation
from monai_dymo.data.__main__ import main as cli_main
from monai_dymo.data.brain_cohort import (
    CLASSES,
    CLINICAL_FIELDS,
    SEQUENCES,
    cohort_affine,
    generate_brain_cohort,
    iter_cohort_patients,
    plan_missingness,
    write_dicom_series,
)
from monai_dymo.keys import Reason
from monai_dymo.transforms import LoadModality

pytest.importorskip("pydicom")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri_samples"
N, SIZE = 12, 32


def _need_data() -> None:
    if not (DATA / "AURORA-example" / "t1.nii.gz").is_file():
        pytest.skip(f"brain MRI samples not found at {DATA} (the cohort is generated from them)")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    _need_data()
    return generate_brain_cohort(tmp_path_factory.mktemp("cohort") / "c", source_dir=DATA, num_patients=N, size=SIZE,
                                 seed=0)


@pytest.fixture(scope="module")
def manifest(cohort) -> dict:
    return json.loads(cohort["manifest"].read_text())


@pytest.fixture(scope="module")
def datalist(cohort) -> dict:
    return json.loads(cohort["datalist"].read_text())


def _entries(datalist: dict) -> list[dict]:
    return [e for split in ("training", "validation", "testing") for e in datalist[split]]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_datalist_format(cohort, datalist, manifest):
    root = cohort["root"]
    assert set(datalist) == {"training", "validation", "testing"}
    entries = _entries(datalist)
    assert len(entries) == N and len({e["patient_id"] for e in entries}) == N
    for e in entries:
        assert set(e) == {"patient_id", *SEQUENCES, "label"}
        assert isinstance(e["label"], int) and 0 <= e["label"] < len(CLASSES)
        for seq in SEQUENCES:
            if e[seq] is not None:
                assert not Path(e[seq]).is_absolute() and (root / e[seq]).exists(), (e["patient_id"], seq)
    classes = json.loads(cohort["classes"].read_text())
    assert classes["classes"] == list(CLASSES) and classes["modalities"] == list(SEQUENCES)
    with cohort["clinical"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient_id", *CLINICAL_FIELDS]
    # no label column anywhere but the datalist
    assert "label" not in rows[0]
    # a written NIfTI: int16 SIZE^3 with the cohort affine (RAS), loaded by MONAI to the same geometry
    e = next(x for x in entries if x["t2"] is not None and manifest["patients"][int(x["patient_id"][2:]) - 1]
             ["files"]["t2"]["status"] == "nifti")
    img = nib.load(str(root / e["t2"]))
    assert img.shape == (SIZE, SIZE, SIZE) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, cohort_affine(SIZE))
    loaded = LoadImage(image_only=True)(str(root / e["t2"]))
    np.testing.assert_allclose(loaded.affine.numpy(), cohort_affine(SIZE), atol=1e-5)


def test_volumes_match_in_memory_patients(cohort, manifest):
    """The written voxels are the in-memory patients of ``iter_cohort_patients`` (same seed)."""
    root = cohort["root"]
    for pid, label, split, arr, rec in itertools.islice(iter_cohort_patients(N, SIZE, 0, DATA), 4):
        m = manifest["patients"][int(pid[2:]) - 1]
        assert (m["label"], m["split"], m["source"]) == (label, split, rec["source"])
        assert arr.shape == (4, SIZE, SIZE, SIZE) and arr.dtype == np.int16
        for k, seq in enumerate(SEQUENCES):
            if m["files"][seq]["status"] == "nifti":
                np.testing.assert_array_equal(np.asarray(nib.load(str(root / m["files"][seq]["path"])).dataobj), arr[k])


def test_deterministic_for_a_seed(cohort, tmp_path):
    again = generate_brain_cohort(tmp_path / "again", source_dir=DATA, num_patients=N, size=SIZE, seed=0)
    first, second = _files(cohort["root"]), _files(again["root"])
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name] and name != "manifest.json"]
    assert different == []
    m1, m2 = (json.loads(p.read_text()) for p in (cohort["manifest"], again["manifest"]))
    m1.pop("source_dir"), m2.pop("source_dir")
    assert m1 == m2
    other = generate_brain_cohort(tmp_path / "other", source_dir=DATA, num_patients=N, size=SIZE, seed=1,
                                  num_dicom=0)
    assert other["datalist"].read_text() != cohort["datalist"].read_text()


def test_class_and_source_balance(manifest, datalist):
    entries = _entries(datalist)
    counts = np.bincount([e["label"] for e in entries], minlength=len(CLASSES))
    assert counts.tolist() == [N // 3] * 3
    for split in ("training", "validation", "testing"):
        assert sorted({e["label"] for e in datalist[split]}) == [0, 1, 2], split
    # every class uses every source brain equally often (the source never carries the class)
    sources = sorted({p["source"] for p in manifest["patients"]})
    assert len(sources) == 4
    for c in range(len(CLASSES)):
        used = [p["source"] for p in manifest["patients"] if p["label"] == c]
        assert sorted(used) == sorted(sources)
    assert all(s["replaced_real_lesion_voxels_2mm"] > 0 for s in manifest["sources"])


def test_missingness_rates_and_guarantees():
    n = 3000
    plan = plan_missingness(n, seed=0)
    absent = 1 - plan["present"].mean(0)
    assert np.all((absent >= 0.17) & (absent <= 0.30)), absent
    unreadable = 1 - plan["readable"].mean(0)
    assert np.all(unreadable >= absent) and np.all(unreadable <= 0.33)
    clinical_gone = np.zeros(n, bool)
    clinical_gone[list(plan["missing_rows"] | plan["blank_rows"])] = True
    assert not np.any(~plan["readable"].any(1) & clinical_gone)  # never every sequence and the clinical row
    assert len(plan["no_image"]) > 0 and not plan["cell_blank"][plan["no_image"]].any()
    assert sorted(set(plan["corrupt"].values())) == ["random_bytes", "truncated_gzip", "zero_bytes"]
    assert len(plan["corrupt"]) == 3 * 30 and len(plan["dicom"]) == 90
    assert all(plan["readable"][i, k] for i, k in plan["dicom"])
    assert all(plan["readable"][i].sum() >= 1 for i, _ in plan["corrupt"])
    blank = plan["cell_blank"].mean(0)
    assert np.all((blank > 0.03) & (blank < 0.09)), blank
    # missingness does not depend on the seed's class design: a different seed gives a different plan
    assert not np.array_equal(plan_missingness(n, seed=1)["present"], plan["present"])


def test_dicom_series_loads_to_the_same_geometry(cohort, manifest):
    dicoms = manifest["injected"]["dicom_series"]
    assert len(dicoms) >= 1
    vols = {pid: arr for pid, _, _, arr, _ in iter_cohort_patients(N, SIZE, 0, DATA)}
    for d in dicoms:
        folder = cohort["root"] / d["path"]
        assert folder.is_dir() and len(list(folder.glob("*.dcm"))) == SIZE
        img = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(str(folder))
        ras = Orientation("RAS")(img)
        np.testing.assert_allclose(ras.affine.numpy(), cohort_affine(SIZE), atol=1e-4)
        np.testing.assert_array_equal(ras[0].numpy().astype(np.int16), vols[d["patient_id"]][SEQUENCES.index(d["sequence"])])
        # the project's tolerant loader accepts it as observed
        _, reason = LoadModality(base_dir=cohort["root"]).load(d["path"])
        assert reason == Reason.OBSERVED.value


def test_write_dicom_series_rejects_oblique_affine(tmp_path):
    aff = np.eye(4)
    aff[0, 1] = 0.2
    with pytest.raises(ValueError, match="diagonal RAS affine"):
        write_dicom_series(np.zeros((4, 4, 3), np.int16), aff, tmp_path / "s", "P1", "t1")


def test_corrupt_files_and_clinical_gaps_are_what_the_manifest_says(cohort, manifest, datalist):
    root = cohort["root"]
    inj = manifest["injected"]
    kinds = {c["kind"] for c in inj["corrupt_files"]}
    assert kinds == {"zero_bytes", "random_bytes", "truncated_gzip"}
    loader = LoadModality(base_dir=root)
    corrupt_paths = set()
    for c in inj["corrupt_files"]:
        path = root / c["path"]
        corrupt_paths.add(c["path"])
        assert path.is_file()
        if c["kind"] == "zero_bytes":
            assert path.stat().st_size == 0
        _, reason = loader.load(c["path"])
        assert reason.startswith(Reason.UNREADABLE.value), (c, reason)
    # every other listed file loads
    for e in _entries(datalist):
        for seq in SEQUENCES:
            if e[seq] is not None and e[seq] not in corrupt_paths:
                assert loader.load(e[seq])[1] == Reason.OBSERVED.value, (e["patient_id"], seq)
    # absent sequences are null and match the manifest
    for p in manifest["patients"]:
        entry = next(e for e in _entries(datalist) if e["patient_id"] == p["patient_id"])
        for seq in SEQUENCES:
            assert (entry[seq] is None) == (p["files"][seq]["status"] == "absent")
    with cohort["clinical"].open() as fh:
        rows = {r["patient_id"]: r for r in csv.DictReader(fh)}
    assert inj["clinical_rows_missing"] and not set(inj["clinical_rows_missing"]) & set(rows)
    for pid in inj["clinical_rows_all_blank"]:
        assert all(rows[pid][f] == "" for f in CLINICAL_FIELDS)
    for p in manifest["patients"]:
        if p["clinical_status"] == "complete":
            row = rows[p["patient_id"]]
            assert [row[f] for f in CLINICAL_FIELDS] == [str(p["clinical_values"][f]) for f in CLINICAL_FIELDS]
        elif p["clinical_status"] == "partial":
            row = rows[p["patient_id"]]
            for f in p["clinical_blank_fields"]:
                assert row[f] == ""
            for f in p["clinical_sentinel_fields"]:
                assert row[f] == {"ldh": "-999", "sex": "unknown"}[f]
    # no patient loses every sequence and the clinical row
    gone = set(inj["clinical_rows_missing"]) | set(inj["clinical_rows_all_blank"])
    for p in manifest["patients"]:
        if p["patient_id"] in gone:
            assert any(p["files"][s]["status"] in ("nifti", "dicom_series") for s in SEQUENCES)


def test_cli_and_errors(tmp_path, capsys):
    _need_data()
    out = tmp_path / "cli"
    rc = cli_main(["brain-cohort", "--out", str(out), "--source", str(DATA), "--num-patients", "6", "--size",
                   str(SIZE), "--seed", "3", "--quiet"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["summary"]["splits"].values()) == 6
    assert (out / "datalist.json").is_file() and (out / "README.md").is_file()
    # a non-empty output folder is refused without --overwrite
    rc = cli_main(["brain-cohort", "--out", str(out), "--source", str(DATA), "--num-patients", "6", "--size",
                   str(SIZE), "--quiet"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="brain MRI samples not found"):
        generate_brain_cohort(tmp_path / "x", source_dir=tmp_path / "nowhere", num_patients=3, size=SIZE)
    with pytest.raises(ValueError, match="absent_rates"):
        generate_brain_cohort(tmp_path / "y", source_dir=DATA, num_patients=3, size=SIZE, absent_rates={"pd": 0.1})
