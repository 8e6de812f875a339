"""Clinical field groups from a real CSV file (blanks, NaN, sentinels, unseen categories) through CSVDataset."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from monai.data import CSVDataset, DataLoader, list_data_collate
from monai_dymo.transforms import (
    DEFAULT_MISSING_VALUES,
    UNKNOWN_CATEGORY,
    ClinicalFields,
    ClinicalFieldsd,
    ClinicalFieldStats,
    RandSimulateMissingModalitiesd,
)

CSV_TEXT = """patient_id,age,sex,crp,wbc,grade
p0,54,M,3.2,6.1,2
p1,,F,-999,7.5,3
p2,61,,12.0,,4
p3,70,F,0.8,9.0,2
p4,-999, ,,-999,
p5,47,X,NA,5.0,5
"""
TRAIN = ["p0", "p1", "p2", "p3"]
GROUPS = {"demographics": ["age", "sex"], "labs": ["crp", "grade", "wbc"]}
CONT, CAT = ["age", "crp", "wbc"], ["sex", "grade"]
SENTINELS = [-999, "NA"]
NAN = float("nan")


@pytest.fixture()
def table(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text(CSV_TEXT)
    train = tmp_path / "train.csv"
    df = pd.read_csv(path)
    df[df.patient_id.isin(TRAIN)].to_csv(train, index=False)
    return path, train


def _manual_z(field: str) -> dict[str, float]:
    """z-scores of the training rows of ``field`` computed here from the raw text (sentinels / blanks excluded)."""
    df = pd.read_csv(pd.io.common.StringIO(CSV_TEXT), dtype=str, keep_default_na=False)
    df = df[df.patient_id.isin(TRAIN)]
    vals = {r.patient_id: float(r[field]) for _, r in df.iterrows() if r[field].strip() not in ("", "-999", "NA")}
    arr = np.array(list(vals.values()))
    return {k: (v - arr.mean()) / arr.std() for k, v in vals.items()}


def test_fit_save_load_and_encodings(table, tmp_path):
    _, train = table
    stats = ClinicalFieldStats.fit(pd.read_csv(train), continuous=CONT, categorical=CAT, sentinels=SENTINELS)
    same = ClinicalFieldStats.fit(CSVDataset(src=str(train)), continuous=CONT, categorical=CAT, sentinels=SENTINELS)
    assert stats.to_dict() == same.to_dict()
    assert stats.categorical == {"sex": ["F", "M"], "grade": ["2", "3", "4"]}  # 2, 2.0 and "2" are one category
    assert stats.num_categories("grade") == 3 and UNKNOWN_CATEGORY == -1

    path = tmp_path / "stats.json"
    stats.save(path)
    loaded = ClinicalFieldStats.load(path)
    assert json.loads(path.read_text())["unknown_index"] == -1
    assert loaded.to_dict() == stats.to_dict()
    old = tmp_path / "old_stats.json"  # monai_dymo 0.1.0 coded categories from 1, unknown as 0
    old.write_text(json.dumps({**stats.to_dict(), "unknown_index": 0}))
    with pytest.raises(ValueError, match=r"unseen categories as 0.*refit.*old_stats\.json"):
        ClinicalFieldStats.load(old)

    z_age = _manual_z("age")
    value, present = loaded.encode("age", 54, "p0")
    assert present and value == pytest.approx(z_age["p0"])
    assert loaded.encode("age", "61", "p2")[0] == pytest.approx(z_age["p2"])
    for missing in (None, float("nan"), "", "   ", -999, -999.0, "-999", "NA", pd.NA, np.float64("nan")):
        value, present = loaded.encode("age", missing)
        assert np.isnan(value) and not present, missing
    assert loaded.encode("sex", "M") == (1.0, True)
    assert loaded.encode("sex", " F ") == (0.0, True)
    assert loaded.encode("sex", "X") == (-1.0, True)  # a value, but a category unseen in training
    assert loaded.encode("grade", 4.0) == (2.0, True)
    with pytest.raises(ValueError, match="'age' of patient 'p9'.*'old'"):
        loaded.encode("age", "old", "p9")
    assert loaded.describe(GROUPS["labs"]) == {
        "fields": ["crp", "wbc", "grade"],
        "num_continuous": 2,
        "categorical": {"grade": 3},
    }


def test_groups_field_mask_and_all_missing(table, tmp_path, caplog):
    csv, train = table
    stats = ClinicalFieldStats.fit(pd.read_csv(train), continuous=CONT, categorical=CAT, sentinels=SENTINELS)
    transform = ClinicalFieldsd(GROUPS, stats, modalities=["t1", "demographics", "labs"])
    assert transform.layout("labs") == ["crp", "wbc", "grade"]
    rows = {r["patient_id"]: r for r in CSVDataset(src=str(csv))}
    z_age, z_crp, z_wbc = _manual_z("age"), _manual_z("crp"), _manual_z("wbc")

    with caplog.at_level(logging.WARNING, logger="monai_dymo.transforms"):
        out = {pid: transform(dict(row, modality_reasons={"t1": "observed"})) for pid, row in rows.items()}

    p1 = out["p1"]  # age blank, crp sentinel
    torch.testing.assert_close(p1["demographics"], torch.tensor([NAN, 0.0]), equal_nan=True)
    assert p1["field_mask"]["demographics"].tolist() == [False, True]
    expected = torch.tensor([NAN, z_wbc["p1"], 1.0], dtype=torch.float32)
    torch.testing.assert_close(p1["labs"], expected, equal_nan=True)
    assert p1["field_mask"]["labs"].tolist() == [False, True, True]
    assert p1["present"].tolist() == [True, True, True] and p1["error"] == ""

    p2 = out["p2"]  # sex blank, wbc blank
    torch.testing.assert_close(p2["demographics"], torch.tensor([z_age["p2"], NAN], dtype=torch.float32), equal_nan=True)
    torch.testing.assert_close(p2["labs"], torch.tensor([z_crp["p2"], NAN, 2.0], dtype=torch.float32), equal_nan=True)
    assert p2["field_mask"]["labs"].tolist() == [True, False, True]

    p4 = out["p4"]  # every field missing: sentinel, blank string, empty cells
    assert p4["modality_reasons"]["demographics"] == "all fields missing: age, sex"
    assert p4["modality_reasons"]["labs"] == "all fields missing: crp, grade, wbc"
    assert p4["present"].tolist() == [True, False, False]
    assert bool(p4["labs"].isnan().all()) and not p4["field_mask"]["labs"].any()
    assert any("p4" in r.getMessage() and "labs" in r.getMessage() for r in caplog.records)

    p5 = out["p5"]  # unseen category X, unseen grade 5, string sentinel NA
    assert p5["demographics"][1].item() == UNKNOWN_CATEGORY
    assert p5["field_mask"]["demographics"].tolist() == [True, True]
    assert p5["labs"].tolist()[2] == UNKNOWN_CATEGORY and p5["field_mask"]["labs"].tolist() == [False, True, True]
    assert bool(p5["labs"][0].isnan())  # crp "NA" is a sentinel
    assert all(f not in p5 for f in ("age", "sex", "crp", "wbc", "grade"))  # raw values dropped
    assert p5["patient_id"] == "p5"

    # a patient with no image and no clinical field is flagged
    alone = ClinicalFieldsd(GROUPS, stats)(dict(rows["p4"]))
    assert alone["error"].startswith("no modality observed: demographics=all fields missing")


def test_configuration_errors(table, tmp_path):
    csv, train = table
    df = pd.read_csv(train)
    with pytest.raises(ValueError, match=r"clinical field 'bmi' is not in the table \(patient 'p0'"):
        ClinicalFieldStats.fit(df, continuous=["age", "bmi"])
    with pytest.raises(ValueError, match="both continuous and categorical"):
        ClinicalFieldStats.fit(df, continuous=["age"], categorical=["age"])
    with pytest.raises(ValueError, match="'age' has no observed value"):
        ClinicalFieldStats.fit(df.assign(age=-999), continuous=["age"], sentinels=[-999])
    with pytest.raises(ValueError, match=r"'sex' of patient 'p0' is not a finite number"):
        ClinicalFieldStats.fit(df, continuous=["sex"])
    stats = ClinicalFieldStats.fit(df, continuous=CONT, categorical=CAT, sentinels=SENTINELS)
    with pytest.raises(ValueError, match=r"\['bmi'\] have no fitted statistics"):
        ClinicalFieldsd({"vitals": ["bmi"]}, stats)
    with pytest.raises(ValueError, match="unknown modality key"):
        ClinicalFieldsd(GROUPS, stats, modalities=["t1", "labs"])
    with pytest.raises(ValueError, match=r"clinical field 'sex' is not in the table for patient 'p7'"):
        ClinicalFields(["age", "sex"], stats)({"patient_id": "p7", "age": 3}, patient_id="p7")
    with pytest.raises(ValueError, match=r"clinical field 'sex' is not in the table for patient 'p7'"):
        ClinicalFieldsd(GROUPS, stats)({"patient_id": "p7", "age": 3, "crp": 1, "wbc": 2, "grade": 2})
    with pytest.raises(ValueError, match="statistics file not found"):
        ClinicalFieldsd(GROUPS, tmp_path / "nope.json")


def test_csvdataset_dataloader_collation(table, tmp_path):
    csv, train = table
    stats_file = tmp_path / "stats.json"
    ClinicalFieldStats.fit(CSVDataset(src=str(train)), continuous=CONT, categorical=CAT, sentinels=SENTINELS).save(
        stats_file
    )
    ds = CSVDataset(src=str(csv), transform=ClinicalFieldsd(GROUPS, str(stats_file)))
    batches = list(DataLoader(ds, batch_size=4, shuffle=False))
    assert [len(b["patient_id"]) for b in batches] == [4, 2]
    b = batches[0]
    assert b["demographics"].shape == (4, 2) and b["labs"].shape == (4, 3)
    assert b["field_mask"]["labs"].shape == (4, 3) and b["field_mask"]["labs"].dtype == torch.bool
    assert b["present"].shape == (4, 2) and b["present"].dtype == torch.bool
    last = batches[1]
    assert last["patient_id"] == ["p4", "p5"]
    assert last["modality_reasons"]["labs"] == ["all fields missing: crp, grade, wbc", "observed"]
    assert last["present"].tolist() == [[False, False], [True, True]]
    assert last["error"][0].startswith("no modality observed") and last["error"][1] == ""


SENTINEL_STRINGS = ["", "NaN", "nan", "NA", "N/A", "n/a", "unknown"]


def test_string_sentinels_are_missing_by_default_and_configurable(tmp_path):
    """Rows given as strings: the usual spellings of "no value" are missing fields, numeric and categorical alike."""
    rows = [
        {"patient_id": "a", "age": "54", "sex": "M"},
        {"patient_id": "b", "age": "61", "sex": "F"},
        {"patient_id": "c", "age": "unknown", "sex": "unknown"},
        {"patient_id": "d", "age": "N/A", "sex": "nan"},
    ]
    stats = ClinicalFieldStats.fit(rows, continuous=["age"], categorical=["sex"])
    assert stats.categorical == {"sex": ["F", "M"]}  # "unknown" and "nan" are not categories
    assert stats.continuous["age"] == pytest.approx((57.5, 3.5))
    for text in SENTINEL_STRINGS:
        for field in ("age", "sex"):
            value, present = stats.encode(field, text, "p")
            assert np.isnan(value) and not present, (field, text)
    out = ClinicalFieldsd({"demographics": ["age", "sex"]}, stats)({"patient_id": "c", "age": "NA", "sex": "n/a"})
    assert out["modality_reasons"]["demographics"] == "all fields missing: age, sex"

    # configurable: "unknown" as a real category, "?" as the missing marker; kept through save / load
    custom = ClinicalFieldStats.fit(rows[:3], categorical=["sex"], missing_values=["?"])
    assert custom.categorical == {"sex": ["F", "M", "unknown"]}
    assert custom.encode("sex", "unknown") == (2.0, True)
    assert np.isnan(custom.encode("sex", "?")[0]) and custom.encode("sex", "N/A") == (UNKNOWN_CATEGORY, True)
    path = tmp_path / "custom.json"
    custom.save(path)
    assert ClinicalFieldStats.load(path).encode("sex", "unknown") == (2.0, True)
    assert ClinicalFieldStats.load(path).missing_values == ["?"]


def test_statistics_are_sklearn_scaler_and_encoder(table):
    """ClinicalFieldStats holds scikit-learn's StandardScaler / OrdinalEncoder (NaN = missing, -1 = unseen) and
    encodes exactly as they do on the cleaned columns."""
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler

    _, train = table
    df = pd.read_csv(train)
    stats = ClinicalFieldStats.fit(df, continuous=CONT, categorical=CAT, sentinels=SENTINELS)
    assert isinstance(stats.scaler, StandardScaler) and isinstance(stats.encoder, OrdinalEncoder)
    params = stats.encoder.get_params()
    assert params["handle_unknown"] == "use_encoded_value" and params["unknown_value"] == UNKNOWN_CATEGORY
    assert np.isnan(params["encoded_missing_value"])

    clean = df[CONT].replace(-999, np.nan).astype(float)
    reference = StandardScaler().fit(clean.to_numpy())
    np.testing.assert_allclose(stats.scaler.mean_, reference.mean_)
    np.testing.assert_allclose(stats.scaler.scale_, reference.scale_)
    cats = np.array([[s if isinstance(s, str) else np.nan, str(int(g))] for s, g in zip(df.sex, df.grade)], dtype=object)
    ref_enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=np.nan)
    ref_enc.fit(cats)
    assert stats.categorical == {f: [c for c in cs if c == c] for f, cs in zip(CAT, ref_enc.categories_)}

    # old statistics files (written before sklearn, without "missing_values") still read, same encodings
    old = {
        "continuous": {"age": {"mean": 60.0, "std": 10.0}},
        "categorical": {"sex": ["F", "M"]},
        "sentinels": [-999],
        "unknown_index": -1,
    }
    loaded = ClinicalFieldStats.from_dict(old)
    assert loaded.encode("age", 75) == (1.5, True) and np.isnan(loaded.encode("age", -999)[0])
    assert loaded.encode("sex", "M") == (1.0, True) and loaded.encode("sex", "X") == (-1.0, True)
    assert loaded.to_dict() == {**old, "missing_values": list(DEFAULT_MISSING_VALUES)}


def test_field_notes_tell_a_blank_cell_from_a_missing_value_code():
    rows = [{"patient_id": p, "age": a, "ldh": l, "sex": s} for p, a, l, s in
            [("a", 54, 200.0, "M"), ("b", 61, 250.0, "F"), ("c", 70, 230.0, "F")]]
    stats = ClinicalFieldStats.fit(rows, continuous=["age", "ldh"], categorical=["sex"], sentinels=[-999])
    notes = [stats.missing_note(v) for v in (None, float("nan"), "", "  ", -999, "-999", -999.0, "NA", "unknown")]
    assert notes == ["blank", "blank", "blank", "blank", "-999", "-999", "-999", "'NA'", "'unknown'"]
    assert stats.missing_note(54) is None and stats.missing_note("M") is None

    t = ClinicalFieldsd({"labs": ["ldh"], "demographics": ["age", "sex"]}, stats)
    out = t({"patient_id": "p1", "age": "", "ldh": -999, "sex": "unknown"})
    assert out["field_notes"] == {"labs": "ldh = -999", "demographics": "age = blank, sex = 'unknown'"}
    assert out["modality_reasons"]["labs"] == "all fields missing: ldh"
    out = t({"patient_id": "p2", "age": 60, "ldh": None, "sex": "F"})
    assert out["field_notes"] == {"labs": "ldh = blank", "demographics": ""}  # nothing missing: empty note
    # simulated missingness hides a present group: its note says so, so it is never read as the table's gap
    sim = RandSimulateMissingModalitiesd(["labs", "demographics"], rate=1.0, keep_at_least_one=False)
    sim.set_random_state(0)
    hidden = sim(out)
    assert hidden["field_notes"]["demographics"] == "all fields hidden (simulated missing)"
    # notes of a batch collate like the reasons: one string per patient
    batch = list_data_collate([t({"patient_id": "p1", "age": "", "ldh": 1.0, "sex": "M"}), out])
    assert batch["field_notes"]["demographics"] == ["age = blank", ""]
