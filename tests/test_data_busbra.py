"""BUS-BRA cohort files from a tiny made-up ``BUSBRA`` folder (never the real images): the split (official test fold,
seeded and stratified training / validation, every image of a lesion in one list), inputs vs outcomes, the reason of
the missing second view through the cohort loader and prepare, release errors, the CLI and the linear baseline."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from monai_dymo.cohort import CohortSpec, build_preprocessing, load_split, prepare_cohort
from monai_dymo.data.__main__ import main as data_main
from monai_dymo.data.busbra import CLASSES, INPUT_FIELDS, OUTCOME_COLUMNS, build_busbra, stratified_split
from monai_dymo.keys import DyMoKeys

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("GE Logiq 7 @10-14MHz", "GE Logiq 5 @10-12MHz", "Toshiba Aplio 300 @12-14 MHz")
HISTOLOGY = {"benign": ("fibroadenoma", "cyst"), "malignant": ("invasive ductal carcinoma",)}


def make_release(root: Path, n: int = 60, seed: int = 0) -> Path:
    """A made-up ``BUSBRA`` folder: Images/bus_<case>-l|r|s.png, bus_data.csv, 5-fold-cv.csv (real column layout)."""
    rng = np.random.default_rng(seed)
    rel = root / "BUSBRA"
    (rel / "Images").mkdir(parents=True)
    meta, folds = [], []
    for case in range(1, n + 1):
        pathology = "malignant" if case % 3 == 0 else "benign"
        panels = ("s",) if case % 4 == 0 else ("l", "r")
        k = 1 + case % 5
        for panel in panels:
            image_id = f"bus_{case:04d}-{panel}"
            h, w = (12, 14) if panel == "s" else (12, 9)
            img = rng.integers(0, 60, (h, w)).astype(np.uint8)
            img[3:8, 3:6] += 150 if pathology == "malignant" else 60
            Image.fromarray(img, "L").save(rel / "Images" / f"{image_id}.png")
            meta.append({"ID": image_id, "Case": case,
                         "Histology": HISTOLOGY[pathology][case % len(HISTOLOGY[pathology])],
                         "Pathology": pathology, "BIRADS": 5 if pathology == "malignant" else 2,
                         "Device": DEVICES[case % 3], "Width": w, "Height": h,
                         "Side": {"l": "left", "r": "right", "s": "single"}[panel], "BBOX": "[1,1,3,3]"})
            row = {"ID": image_id, "Pathology": pathology, "kFold": k}
            row.update({f"valid_{j}": (np.nan if j == k else float(rng.integers(0, 2))) for j in range(1, 6)})
            folds.append(row)
    pd.DataFrame(meta).to_csv(rel / "bus_data.csv", index=False)
    pd.DataFrame(folds).to_csv(rel / "5-fold-cv.csv", index=False)
    return rel


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("busbra"))


@pytest.fixture(scope="module")
def cohort(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("busbra_cohort")
    assert data_main(["busbra", "--source", str(release), "--out", str(out), "--size", "8", "6"]) == 0
    return out


def _datalist(out: Path) -> dict:
    return json.loads((out / "datalist.json").read_text())


def _case(pid: str) -> int:
    return int(pid.split("_")[1])


def test_official_test_fold_and_seeded_stratified_patient_split(release, cohort, tmp_path):
    data = _datalist(cohort)
    folds = pd.read_csv(release / "5-fold-cv.csv")
    meta = pd.read_csv(release / "bus_data.csv")
    fold1 = {f"bus_{int(i[4:8]):04d}" for i in folds.loc[folds.kFold == 1, "ID"]}
    assert {e["patient_id"] for e in data["testing"]} == fold1
    ids = [e["patient_id"] for v in data.values() for e in v]
    assert len(ids) == len(set(ids)) == meta.Case.nunique()  # every lesion once, in one list
    for split, entries in data.items():  # every image of a lesion with its lesion
        for e in entries:
            images = set(meta.loc[meta.Case == _case(e["patient_id"]), "ID"] + ".png")
            assert {e["view1"], e["view2"]} - {None} == images
    # training / validation: 3 : 1 within each (class, view count) stratum of the non-test lesions
    stratum = {f"bus_{c:04d}": (p, c % 4 == 0) for c, p in zip(meta.Case, meta.Pathology)}
    rest = Counter(stratum[e["patient_id"]] for s in ("training", "validation") for e in data[s])
    val = Counter(stratum[e["patient_id"]] for e in data["validation"])
    for key, n in rest.items():
        assert val[key] == round(n * 0.25), key
    # seeded: the same seed gives the same files, another seed another draw with the same test fold
    build_busbra(release, tmp_path / "a", size=(8, 6), seed=0)
    assert _datalist(tmp_path / "a") == data
    build_busbra(release, tmp_path / "b", size=(8, 6), seed=1)
    other = _datalist(tmp_path / "b")
    assert other["testing"] == data["testing"] and other["validation"] != data["validation"]
    build_busbra(release, tmp_path / "c", size=(8, 6), fold=3)
    assert {e["patient_id"] for e in _datalist(tmp_path / "c")["testing"]} == {
        f"bus_{int(i[4:8]):04d}" for i in folds.loc[folds.kFold == 3, "ID"]}


def test_seeded_split_without_the_official_fold(release, tmp_path):
    assert data_main(["busbra", "--source", str(release), "--out", str(tmp_path), "--fold", "0", "--seed", "4"]) == 0
    data = _datalist(tmp_path)
    sizes = {s: len(v) for s, v in data.items()}
    assert sizes == {"training": 36, "validation": 12, "testing": 12}  # 60 / 20 / 20 of 60 lesions
    for split in data:
        labels = Counter(e["label"] for e in data[split])
        assert labels["malignant"] == round(sizes[split] / 3)  # stratified: a third malignant everywhere
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fold"] is None and "seeded draw (seed 4)" in manifest["split"]


def test_stratified_split_is_seeded_and_disjoint():
    strata = {f"p{i:03d}": (i % 2, i % 5 == 0) for i in range(200)}
    fr = {"training": 0.6, "validation": 0.2, "testing": 0.2}
    a, b, c = (stratified_split(strata, fr, seed) for seed in (0, 0, 1))
    assert a == b and a != c
    assert sorted(x for v in a.values() for x in v) == sorted(strata)
    assert [len(a[s]) for s in fr] == [120, 40, 40]
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(strata, {"training": 0.0}, 0)


def test_outcomes_never_reach_the_inputs(release, cohort):
    clinical = pd.read_csv(cohort / "clinical.csv")
    assert list(clinical.columns) == ["patient_id", *INPUT_FIELDS]
    assert not set(clinical.columns) & ({c.lower() for c in OUTCOME_COLUMNS} | set(OUTCOME_COLUMNS))
    meta = pd.read_csv(release / "bus_data.csv")
    outcome_values = {str(v) for c in OUTCOME_COLUMNS for v in meta[c]}
    assert not set(clinical["device"].astype(str)) & outcome_values
    spec = CohortSpec.from_config(yaml.safe_load((cohort / "busbra.yaml").read_text())["cohort"])
    assert spec.modality_names == ("view1", "view2", "acquisition")
    assert spec.classes == CLASSES and spec.clinical_fields == ("device",)
    assert [m.channels for m in spec.image_modalities] == [1, 1]
    assert spec.modality("view2").spatial_size == (8, 6)
    allowed = {"patient_id", "view1", "view2", "view2_missing_reason", "label", "histology"}
    for e in (e for v in _datalist(cohort).values() for e in v):  # BI-RADS is nowhere; histology only to audit
        assert set(e) <= allowed, set(e) - allowed
        assert e["label"] == meta.loc[meta.Case == _case(e["patient_id"]), "Pathology"].iloc[0]


def test_missing_second_view_carries_its_reason(cohort):
    doc = yaml.safe_load((cohort / "busbra.yaml").read_text())
    assert Path(doc["work_dir"]).parent == cohort and Path(doc["model_dir"]).parent == cohort
    spec = CohortSpec.from_config(doc["cohort"])
    entries = [e for split in spec.splits() for e in load_split(spec, split)]
    missing = {e[DyMoKeys.PATIENT_ID]: e for e in entries if e["view2"] is None}
    assert sorted(missing) == [f"bus_{c:04d}" for c in range(4, 61, 4)]
    assert all(e["view1"] is not None for e in entries)
    for pid, e in missing.items():
        reason = e[DyMoKeys.REASONS]["view2"]
        assert reason.startswith("absent: single-view acquisition") and f"{pid}-s" in reason
    prepared = prepare_cohort(spec, cohort / "prepared", stats_file=cohort / "stats.json")
    patients = pd.read_csv(prepared["patients"]).set_index("patient_id")
    assert "single-view acquisition" in patients.loc["bus_0004", "view2"]
    assert patients.loc["bus_0001", "view2"] == "observed"
    e = build_preprocessing(spec, cohort / "stats.json")(missing["bus_0004"])
    assert tuple(e["view2"].shape) == (1, 8, 6) and tuple(e["view1"].shape) == (1, 8, 6)
    assert not bool(e[DyMoKeys.PRESENT][1]) and bool(e[DyMoKeys.PRESENT][0]) and bool(e[DyMoKeys.PRESENT][2])
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert sum(manifest["summary"]["missing"]["view2"].values()) == 15
    assert {m["patient_id"] for m in manifest["missing_views"]} == set(missing)


def test_release_errors_name_the_problem(release, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    meta = pd.read_csv(bad / "bus_data.csv")
    changed = meta.copy()
    changed.loc[1, "Pathology"] = "malignant" if changed.loc[1, "Pathology"] == "benign" else "benign"
    changed.to_csv(bad / "bus_data.csv", index=False)
    with pytest.raises(ValueError, match="bus_0001: pathology differs"):
        build_busbra(bad, tmp_path / "o1")
    changed = meta.copy()
    changed.loc[0, "Pathology"] = "normal"
    changed.to_csv(bad / "bus_data.csv", index=False)
    with pytest.raises(ValueError, match="pathology 'normal'"):
        build_busbra(bad, tmp_path / "o2")
    meta.to_csv(bad / "bus_data.csv", index=False)
    (bad / "Images" / "bus_0002-r.png").unlink()
    with pytest.raises(FileNotFoundError, match="bus_0002-r"):
        build_busbra(bad, tmp_path / "o3")
    with pytest.raises(ValueError, match="fold must be 1-5"):
        build_busbra(release, tmp_path / "o4", fold=6)
    (bad / "5-fold-cv.csv").unlink()
    with pytest.raises(FileNotFoundError, match="5-fold-cv.csv"):
        build_busbra(bad, tmp_path / "o5")
    assert data_main(["busbra", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o6")]) == 2


def test_linear_baseline_on_the_cohort(cohort, capsys):
    path = ROOT / "benchmarks" / "bench_linear_baseline.py"
    spec = importlib.util.spec_from_file_location("bench_linear_baseline", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--cohort", str(cohort / "busbra.yaml"), "--size", "4", "--C", "0.1", "1"])
    assert list(result["rows"]) == ["all inputs", "all inputs, equal blocks", "view1 alone", "view2 alone",
                                    "acquisition alone"]
    for r in result["rows"].values():
        assert 0 <= r["test_bacc"] <= 100 and r["C"] in (0.1, 1.0)
    assert result["rows"]["view2 alone"]["test_n_observed"] < result["patients"]["testing"]
    assert result["missing"]["testing"]["view2"]["absent"] == result["patients"]["testing"] - \
        result["rows"]["view2 alone"]["test_n_observed"]
    assert result["rows"]["all inputs"]["test_bacc"] > 80  # the made-up lesions are bright when malignant
    assert "| all inputs |" in capsys.readouterr().out


def test_baseline_thumbnails(tmp_path):
    path = ROOT / "benchmarks" / "bench_linear_baseline.py"
    spec = importlib.util.spec_from_file_location("bench_linear_baseline", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    img = np.zeros((16, 24, 3), np.uint8)
    img[:8, :, 0] = 255  # red top half
    Image.fromarray(img).save(tmp_path / "p.png")
    gray = bench.thumbnail(str(tmp_path / "p.png"), "image2d", 4, "gray")
    rgb = bench.thumbnail(str(tmp_path / "p.png"), "image2d", 4, "rgb")
    assert gray.shape == (4, 4) and rgb.shape == (4, 4, 3)
    assert rgb[0, :, 0].min() > 0.9 and rgb[3, :, 0].max() < 0.1 and rgb[..., 2].max() < 0.1  # rows first
    deep = (np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)  # 16-bit: min-max scaled
    Image.fromarray(deep).save(tmp_path / "d.png")
    d = bench.thumbnail(str(tmp_path / "d.png"), "image2d", 4, "gray")
    assert d.shape == (4, 4) and 0 <= d.min() < 0.2 and 0.8 < d.max() <= 1 and (np.diff(d[:, 0]) > 0).all()
