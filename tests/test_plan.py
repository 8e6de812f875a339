"""The cohort's plan: fingerprint -> documented choices with reasons, cohort-file overrides, plan.json, rare classes."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from monai_dymo.cohort import CohortSpec, fingerprint, load_plan, make_plan, prepare_cohort, write_plan
from monai_dymo.cohort.plan import CHOICES, NETWORK_CHOICES, Plan, imbalance_warnings
from tests.cohort_fixtures import make_tiny_cohort


def _fp(kinds: list[tuple[str, str, list[int]]], train: int, counts: dict[str, int]) -> dict:
    """A made-up fingerprint: modalities (name, kind, size), training patients, training class counts."""
    mods = [{"name": n, "kind": k, "spatial_size": s, "channels": 1} if k != "clinical"
            else {"name": n, "kind": k, "fields": 3} for n, k, s in kinds]
    return {"cohort": "made_up", "classes": list(counts), "modalities": mods, "patients": {"training": train},
            "class_counts": {"training": counts}, "observed_subsets": {}}


SMALL_2D = _fp([("xray", "image2d", [128, 128])], 60, {"normal": 50, "abnormal": 10})
LARGE_3D = _fp([("t1", "image3d", [64, 64, 64]), ("flair", "image3d", [64, 64, 64]), ("clinical", "clinical", [])],
               420, {"a": 140, "b": 140, "c": 140})


def test_plan_of_a_small_2d_and_a_large_3d_cohort_gives_the_documented_choices_with_reasons():
    small, large = make_plan(SMALL_2D), make_plan(LARGE_3D)
    # encoders: the small CNN for the kinds the cohort has; the other kind is unused and says so
    assert small.backbone_2d == "small" and small.channels_2d == (16, 32, 64) and "xray 128x128" in small.reasons[
        "backbone_2d"]
    assert "no image3d modality" in small.reasons["backbone_3d"]
    assert large.backbone_3d == "small" and "t1 64x64x64" in large.reasons["backbone_3d"]
    assert "no image2d modality" in large.reasons["backbone_2d"]
    assert small.image_size == {"xray": (128, 128)} and large.image_size == {"t1": (64,) * 3, "flair": (64,) * 3}
    # batch size from the training patients: < 100 -> 4, >= 300 -> 16
    assert (small.batch_size, large.batch_size) == (4, 16)
    assert "60 training patients" in small.reasons["batch_size"]
    assert make_plan(_fp([("x", "image2d", [32, 32])], 150, {"a": 75, "b": 75})).batch_size == 8
    # class weighting: balanced when the smallest class is under 0.8 / C of the patients (10/60 < 40 %), else none
    assert small.class_weighting == "balanced" and "'abnormal': 10 of 60" in small.reasons["class_weighting"]
    assert large.class_weighting == "none" and "near 1" in large.reasons["class_weighting"]
    # one modality: no per-modality auxiliary loss (its only subset is the modality alone)
    assert (small.unimodal_weight, large.unimodal_weight) == (0.0, 3.0)
    for plan in (small, large):
        assert (plan.logit_fusion, plan.checkpoint, plan.checkpoint_metric) == ("transformer", "best",
                                                                                "balanced_accuracy")
        assert (plan.max_epochs, plan.lr_schedule, plan.folds) == (60, "cosine", 1)
        assert all(plan.reasons.get(k) for k in CHOICES), [k for k in CHOICES if not plan.reasons.get(k)]
        assert set(plan.network) == set(NETWORK_CHOICES)
        assert len(plan.table()) == len(CHOICES)
    # unknown counts (no datalist read): batch 8 and class weighting on
    blind = make_plan({**SMALL_2D, "patients": {}, "class_counts": {}})
    assert (blind.batch_size, blind.class_weighting) == (8, "balanced")


def test_cohort_file_overrides_win_and_are_checked():
    plan = make_plan(LARGE_3D, {"backbone_3d": "none", "histogram_bins_3d": 10, "logit_fusion": "product",
                                "batch_size": 2, "strides_3d": [2, 2, 1]})
    assert (plan.backbone_3d, plan.histogram_bins_3d, plan.logit_fusion, plan.batch_size) == ("none", 10, "product", 2)
    assert plan.strides_3d == (2, 2, 1) and plan.network["strides_3d"] == (2, 2, 1)
    assert plan.reasons["batch_size"] == "cohort file (plan: batch_size); the rule gives 16"
    assert plan.class_weighting == "none" and "cohort file" not in plan.reasons["class_weighting"]
    for bad, message in (({"batchsize": 4}, "unknown key(s) ['batchsize']"),
                         ({"backbone_3d": "cnn"}, "backbone_3d must be one of"),
                         ({"batch_size": 0}, "batch_size must be a positive integer"),
                         ({"class_weighting": "inverse"}, "class_weighting must be one of ['balanced', 'none']"),
                         ({"channels_3d": [16, "x"]}, "channels_3d must be a list of positive integers"),
                         ({"image_size": {"t1": [32, 32, 32]}}, "image_size is set by the cohort file elsewhere")):
        with pytest.raises(ValueError, match=re.escape(message)):
            make_plan(LARGE_3D, bad)


def test_spec_reads_and_checks_the_plan_block(tmp_path):
    cfg = make_tiny_cohort(tmp_path / "data", n_train=3, n_val=3, n_test=3, size=8)
    assert CohortSpec.from_config(cfg).plan_overrides == {}
    spec = CohortSpec.from_config({**cfg, "plan": {"max_epochs": 5, "checkpoint": "last"}})
    assert spec.plan_overrides == {"max_epochs": 5, "checkpoint": "last"}
    with pytest.raises(ValueError, match=r"cohort plan: unknown key\(s\) \['epochs'\]"):
        CohortSpec.from_config({**cfg, "plan": {"epochs": 5}})
    with pytest.raises(ValueError, match="cohort plan: must be a mapping"):
        CohortSpec.from_config({**cfg, "plan": ["max_epochs", 5]})


def test_fingerprint_counts_patients_classes_and_observed_subsets(tmp_path):
    from monai_dymo.cohort import load_split

    cfg = make_tiny_cohort(tmp_path / "data", n_train=12, n_val=6, n_test=6, size=8)
    spec = CohortSpec.from_config(cfg)
    splits = {s: load_split(spec, s) for s in ("training", "validation", "testing")}
    fp = fingerprint(spec, splits)
    assert fp["patients"] == {"training": 12, "validation": 6, "testing": 6}
    assert fp["class_counts"]["training"] == {"a": 4, "b": 4, "c": 4}
    assert sum(fp["observed_subsets"]["training"].values()) == 12
    # patient p001 has no CT (k % 4 == 1); p003 has no clinical row (k % 7 == 3)
    assert fp["observed_subsets"]["training"]["xray+clinical"] >= 1
    assert any("clinical" not in k for k in fp["observed_subsets"]["training"])
    assert [m["name"] for m in fp["modalities"]] == ["ct", "xray", "clinical"]
    assert fp["modalities"][0] == {"name": "ct", "kind": "image3d", "spatial_size": [8, 8, 8], "channels": 1}
    json.dumps(fp)  # JSON-ready
    assert fingerprint(spec)["patients"] == {}  # the spec alone: no counts


def test_plan_json_round_trip_and_load_plan(tmp_path, caplog):
    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=8)
    spec = CohortSpec.from_config(cfg)
    models = tmp_path / "models"
    with caplog.at_level(logging.INFO, logger="monai_dymo.cohort"):
        computed = load_plan(spec, models)  # no plan.json: computed on the fly from the datalist, said in the log
    assert "computed on the fly from the datalist" in caplog.text
    assert computed.fingerprint["patients"]["training"] == 6 and computed.batch_size == 4
    out = prepare_cohort(spec, tmp_path / "prepared", stats_file=models / "clinical_stats.json")
    assert out["plan_file"] == str(models / "plan.json")
    doc = json.loads(Path(out["plan_file"]).read_text())
    assert set(doc["choices"]) == set(doc["reasons"]) == set(CHOICES) and all(doc["reasons"].values())
    stored = Plan.from_json(Path(out["plan_file"]).read_text())
    assert stored == make_plan(stored.fingerprint)
    # the file's choices are read as they are (here edited by hand to show it)
    doc["choices"]["max_epochs"] = 7
    (models / "plan.json").write_text(json.dumps(doc))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_dymo.cohort"):
        assert load_plan(spec, tmp_path / "seed1", models).max_epochs == 7  # the fallback folder's plan
    assert f"plan: {models / 'plan.json'}" in caplog.text
    # a plan block added to the cohort file after prepare still wins (made again from the file's fingerprint)
    spec2 = CohortSpec.from_config({**cfg, "plan": {"batch_size": 2}})
    again = load_plan(spec2, models)
    assert again.batch_size == 2 and again.fingerprint == stored.fingerprint
    # a plan made for other modalities is not used
    other = make_plan({**stored.fingerprint, "classes": ["x", "y"]})
    write_plan(other, models / "plan.json")
    assert load_plan(spec, models).fingerprint["classes"] == ["a", "b", "c"]
    doc["choices"]["batch_size"] = 0  # a wrong value edited in names the file and the choice
    (models / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(f"{models / 'plan.json'}: batch_size must be a positive integer")):
        load_plan(spec, models)
    (models / "plan.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a plan written by the prepare stage"):
        load_plan(spec, models)


def _two_class_cohort(root: Path, counts: tuple[int, int]) -> CohortSpec:
    """A 2-class cohort of pictures given as null (nothing to read) with ``counts`` training patients per class."""
    labels = ["common"] * counts[0] + ["rare"] * counts[1]
    datalist = {"training": [{"patient_id": f"t{i}", "label": y, "xray": None} for i, y in enumerate(labels)],
                "validation": [{"patient_id": f"v{i}", "label": ["common", "rare"][i % 2], "xray": None}
                               for i in range(6)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "datalist.json").write_text(json.dumps(datalist))
    return CohortSpec.from_config({"name": "two", "datalist": str(root / "datalist.json"),
                                   "classes": ["common", "rare"],
                                   "modalities": [{"name": "xray", "kind": "image2d", "spatial_size": [8, 8]}]})


def test_a_rare_class_is_warned_about_in_prepare_and_check(tmp_path, caplog):
    import yaml

    from monai_dymo.cohort.check import check_cohort

    skewed = _two_class_cohort(tmp_path / "skewed", (84, 16))
    with caplog.at_level(logging.INFO, logger="monai_dymo.cohort"):
        out = prepare_cohort(skewed, tmp_path / "skewed" / "prepared")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["class 'rare' has 16 of 100 training patients (16.0 %), under 20 %: class weighting is on "
                        "(balanced: its rows weigh 3.12)"]
    assert json.loads(Path(out["plan_file"]).read_text())["choices"]["class_weighting"] == "balanced"
    cohort_file = tmp_path / "skewed.yaml"
    cohort = {"name": "two", "datalist": str(tmp_path / "skewed" / "datalist.json"), "classes": ["common", "rare"],
              "modalities": [{"name": "xray", "kind": "image2d", "spatial_size": [8, 8]}],
              "plan": {"class_weighting": "none"}}
    cohort_file.write_text(yaml.safe_dump({"cohort": cohort}))
    problems, notes = check_cohort(cohort_file)
    assert not problems
    lines = [n for n in notes if n.startswith("warning: ")]
    assert len(lines) == 1 and "class 'rare' has 16 of 100" in lines[0] and "class weighting is off" in lines[0]
    assert any(n.strip().startswith("class_weighting") and "cohort file" in n for n in notes)
    assert any(n.startswith("plan (") for n in notes)

    balanced = _two_class_cohort(tmp_path / "balanced", (50, 50))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_dymo.cohort"):
        prepare_cohort(balanced, tmp_path / "balanced" / "prepared")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert imbalance_warnings(fingerprint(balanced), "balanced") == []  # no counts, no warning


def test_imbalance_warning_share_is_relative_for_many_classes():
    """Six even classes hold 16.7 % each: none is rare (the limit is min(20 %, 0.8 / C) = 13.3 %)."""
    even = _fp([("x", "image2d", [8, 8])], 60, {str(c): 10 for c in range(6)})
    assert imbalance_warnings(even, "none") == []
    skew = _fp([("x", "image2d", [8, 8])], 60, {"0": 5, **{str(c): 11 for c in range(1, 6)}})
    assert len(imbalance_warnings(skew, "balanced")) == 1
