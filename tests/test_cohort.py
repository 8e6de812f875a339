"""The cohort layer: spec validation, datalist + clinical join, bad input errors, preprocessing, builders."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from monai_dymo.cohort import (
    CohortSpec,
    build_cohort_fusion,
    build_cohort_recovery,
    build_preprocessing,
    clinical_layouts,
    cohort_dataset,
    load_split,
    prepare_cohort,
)
from monai_dymo.handlers import MissingnessSummaryHandler
from monai_dymo.networks import IterativeImputerRecovery, MoPoERecovery
from monai_dymo.presence import present_modality_names
from monai_dymo.transforms import AsGrayscale2D, AsGrayscale2Dd, make_placeholder
from tests.cohort_fixtures import CLASSES, make_tiny_cohort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cohort")
    cfg = make_tiny_cohort(root / "data")
    spec = CohortSpec.from_config(cfg)
    out = prepare_cohort(spec, root / "prepared", stats_file=root / "models" / "clinical_stats.json")
    return cfg, spec, out, root


# ---------------------------------------------------------------------------------------------------- spec
def test_spec_reads_the_yaml_mapping(tiny):
    cfg, spec, *_ = tiny
    assert spec.modality_names == ("ct", "xray", "clinical")
    assert [m.kind for m in spec.modalities] == ["image3d", "image2d", "clinical"]
    assert spec.modality("xray").intensity == "minmax" and spec.modality("ct").intensity == "zscore"
    assert spec.clinical_fields == ("age", "sex") and spec.num_classes == 3
    assert spec.data_root == spec.datalist.parent


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["modalities"].append({"name": "pet", "kind": "image4d"}), r"modalities\[3\].*unknown modality kind 'image4d'"),
        (lambda c: c["modalities"][0].pop("spatial_size"), r"'ct'.*spatial_size"),
        (lambda c: c.update(classes=["a"]), "at least two distinct class names"),
        (lambda c: c.pop("clinical_csv"), "needs 'clinical_csv'"),
        (lambda c: c.update(colour="red"), r"unknown key\(s\) \['colour'\]"),
        (lambda c: c["modalities"][2].update(continuous=["ct"]), "have the name of a modality"),
    ],
)
def test_spec_errors_name_the_key(tiny, change, message):
    cfg = json.loads(json.dumps(tiny[0]))
    change(cfg)
    with pytest.raises(ValueError, match=message):
        CohortSpec.from_config(cfg)


# ---------------------------------------------------------------------------------------------------- datalist
def test_split_join_labels_and_missing_clinical_rows(tiny):
    cfg, spec, *_ = tiny
    entries = load_split(spec, "training")
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert {e["label"] for e in entries} == {0, 1, 2}  # class names and indices both accepted
    no_row = [e for e in entries if e.get("modality_reasons")]
    assert no_row and all(e["modality_reasons"]["clinical"].startswith("absent: patient") for e in no_row)
    assert all(e["age"] is None and e["sex"] is None for e in no_row)
    with_row = [e for e in entries if not e.get("modality_reasons")]
    assert any(e["sex"] in ("F", "M") for e in with_row)
    assert all(e["ct"] is None or e["ct"].startswith(str(spec.data_root)) for e in entries)


def test_prepare_writes_summary_and_stats(tiny):
    cfg, spec, out, root = tiny
    import pandas as pd

    summary = pd.read_csv(out["missingness"])
    test_ct = summary[(summary.split == "testing") & (summary.modality == "ct")].iloc[0]
    assert test_ct["file not found"] == 1 and test_ct["unreadable"] == 1
    assert test_ct["observed"] + test_ct["missing"] == test_ct["patients"] == 9
    patients = pd.read_csv(out["patients"])
    assert len(patients) == 24 + 9 + 9 and set(patients["split"]) == {"training", "validation", "testing"}
    assert (root / "models" / "clinical_stats.json").is_file()
    assert out["splits"] == {"training": 24, "validation": 9, "testing": 9}


def _rewrite(cfg, tmp_path, datalist=None, csv_text=None):
    cfg = json.loads(json.dumps(cfg))
    if datalist is not None:
        (tmp_path / "datalist.json").write_text(json.dumps(datalist))
        cfg["datalist"] = str(tmp_path / "datalist.json")
        cfg["data_root"] = str(CohortSpec.from_config(json.loads(json.dumps(cfg))).datalist.parent)
    if csv_text is not None:
        (tmp_path / "clinical.csv").write_text(csv_text)
        cfg["clinical_csv"] = str(tmp_path / "clinical.csv")
    return CohortSpec.from_config(cfg)


def test_bad_input_errors_name_file_column_patient(tiny, tmp_path):
    cfg, spec, *_ = tiny
    datalist = json.loads(spec.datalist.read_text())
    bad = _rewrite(cfg, tmp_path, csv_text="pid,age,sex\np000,50,F\n")
    with pytest.raises(ValueError, match=r"clinical\.csv has no patient id column 'patient_id'"):
        load_split(bad, "training")
    bad = _rewrite(cfg, tmp_path, csv_text="patient_id,age\np000,50\n")
    with pytest.raises(ValueError, match=r"clinical\.csv lacks the declared field column\(s\) \['sex'\]"):
        load_split(bad, "training")
    wrong = json.loads(json.dumps(datalist))
    wrong["training"][3]["label"] = "zebra"
    bad = _rewrite(cfg, tmp_path, datalist=wrong)
    with pytest.raises(ValueError, match=r"datalist .*datalist\.json: patient 'p003' has label 'zebra'"):
        load_split(bad, "training")
    empty = dict(datalist, validation=[])
    bad = _rewrite(cfg, tmp_path, datalist=empty)
    with pytest.raises(ValueError, match=r"the 'validation' list is empty"):
        load_split(bad, "validation")
    with pytest.raises(ValueError, match="the 'validation' list is empty"):
        prepare_cohort(bad, tmp_path / "prep")


def test_unlabelled_testing_split_is_allowed_for_inference(tiny, tmp_path):
    cfg, spec, *_ = tiny
    datalist = json.loads(spec.datalist.read_text())
    for e in datalist["testing"]:
        e.pop("label")
    bad = _rewrite(cfg, tmp_path, datalist=datalist)
    entries = load_split(bad, "testing")
    assert all("label" not in e for e in entries)
    with pytest.raises(ValueError, match="has no label"):
        load_split(bad, "testing", require_labels=True)


# ---------------------------------------------------------------------------------------------------- preprocessing
def test_preprocessing_shapes_reasons_and_collation(tiny):
    cfg, spec, out, root = tiny
    ds = cohort_dataset(spec, "testing", stats_file=out["stats_file"], cache=None, require_labels=False)
    items = [ds[i] for i in range(len(ds))]
    for d in items:
        assert tuple(d["ct"].shape) == (1, 16, 16, 16) and tuple(d["xray"].shape) == (1, 16, 16)
        assert tuple(d["clinical"].shape) == (2,)
        assert present_modality_names(d["present"]) == spec.modality_names
    assert items[0]["modality_reasons"]["ct"].startswith("file not found")
    assert items[2]["modality_reasons"]["ct"].startswith("unreadable")
    batch = list_data_collate(items)  # RGB, RGBA and grayscale pictures all batch together
    assert tuple(batch["xray"].shape) == (9, 1, 16, 16)
    observed = [d for d in items if d["present"][0]]
    assert all(abs(float(d["ct"].mean())) < 0.5 for d in observed)  # z-scored


def test_disk_cache_is_keyed_by_preprocessing(tiny):
    cfg, spec, out, root = tiny
    a = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache="disk", cache_dir=root / "cache")
    first = a[0]
    again = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache="disk", cache_dir=root / "cache")[0]
    assert torch.equal(first["ct"], again["ct"]) and present_modality_names(again["present"]) == spec.modality_names
    bigger = json.loads(json.dumps(cfg))
    bigger["modalities"][0]["spatial_size"] = [8, 8, 8]
    other = cohort_dataset(CohortSpec.from_config(bigger), "validation", stats_file=out["stats_file"], cache="disk",
                           cache_dir=root / "cache")
    assert tuple(other[0]["ct"].shape) == (1, 8, 8, 8)
    assert len(list((root / "cache").iterdir())) == 2


def test_a_patient_that_fails_preprocessing_keeps_a_row(tiny, caplog):
    cfg, spec, out, root = tiny
    entry = load_split(spec, "testing", require_labels=False)[1]
    entry["age"] = "not a number"  # a continuous field the encoder cannot read
    with caplog.at_level(logging.WARNING, logger="monai_dymo.cohort"):
        d = build_preprocessing(spec, out["stats_file"])(entry)
    assert d["error"].startswith("preprocessing failed") and "age" in d["error"]
    assert not bool(d["present"].any()) and tuple(d["ct"].shape) == (1, 16, 16, 16)
    assert all(r.startswith("unreadable: preprocessing failed") for r in d["modality_reasons"].values())
    assert "patient p034" in caplog.text


def test_grayscale_2d():
    rgb = torch.zeros(3, 4, 5)
    rgb[0] = 1.0
    assert torch.allclose(AsGrayscale2D()(rgb), torch.full((1, 4, 5), 0.299))
    rgba = torch.cat([rgb, torch.ones(1, 4, 5)])
    assert torch.allclose(AsGrayscale2D()(rgba), AsGrayscale2D()(rgb))
    assert tuple(AsGrayscale2D()(torch.rand(1, 4, 5, 1)).shape) == (1, 4, 5)  # single DICOM frame
    assert tuple(AsGrayscale2D()(torch.rand(2, 4, 5)).shape) == (1, 4, 5)
    with pytest.raises(ValueError, match="5 channels"):
        AsGrayscale2D()(torch.rand(5, 4, 4))
    ph = make_placeholder((1, 4, 5), "absent")
    out = AsGrayscale2Dd(["x"])({"x": ph, "y": MetaTensor(rgb)})
    assert out["x"] is ph


def test_missingness_summary_handler_lines():
    h = MissingnessSummaryHandler(["ct", "xray"], name="inference")
    h.update({"modality_reasons": {"ct": ["observed", "absent: x", "unreadable: y"], "xray": ["observed"] * 3}})
    h.update([{"modality_reasons": {"ct": "file not found: z", "xray": "observed"}}])
    assert h.lines() == [
        "inference / ct: 1 of 4 observed; missing: absent 1, file not found 1, unreadable 1",
        "inference / xray: 4 of 4 observed; missing: none",
    ]


# ---------------------------------------------------------------------------------------------------- builders
def test_builders_from_the_spec(tiny):
    cfg, spec, out, root = tiny
    layouts = clinical_layouts(spec, out["stats_file"])
    assert layouts["clinical"]["fields"] == ["age", "sex"] and layouts["clinical"]["categorical_index"] == {1: 2}
    net = build_cohort_fusion(spec, out["stats_file"], dim=16)
    assert net.modalities == spec.modality_names and net.num_classes == len(CLASSES)
    assert net.encoders["clinical"].categorical_cardinalities == (2,)
    ds = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache=None)
    batch = list_data_collate([ds[i] for i in range(3)])
    logits, z = net.fuse(net.encode({m: batch[m] for m in spec.modality_names}), torch.ones(3, 3, dtype=torch.bool))
    assert logits.shape == (3, 3) and z.shape == (3, net.proj_dim)
    rec = build_cohort_recovery(spec, out["stats_file"], latent_dim=8)
    assert isinstance(rec, MoPoERecovery) and rec.specs["clinical"].categorical == {1: 2}
    assert rec.specs["xray"].output_activation == "sigmoid" and rec.specs["ct"].likelihood == "gaussian"
    clinical_only = json.loads(json.dumps(cfg))
    clinical_only["modalities"] = [clinical_only["modalities"][2]]
    imputer = build_cohort_recovery(CohortSpec.from_config(clinical_only), out["stats_file"])
    assert isinstance(imputer, IterativeImputerRecovery) and imputer.categorical == {"clinical": {1: 2}}
    assert np.isfinite(float(logits.sum()))


def test_fresh_and_cached_patients_collate_together(tiny):
    """A batch mixing freshly computed and disk-cached patients (a resumed run) has the same tensor types."""
    cfg, spec, out, root = tiny
    ds = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache="disk", cache_dir=root / "mixed")
    cached = ds[0]
    again = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache="disk", cache_dir=root / "mixed")
    batch = list_data_collate([again[0], again[1]])  # patient 0 from the cache, patient 1 computed now
    assert tuple(batch["clinical"].shape) == (2, 2) and present_modality_names(batch["present"]) == spec.modality_names
    assert type(cached["clinical"]) is type(again[1]["clinical"])


def test_missingness_summary_counts_each_patient_once_over_epochs(caplog):
    """A trainer runs many epochs; the summary describes the data, so each patient is counted once."""
    from monai.utils import optional_import

    Engine, _ = optional_import("ignite.engine", name="Engine")
    batches = [{"modality_reasons": {"ct": ["observed", "absent: x"]}}, {"modality_reasons": {"ct": ["observed"]}}]
    engine = Engine(lambda e, b: None)
    handler = MissingnessSummaryHandler(["ct"], name="training")
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="monai_dymo.missingness"):
        engine.run(batches, max_epochs=3)
    assert handler.lines() == ["training / ct: 2 of 3 observed; missing: absent 1"]
    assert caplog.text.count("training / ct:") == 1


def test_shared_encoders_learn_from_every_sequence(tiny):
    cfg, spec, out, root = tiny
    two = json.loads(json.dumps(cfg))
    ct = next(m for m in two["modalities"] if m["kind"] == "image3d")
    two["modalities"] = [ct, dict(ct, name="ct_late"), *[m for m in two["modalities"] if m["kind"] != "image3d"]]
    spec2 = CohortSpec.from_config(two)
    own = build_cohort_fusion(spec2, out["stats_file"], dim=16)
    shared = build_cohort_fusion(spec2, out["stats_file"], dim=16, share_encoders=True)
    assert own.encoders["ct"] is not own.encoders["ct_late"]
    assert shared.encoders["ct"] is shared.encoders["ct_late"]  # one encoder for the two volumes of one size
    assert shared.encoders["xray"] is not shared.encoders["ct"]  # another kind keeps its own
    n_own, n_shared = (sum(p.numel() for p in n.encoders["ct"].parameters()) for n in (own, shared))
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in shared.parameters()) == n_own == n_shared
    # the modality embedding still tells the two apart: same image, different tokens
    ds = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache=None)
    batch = list_data_collate([ds[i] for i in range(2)])
    inputs = {m: batch[m] for m in spec.modality_names} | {"ct_late": batch["ct"]}
    with torch.no_grad():
        torch.nn.init.normal_(shared.modality_embedding)  # as after training (it starts at zero)
        tokens = shared.encode(inputs)
    assert not torch.allclose(tokens["ct"], tokens["ct_late"])
    x = torch.randn(2, 1, *ct["spatial_size"])
    # a gradient through either name reaches the one set of weights; the weights file round-trips
    shared.encoders["ct_late"](x).sum().backward()
    assert all(p.grad is not None for p in shared.encoders["ct"].parameters())
    again = build_cohort_fusion(spec2, out["stats_file"], dim=16, share_encoders=True)
    again.load_state_dict(shared.state_dict())
    assert again.encoders["ct"] is again.encoders["ct_late"]
    assert torch.equal(again.encoders["ct_late"](x), shared.encoders["ct"](x))
