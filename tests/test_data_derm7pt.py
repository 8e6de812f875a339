"""derm7pt cohort files from a tiny made-up ``release_v0`` folder (never the real images): class grouping, inputs vs
outcomes, the missing clinical photo's reason, RGB kept with the photo's orientation, the official split, and the
cohort file through CohortSpec, the preprocessing and the bundle's prepare / train stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from monai_dymo.cohort import CohortSpec, build_cohort_fusion, build_cohort_recovery, build_preprocessing, load_split
from monai_dymo.data.__main__ import main as data_main
from monai_dymo.data.derm7pt import CLASSES, INPUT_FIELDS, OUTCOME_COLUMNS, build_derm7pt, diagnosis_class
from monai_dymo.report import image_planes
from monai_dymo.keys import DyMoKeys
from monai_dymo.transforms import AsRGB2D, RowsFirst2D

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cohort_dymo"

# (diagnosis, expected class): every string of the release, as the paper groups them
DIAGNOSES = [
    ("basal cell carcinoma", "BCC"), ("blue nevus", "NEV"), ("clark nevus", "NEV"), ("combined nevus", "NEV"),
    ("congenital nevus", "NEV"), ("dermal nevus", "NEV"), ("recurrent nevus", "NEV"), ("reed or spitz nevus", "NEV"),
    ("melanoma", "MEL"), ("melanoma (in situ)", "MEL"), ("melanoma (less than 0.76 mm)", "MEL"),
    ("melanoma (0.76 to 1.5 mm)", "MEL"), ("melanoma (more than 1.5 mm)", "MEL"), ("melanoma metastasis", "MEL"),
    ("dermatofibroma", "MISC"), ("lentigo", "MISC"), ("melanosis", "MISC"), ("miscellaneous", "MISC"),
    ("vascular lesion", "MISC"), ("seborrheic keratosis", "SK"),
]
MISSING_NOTE = "Clinical missing and replaced with derm"


def _photo(rng: np.random.Generator, label: int, w: int, h: int) -> Image.Image:
    """A landscape RGB photo (w > h): class in the colour, a red top row and a blue left column to check orientation."""
    img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, label % 3] += 180
    img[0, :] = (255, 0, 0)
    img[:, 0] = (0, 0, 255)
    return Image.fromarray(img, "RGB")


def make_release(root: Path, n: int = 40, seed: int = 0) -> Path:
    """A made-up ``release_v0``: images/<folder>/*.jpg|png, meta/meta.csv and the three index files."""
    rng = np.random.default_rng(seed)
    rel = root / "release_v0"
    (rel / "meta").mkdir(parents=True)
    rows = []
    for i in range(n):
        diagnosis = DIAGNOSES[i % len(DIAGNOSES)][0]
        label = CLASSES.index(diagnosis_class(diagnosis))
        folder = rel / "images" / f"F{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        clinic, derm = f"F{i % 3}/C{i:03d}.JPG", f"F{i % 3}/d{i:03d}.png"
        _photo(rng, label, 24, 16).save(rel / "images" / clinic, quality=95)
        _photo(rng, label + 1, 24, 16).save(rel / "images" / derm)
        note = MISSING_NOTE if i in (3, 17) else ""
        if i in (3, 17):
            clinic = derm  # as the release does: the dermoscopic photo put in the clinical photo's place
        rows.append({
            "case_num": i + 1, "diagnosis": diagnosis, "seven_point_score": i % 5, "pigment_network": "typical",
            "streaks": "absent", "pigmentation": "absent", "regression_structures": "absent",
            "dots_and_globules": "regular", "blue_whitish_veil": "absent", "vascular_structures": "absent",
            "level_of_diagnostic_difficulty": ("low", "medium", "high")[i % 3],
            "elevation": ("flat", "palpable", "nodular")[label % 3], "location": ("back", "acral", "chest")[i % 3],
            "sex": ("female", "male")[i % 2], "management": ("excision", "clinical follow up")[i % 2],
            "clinic": clinic, "derm": derm, "case_id": "", "notes": note,
        })
    pd.DataFrame(rows).to_csv(rel / "meta" / "meta.csv", index=False)
    order = rng.permutation(n)
    cut = [int(0.5 * n), int(0.7 * n)]
    for name, idx in (("train", order[: cut[0]]), ("valid", order[cut[0] : cut[1]]), ("test", order[cut[1] :])):
        pd.DataFrame({"indexes": sorted(idx.tolist())}).to_csv(rel / "meta" / f"{name}_indexes.csv", index=False)
    return rel


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("derm7pt")
    rel = make_release(root)
    out = root / "cohort"
    assert data_main(["derm7pt", "--source", str(rel), "--out", str(out), "--size", "8", "12"]) == 0
    return rel, out


def test_diagnosis_grouping_as_the_paper():
    for diagnosis, cls in DIAGNOSES:
        assert diagnosis_class(diagnosis) == cls, diagnosis
    assert diagnosis_class("  Clark  Nevus ") == "NEV"
    assert CLASSES == ("BCC", "NEV", "MEL", "MISC", "SK")
    with pytest.raises(ValueError, match="unknown diagnosis"):
        diagnosis_class("psoriasis")


def test_official_split_labels_and_outcomes_not_inputs(cohort):
    rel, out = cohort
    meta = pd.read_csv(rel / "meta" / "meta.csv")
    datalist = json.loads((out / "datalist.json").read_text())
    assert sorted(datalist) == ["testing", "training", "validation"]
    for split, fname in (("training", "train"), ("validation", "valid"), ("testing", "test")):
        idx = pd.read_csv(rel / "meta" / f"{fname}_indexes.csv")["indexes"].tolist()
        assert [e["patient_id"] for e in datalist[split]] == [f"case_{meta.iloc[i]['case_num']:04d}" for i in idx]
        for e, i in zip(datalist[split], idx):
            assert e["label"] == diagnosis_class(meta.iloc[i]["diagnosis"])
    clinical = pd.read_csv(out / "clinical.csv")
    assert list(clinical.columns) == ["patient_id", *INPUT_FIELDS]
    spec = CohortSpec.from_config(yaml.safe_load((out / "derm7pt.yaml").read_text())["cohort"])
    assert spec.modality_names == ("clinic", "derm", "metadata")
    assert spec.classes == CLASSES
    assert set(spec.clinical_fields) == {"sex", "location", "elevation"}
    assert not set(spec.clinical_fields) & set(OUTCOME_COLUMNS)
    assert not set(clinical.columns) & set(OUTCOME_COLUMNS)
    for e in (e for v in datalist.values() for e in v):  # no outcome reaches an entry except the label's source
        assert not set(e) & (set(OUTCOME_COLUMNS) - {"diagnosis"})
    assert [m.channels for m in spec.image_modalities] == [3, 3]
    assert spec.modality("derm").spatial_size == (8, 12)


def test_missing_clinical_photo_has_the_notes_reason(cohort):
    rel, out = cohort
    doc = yaml.safe_load((out / "derm7pt.yaml").read_text())
    spec = CohortSpec.from_config(doc["cohort"])
    assert Path(doc["work_dir"]).parent == out and Path(doc["model_dir"]).parent == out  # outputs beside the cohort
    entries = [e for split in spec.splits() for e in load_split(spec, split)]
    missing = {e[DyMoKeys.PATIENT_ID]: e for e in entries if e["clinic"] is None}
    assert sorted(missing) == ["case_0004", "case_0018"]
    for e in missing.values():
        reason = e[DyMoKeys.REASONS]["clinic"]
        assert reason.startswith("absent: ") and MISSING_NOTE in reason
    # through the tolerant loader: the datalist's reason, not "no file given", and a 3-channel placeholder
    from monai_dymo.cohort import prepare_cohort

    prepared = prepare_cohort(spec, out / "prepared", stats_file=out / "stats.json")
    patients = pd.read_csv(prepared["patients"]).set_index("patient_id")
    assert MISSING_NOTE in patients.loc["case_0004", "clinic"]
    pre = build_preprocessing(spec, out / "stats.json")
    e = pre(missing["case_0004"])
    assert MISSING_NOTE in e[DyMoKeys.REASONS]["clinic"]
    assert tuple(e["clinic"].shape) == (3, 8, 12) and not bool(e[DyMoKeys.PRESENT][0])
    assert bool(e[DyMoKeys.PRESENT][1]) and bool(e[DyMoKeys.PRESENT][2])


def test_rgb_kept_and_orientation(cohort, tmp_path):
    rel, out = cohort
    spec = CohortSpec.from_config(yaml.safe_load((out / "derm7pt.yaml").read_text())["cohort"])
    from monai_dymo.cohort import prepare_cohort

    prepare_cohort(spec, tmp_path, stats_file=tmp_path / "stats.json")
    entry = next(e for e in load_split(spec, "training") if e["clinic"] is not None)
    x = build_preprocessing(spec, tmp_path / "stats.json")(entry)["derm"]
    assert tuple(x.shape) == (3, 8, 12)  # RGB, rows x columns of the landscape photo
    assert float((x[0] - x[1]).abs().max()) > 0.1  # colour, not three copies of a gray picture
    # a photo with a red top row and a blue left column: rows first, as viewed
    photo = tmp_path / "p.png"
    img = np.zeros((16, 24, 3), np.uint8)
    img[0, :] = (255, 0, 0)
    img[:, 0] = (0, 0, 255)
    Image.fromarray(img).save(photo)
    small = CohortSpec.from_config({**yaml.safe_load((out / "derm7pt.yaml").read_text())["cohort"], "modalities": [
        {"name": "derm", "kind": "image2d", "spatial_size": [16, 24], "channels": 3}]})
    y = build_preprocessing(small)({"patient_id": "x", "derm": str(photo)})["derm"]
    assert tuple(y.shape) == (3, 16, 24)
    assert float(y[0, 0, 5:].min()) > 0.9 and float(y[2, 0, 5:].max()) < 0.1  # top row red
    assert float(y[2, 5:, 0].min()) > 0.9 and float(y[0, 5:, 0].max()) < 0.1  # left column blue
    (name, pic), = image_planes(y)
    assert pic.shape == (16, 24, 3) and pic[0, 10, 0] == 255 and pic[10, 0, 2] == 255  # the report draws it so
    # the transforms themselves
    assert tuple(AsRGB2D()(torch.rand(1, 4, 5)).shape) == (3, 4, 5)
    assert tuple(AsRGB2D()(torch.rand(4, 4, 5, 1)).shape) == (3, 4, 5)
    assert tuple(RowsFirst2D()(torch.rand(3, 4, 5)).shape) == (3, 5, 4)
    with pytest.raises(ValueError, match="channels"):
        AsRGB2D()(torch.rand(5, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        CohortSpec.from_config({"datalist": "d.json", "classes": ["a", "b"], "modalities": [
            {"name": "ct", "kind": "image3d", "spatial_size": [4, 4, 4], "channels": 3}]})
    with pytest.raises(ValueError, match="channels"):
        CohortSpec.from_config({"datalist": "d.json", "classes": ["a", "b"], "modalities": [
            {"name": "xray", "kind": "image2d", "spatial_size": [4, 4], "channels": 2}]})


def test_networks_take_three_channels(cohort, tmp_path):
    rel, out = cohort
    spec = CohortSpec.from_config(yaml.safe_load((out / "derm7pt.yaml").read_text())["cohort"])
    from monai_dymo.cohort import prepare_cohort

    prepare_cohort(spec, tmp_path, stats_file=tmp_path / "stats.json")
    net = build_cohort_fusion(spec, tmp_path / "stats.json", dim=16, channels_2d=(4, 8), proj_dim=8)
    x = {"clinic": torch.rand(2, 3, 8, 12), "derm": torch.rand(2, 3, 8, 12), "metadata": torch.zeros(2, 3)}
    logits, _ = net.fuse(net.encode(x), torch.ones(2, 3, dtype=torch.bool))
    assert tuple(logits.shape) == (2, 5)
    rec = build_cohort_recovery(spec, tmp_path / "stats.json", latent_dim=4, channels_2d=(4, 8))
    assert tuple(rec.specs["clinic"].shape) == (3, 8, 12)
    assert tuple(rec.specs["derm"].shape) == (3, 8, 12)


@pytest.mark.slow
def test_bundle_prepare_and_train_on_the_cohort_file(cohort):
    rel, out = cohort
    cohort_file = out / "derm7pt.yaml"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    small = ["--network_def#dim", "16", "--recovery_def#latent_dim", "8", "--num_threads", "1", "--cache", "memory",
             "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
             "--logging_file", str(BUNDLE / "configs" / "logging.conf")]
    for stage, extra in (("prepare", []), ("train", ["--max_epochs", "1"]), ("train_recovery", ["--max_epochs", "1"])):
        configs = [str(BUNDLE / "configs" / n) for n in ("common.yaml", "dymo.yaml", f"{stage}.yaml")]
        configs.append(str(cohort_file))
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
               "--bundle_root", str(BUNDLE), *small, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    models = out / "models"  # the cohort file's model_dir: nothing under the bundle
    for name in ("clinical_stats.json", "fusion.pt", "recovery.pt"):
        assert (models / name).is_file(), name
    assert (out / "runs" / "prepared" / "patients.csv").is_file()
    assert not (BUNDLE / "models" / "derm7pt").exists() and not (BUNDLE / "runs" / "derm7pt").exists()


def test_benchmark_removal_draws_are_seeded():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_derm7pt.py"
    spec = importlib.util.spec_from_file_location("bench_derm7pt", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ids = [str(i) for i in range(2000)]
    mods = ("clinic", "derm", "metadata")
    a = bench.removal_masks(ids, mods, ["clinic", "derm"], [0.3, 0.5], seed=0)
    b = bench.removal_masks(ids, mods, ["clinic", "derm"], [0.3, 0.5], seed=0)
    assert list(a) == ["natural", "clinic removed 0.3", "derm removed 0.3", "clinic removed 0.5", "derm removed 0.5"]
    assert not a["natural"].any()
    for name, mask in a.items():
        assert (mask == b[name]).all()
        assert not mask[:, 2].any()  # the metadata is never removed
    assert abs(a["derm removed 0.5"][:, 1].mean() - 0.5) < 0.05 and not a["derm removed 0.5"][:, 0].any()
    assert abs(a["clinic removed 0.3"][:, 0].mean() - 0.3) < 0.05
