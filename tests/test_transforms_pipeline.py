"""Transforms composed with Dataset / CacheDataset / DataLoader, and the bundle config fragments in transforms/."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, NormalizeIntensityd
from monai_dymo.transforms import (
    ClinicalFieldStats,
    HarmonizeModalitiesd,
    LoadModalitiesd,
    RandSimulateMissingModalitiesd,
    is_placeholder,
    write_missing_patterns,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BRAIN = SHARED / "brain_mri_samples"
FRAGMENTS = ROOT / "transforms"
SEQS = ["t1", "t1c", "t2", "flair"]


def _small_copy(src: Path, dst: Path, step: int = 4) -> Path:
    img = nib.load(str(src))
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::step, ::step, ::step], affine), str(dst))
    return dst


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[dict]:
    """Three patients from real volumes (subsampled copies) with different missing patterns."""
    if not BRAIN.is_dir():
        pytest.skip(f"brain MRI samples not found at {BRAIN}")
    root = tmp_path_factory.mktemp("cohort")
    a, b = BRAIN / "BraTS-GLI-00001-000", BRAIN / "TCGA-DU-7294"
    pa, pb = root / "A", root / "B"
    pa.mkdir()
    pb.mkdir()
    files_a = {s: _small_copy(a / f"{s}.nii.gz", pa / f"{s}.nii.gz") for s in ("t1", "t2", "flair")}
    files_b = {s: _small_copy(b / f"{s}.nii.gz", pb / f"{s}.nii.gz") for s in ("t1c",)}
    broken = pb / "t2.nii.gz"
    broken.write_bytes((b / "t2.nii.gz").read_bytes()[:5000])
    return [
        {"patient_id": "A", "index": 0, "label": 1, **{k: str(v) for k, v in files_a.items()}, "t1c": ""},
        {"patient_id": "B", "index": 1, "label": 0, "t1": None, "t1c": str(files_b["t1c"]), "t2": str(broken),
         "flair": str(pb / "flair.nii.gz")},
        {"patient_id": "C", "index": 2, "label": 0, "t1": str(root / "C" / "t1.nii.gz")},
    ]


def _pipeline(rate: float) -> tuple[Compose, Compose]:
    deterministic = Compose([
        LoadModalitiesd(SEQS, spatial_size=(16, 16, 16)),
        HarmonizeModalitiesd(SEQS, axcodes="RAS", pixdim=(8.0, 8.0, 8.0), spatial_size=(16, 16, 16)),
        NormalizeIntensityd(SEQS, nonzero=True, channel_wise=True),
    ])
    return deterministic, Compose([*deterministic.transforms, RandSimulateMissingModalitiesd(SEQS, rate=rate)])


def test_dataset_cachedataset_dataloader_collation(cohort):
    deterministic, full = _pipeline(rate=0.5)
    expected_present = [[True, False, True, True], [False, True, False, False], [False, False, False, False]]

    plain = list(DataLoader(Dataset(cohort, deterministic), batch_size=3))
    assert len(plain) == 1
    b = plain[0]
    assert b["present"].dtype == torch.bool and b["present"].tolist() == expected_present
    assert all(b[s].shape == (3, 1, 16, 16, 16) for s in SEQS)
    assert b["modality_reasons"]["t1c"][0].startswith("absent")
    assert b["modality_reasons"]["t2"][1].startswith("unreadable: ") and "B/t2.nii.gz" in b["modality_reasons"]["t2"][1]
    assert b["modality_reasons"]["flair"][1].startswith("file not found: ")
    assert b["modality_reasons"]["t1"][2].startswith("file not found: ")
    assert b["error"][:2] == ["", ""] and b["error"][2].startswith("no modality observed")
    assert b["patient_id"] == ["A", "B", "C"] and b["label"].tolist() == [1, 0, 0]
    assert b["t1"].meta["dymo_placeholder"].tolist() == [False, True, True]
    assert float(b["t1c"][0].abs().max()) == 0.0 and float(b["t1"][0].abs().max()) > 0.0

    cached = CacheDataset(cohort, full, cache_rate=1.0, num_workers=0, progress=False)
    seen = []
    loader = DataLoader(cached, batch_size=2, shuffle=False)
    for _ in range(4):  # epochs
        for batch in loader:
            seen.append(batch["present"])
            assert batch["present"].shape[1] == 4
    present = torch.cat(seen).view(4, 3, 4)
    # simulated drops only remove observed modalities, keep one, and vary between epochs
    assert (present <= torch.tensor(expected_present)).all()
    assert present[:, 0].any(dim=1).all() and present[:, 1].all(dim=0).tolist() == expected_present[1]
    assert len({tuple(p[0].tolist()) for p in present}) > 1
    # the cache itself is never modified by the random transform
    for item in cached._cache:
        assert all(not r.startswith("simulated") for r in item["modality_reasons"].values())


def _parser(*files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(FRAGMENTS / f) for f in files])
    for k, v in overrides.items():
        parser[k.replace("__", "#")] = v
    return parser


def test_nifti_fragment_merged_with_clinical_fragment(cohort, tmp_path):
    csv = tmp_path / "clinical.csv"
    csv.write_text("patient_id,age,sex,crp,wbc,grade\nA,50,M,1.0,5.0,2\nB,,F,-999,6.0,3\nC,70,M,,7.0,2\n")
    stats = tmp_path / "stats.json"
    parser = _parser(
        "nifti_mri.yaml",
        "clinical_csv.yaml",
        nifti_mri__spatial_size=[16, 16, 16],
        nifti_mri__pixdim=[8.0, 8.0, 8.0],
        nifti_mri__all_modalities="$@nifti_mri#modalities + @clinical_csv#modalities",
        clinical_csv__all_modalities="@nifti_mri#all_modalities",
        clinical_csv__csv_file=str(csv),
        clinical_csv__stats_file=str(stats),
        pipeline={"_target_": "Compose", "transforms": "$@nifti_mri#transforms + @clinical_csv#transforms"},
    )
    parser.get_parsed_content("clinical_csv#save_stats")
    assert ClinicalFieldStats.load(stats).categorical["sex"] == ["F", "M"]
    pipeline = parser.get_parsed_content("pipeline")
    rows = {"A": {"age": 50, "sex": "M", "crp": 1.0, "wbc": 5.0, "grade": 2},
            "B": {"age": float("nan"), "sex": "F", "crp": -999, "wbc": 6.0, "grade": 3},
            "C": {"age": 70, "sex": "M", "crp": float("nan"), "wbc": 7.0, "grade": 2}}
    out = [pipeline(dict(item, **rows[item["patient_id"]])) for item in cohort]
    assert [o["present"].tolist() for o in out] == [
        [True, False, True, True, True, True],
        [False, True, False, False, True, True],
        [False, False, False, False, True, True],
    ]
    assert all(o["error"] == "" for o in out)  # patient C has clinical data only
    assert out[0]["t1"].shape == (1, 16, 16, 16) and out[0]["labs"].shape == (3,)
    assert list(out[0]["modality_reasons"]) == SEQS + ["demographics", "labs"]

    item = parser.get_parsed_content("clinical_csv#dataset")[1]  # CSVDataset row of patient B
    assert item["patient_id"] == "B" and item["present"].tolist() == [False] * 4 + [True, True]
    assert item["field_mask"]["labs"].tolist() == [False, True, True] and item["error"] == ""  # images still pending

    aug = _parser("nifti_mri.yaml", nifti_mri__missing_rate=1.0).get_parsed_content("nifti_mri#train_augmentation")
    dropped = aug(out[0])
    assert int(dropped["present"][:4].sum()) == 1


def test_dicom_fragment_on_pydicom_series():
    pydicom = pytest.importorskip("pydicom")
    folder = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    if not folder.is_dir():
        pytest.skip(f"pydicom dicomdirtests not found at {folder}")
    pipeline = _parser("dicom_series.yaml").get_parsed_content("dicom_series#preprocessing")
    out = pipeline({"patient_id": "98892001", "ct": str(folder), "mr": str(folder.parent / "MR_missing")})
    assert out["present"].tolist() == [True, False]
    assert out["ct"].shape == out["mr"].shape == (1, 64, 64, 32)
    assert is_placeholder(out["mr"]) and out["modality_reasons"]["mr"].startswith("file not found: ")
    assert abs(float(out["ct"].mean())) < 1e-4  # normalised


def test_polymnist_fragment_png_and_pattern(tmp_path):
    mnist = SHARED / "mnist" / "mnist.npz"
    if not mnist.is_file():
        pytest.skip(f"MNIST not found at {mnist}")
    from PIL import Image

    with np.load(mnist) as f:
        digits = f["x_test"][:5]
    names = ["m0", "m1", "m2", "m3", "m4"]
    arrays = {}
    for k, n in enumerate(names):  # an RGB PNG per modality: digit k on a coloured background
        rgb = np.stack([digits[k], 255 - digits[k], np.full_like(digits[k], 40 * k)], axis=-1)
        Image.fromarray(rgb).save(tmp_path / f"{n}.png")
        arrays[n] = rgb
    masks = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 1]], bool)
    pattern = tmp_path / "pattern.csv"
    write_missing_patterns(pattern, masks, names)
    parser = _parser("polymnist.yaml", polymnist__pattern_csv=str(pattern))
    load = parser.get_parsed_content("polymnist#preprocessing")
    evaluate = parser.get_parsed_content("polymnist#eval_missingness")
    sample = {"patient_id": "test-0", "index": 0, "m4": "", **{n: str(tmp_path / f"{n}.png") for n in names[:4]}}
    out = load(sample)
    for n in names[:4]:
        assert out[n].shape == (3, 28, 28)
        torch.testing.assert_close(out[n].as_tensor(), torch.from_numpy(arrays[n].transpose(2, 0, 1) / 255.0).float())
    assert out["present"].tolist() == [True, True, True, True, False] and out["m4"].shape == (3, 28, 28)
    final = evaluate(out)
    assert final["present"].tolist() == [True, False, True, False, False]
    assert final["modality_reasons"]["m1"] == "simulated missing: pattern pattern.csv index 0"
    assert final["modality_reasons"]["m4"].startswith("absent")

    # in-memory channel-first images in [0, 1] (e.g. PolyMNISTDataset items)
    mem = _parser("polymnist.yaml", polymnist__intensity_max=1.0).get_parsed_content("polymnist#preprocessing")
    item = {n: torch.from_numpy(arrays[n].transpose(2, 0, 1) / 255.0).float() for n in names}
    got = mem(dict(item, index=1))
    assert got["present"].all() and torch.equal(got["m2"].as_tensor(), item["m2"])


def test_image_2d_fragment_rgb_rgba_gray_and_dicom_frame(tmp_path):
    """RGB, RGBA and gray pictures and a single DICOM frame all become [1, H, W] and batch together."""
    from monai.data import list_data_collate
    from PIL import Image

    rng = np.random.default_rng(0)
    pic = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pic, "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(pic, "RGB").convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pic, "RGB").convert("L").save(tmp_path / "gray.jpg")
    pipeline = _parser("image_2d.yaml", image_2d__spatial_size=[32, 32]).get_parsed_content("image_2d#preprocessing")
    files = ["rgb.png", "rgba.png", "gray.jpg"]
    outs = [pipeline({"patient_id": f, "xray": str(tmp_path / f)}) for f in files]
    pydicom = pytest.importorskip("pydicom")
    frame = pydicom.data.get_testdata_file("CT_small.dcm")
    outs.append(pipeline({"patient_id": "dicom", "xray": frame}))
    outs.append(pipeline({"patient_id": "none", "xray": None}))
    for o in outs:
        assert tuple(o["xray"].shape) == (1, 32, 32), o["patient_id"]
    assert [bool(o["present"][0]) for o in outs] == [True, True, True, True, False]
    assert all(0.0 <= float(o["xray"].min()) and float(o["xray"].max()) <= 1.0 for o in outs)
    # RGB and RGBA of the same picture give the same grayscale image
    torch.testing.assert_close(outs[0]["xray"].as_tensor(), outs[1]["xray"].as_tensor())
    assert tuple(list_data_collate(outs)["xray"].shape) == (5, 1, 32, 32)
