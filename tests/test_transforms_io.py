"""Tolerant loading on real files: NIfTI brain MRI, pydicom's DICOM series, NRRD through SimpleITK; harmonisation;
datalist checks. Every missing case is made from copies of real files in a temp dir."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai.data import PydicomReader
from monai.transforms import LoadImage
from monai_dymo.keys import Reason
from monai_dymo.transforms import (
    HarmonizeModalitiesd,
    LoadModalitiesd,
    LoadModality,
    check_datalist,
    inspect_dicom_series,
    is_placeholder,
    reason_prefix,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri_samples"
PATIENT = DATA / "AURORA-example"
SEQS = ("t1", "t1c", "t2", "flair")

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def _need_data() -> None:
    if not PATIENT.is_dir():
        pytest.skip(f"brain MRI samples not found at {DATA}")


def _small_copy(src: Path, dst: Path, step: int = 4, flip_x: bool = False) -> Path:
    """Real volume subsampled by ``step`` (affine adjusted), optionally stored with the x axis reversed."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)[::step, ::step, ::step]
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    if flip_x:  # same physical image, voxel axis 0 reversed
        data = data[::-1]
        affine = affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(dst))
    return dst


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """Subsampled (60x60x39) copies of the four sequences of one real patient."""
    _need_data()
    root = tmp_path_factory.mktemp("small_mri")
    return {s: _small_copy(PATIENT / f"{s}.nii.gz", root / f"{s}.nii.gz") for s in SEQS}


def _write_series(src: Path, folder: Path, n: int, dz: float = 5.0, skip: tuple[int, ...] = ()) -> list[Path]:
    """A series of ``n`` slices built from one real DICOM file: positions z0 + i*dz, InstanceNumber i + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(str(src))
    z0 = float(base.ImagePositionPatient[2])
    series_uid = pydicom.uid.generate_uid()
    out = []
    for i in range(n):
        if i in skip:
            continue
        ds = pydicom.dcmread(str(src))
        x0, y0 = float(base.ImagePositionPatient[0]), float(base.ImagePositionPatient[1])
        ds.ImagePositionPatient = [x0, y0, z0 + i * dz]
        ds.InstanceNumber = i + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"slice{i:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        out.append(path)
    return out


def _rescaled(path) -> np.ndarray:
    """Stored pixel values with the modality rescale applied (as MONAI's PydicomReader returns them)."""
    ds = pydicom.dcmread(str(path))
    return (ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ NIfTI


def test_real_nifti_observed_and_every_missing_case(tmp_path, small, caplog):
    _need_data()
    t2_bytes = (PATIENT / "t2.nii.gz").read_bytes()
    truncated = tmp_path / "t2_truncated.nii.gz"
    truncated.write_bytes(t2_bytes[: len(t2_bytes) // 3])
    corrupt = tmp_path / "flair_corrupt.nii.gz"
    corrupt.write_bytes(b"\x00" * 64 + t2_bytes[64:4096])
    constant = tmp_path / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), 7, np.int16), np.eye(4)), str(constant))
    deleted = tmp_path / "t1c_deleted.nii.gz"
    shutil.copy(small["t1c"], deleted)
    deleted.unlink()

    keys = ["t1", "t1c", "t2", "flair", "pd", "dwi", "adc", "swi", "zero"]
    sample = {
        "patient_id": "AURORA-example",
        "t1": str(small["t1"]),
        "t1c": str(deleted),
        "t2": str(truncated),
        "flair": str(corrupt),
        # "pd" absent from the sample
        "dwi": "",
        "adc": float("nan"),  # blank cell of a CSV datalist
        "swi": None,
        "zero": str(constant),
    }
    with caplog.at_level(logging.WARNING, logger="monai_dymo.transforms"):
        out = LoadModalitiesd(keys=keys, spatial_size=(64, 64, 64))(sample)

    reasons = out["modality_reasons"]
    assert list(reasons) == keys
    expected = {
        "t1": Reason.OBSERVED,
        "t1c": Reason.FILE_NOT_FOUND,
        "t2": Reason.UNREADABLE,
        "flair": Reason.UNREADABLE,
        "pd": Reason.ABSENT,
        "dwi": Reason.ABSENT,
        "adc": Reason.ABSENT,
        "swi": Reason.ABSENT,
        "zero": Reason.EMPTY_IMAGE,
    }
    assert {k: reason_prefix(v) for k, v in reasons.items()} == expected
    assert reasons["t1"] == "observed"
    for key, path in (("t1c", deleted), ("t2", truncated), ("flair", corrupt), ("zero", constant)):
        assert reasons[key].startswith(f"{expected[key].value}: ") and str(path) in reasons[key], reasons[key]
    assert reasons["pd"] == "absent: key 'pd' not in sample"
    assert reasons["dwi"] == "absent: no file given for dwi" and reasons["swi"] == "absent: no file given for swi"
    assert out["present"].dtype == torch.bool
    assert out["present"].tolist() == [k == "t1" for k in keys]
    assert out["error"] == ""

    # observed: the real data, unchanged, channel first
    ref = np.asarray(nib.load(str(small["t1"])).dataobj).astype(np.float32)
    assert out["t1"].shape == (1, *ref.shape) and not is_placeholder(out["t1"])
    np.testing.assert_array_equal(out["t1"][0].numpy(), ref)
    # missing: zeros of the configured placeholder shape, with the observed image's affine and its reason in the meta
    for key in keys[1:]:
        img = out[key]
        assert is_placeholder(img) and img.shape == (1, 64, 64, 64) and img.dtype == torch.float32
        assert float(img.abs().max()) == 0.0
        assert img.meta["dymo_reason"] == reasons[key]
        torch.testing.assert_close(img.affine, out["t1"].affine)
    # one warning per missing modality naming patient, modality and file
    messages = [r.getMessage() for r in caplog.records]
    for key in keys[1:]:
        hits = [m for m in messages if f"modality {key}:" in m]
        assert len(hits) == 1 and "AURORA-example" in hits[0], (key, messages)
    assert any(str(truncated) in m for m in messages)


def test_patient_with_nothing_observed_is_flagged_not_raised(tmp_path, caplog):
    sample = {"patient_id": "p-empty", "t1": str(tmp_path / "nope.nii.gz"), "t2": None}
    with caplog.at_level(logging.WARNING, logger="monai_dymo.transforms"):
        out = LoadModalitiesd(keys=["t1", "t2", "flair"])(sample)
    assert not out["present"].any()
    assert out["error"].startswith("no modality observed: ")
    assert "t1=file not found" in out["error"] and "t2=absent" in out["error"] and "flair=absent" in out["error"]
    assert all(out[k].shape == (1, 1, 1, 1) for k in ("t1", "t2", "flair"))  # fallback shape without spatial_size
    assert any("p-empty" in r.getMessage() and "no modality observed" in r.getMessage() for r in caplog.records)


def test_placeholder_takes_shape_of_first_observed_without_spatial_size(small):
    out = LoadModalitiesd(keys=["t2", "flair"])({"t2": str(small["t2"]), "flair": ""})
    assert out["flair"].shape == out["t2"].shape == (1, 60, 60, 39)
    assert is_placeholder(out["flair"]) and not is_placeholder(out["t2"])


def test_unknown_modality_key_is_a_configuration_error():
    with pytest.raises(ValueError, match="unknown modality key.*'t9'"):
        LoadModalitiesd(keys=["t1", "t9"], modalities=["t1", "t2"])


def test_in_memory_arrays_observed_constant_and_nan():
    loader = LoadModality(spatial_size=(4, 4), channels=3, spatial_dims=2)
    rng = np.random.default_rng(0)
    img, reason = loader(rng.random((3, 4, 4)).astype(np.float32))
    assert reason == "observed" and img.shape == (3, 4, 4)
    img, reason = loader(np.ones((3, 4, 4)), patient_id="p", modality="m")
    assert reason.startswith("empty image: ") and "constant" in reason and is_placeholder(img)
    _, reason = loader(torch.full((3, 4, 4), float("nan")))
    assert reason.startswith("empty image: ") and "no finite voxel" in reason
    _, reason = loader(np.zeros((3, 0, 4)))
    assert reason.startswith("empty image: ") and "no voxels" in reason


@pytest.mark.parametrize("reader", ["NibabelReader", None])
def test_empty_and_garbage_files_give_the_real_cause(tmp_path, reader):
    """With the NIfTI recipe's designated NibabelReader, MONAI's LoadImage reports "cannot find a suitable reader ...
    install the reader libraries"; the reason must say what is wrong with the file instead."""
    empty = tmp_path / "flair.nii.gz"
    empty.write_bytes(b"")
    garbage_gz = tmp_path / "t1.nii.gz"
    garbage_gz.write_bytes(b"this is not an image\n" * 20)
    garbage = tmp_path / "t2.nii"
    garbage.write_bytes(b"this is not an image\n" * 20)
    sample = {"patient_id": "P1", "flair": str(empty), "t1": str(garbage_gz), "t2": str(garbage)}
    out = LoadModalitiesd(["t1", "t2", "flair"], reader=reader, spatial_size=(4, 4, 4))(sample)
    r = out["modality_reasons"]
    assert r["flair"] == f"unreadable: {empty}: file is empty (0 bytes)"
    for key, path in (("t1", garbage_gz), ("t2", garbage)):
        assert r[key].startswith(f"unreadable: {path}: not a NIfTI file (nibabel: "), r[key]
    for reason in r.values():
        assert "suitable reader" not in reason and "install" not in reason and "PILReader" not in reason
    assert out["present"].tolist() == [False, False, False]


# ------------------------------------------------------------------------------------------------ NRRD


def test_nrrd_through_simpleitk_matches_nifti(tmp_path, small):
    sitk = pytest.importorskip("SimpleITK")
    nrrd = tmp_path / "t1.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(small["t1"])), str(nrrd))
    loader = LoadModality()
    from_nrrd, reason = loader(str(nrrd))
    from_nifti, _ = loader(str(small["t1"]))
    assert reason == "observed"
    np.testing.assert_array_equal(from_nrrd.numpy(), from_nifti.numpy())
    torch.testing.assert_close(from_nrrd.affine, from_nifti.affine, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ DICOM


def test_dicom_series_built_from_real_slices(tmp_path):
    ct = Path(get_testdata_file("CT_small.dcm"))
    complete = tmp_path / "complete"
    files = _write_series(ct, complete, n=6, dz=5.0)
    gap = tmp_path / "gap"
    _write_series(ct, gap, n=6, dz=5.0, skip=(3,))
    dup = tmp_path / "dup"
    dup_files = _write_series(ct, dup, n=5, dz=5.0)
    shutil.copy(dup_files[2], dup / "copy_of_slice002.dcm")
    broken = tmp_path / "broken"
    broken_files = _write_series(ct, broken, n=4, dz=5.0)
    raw = broken_files[1].read_bytes()
    broken_files[1].write_bytes(raw[: len(raw) - 20000])  # pixel data cut short
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")

    keys = ["complete", "gap", "dup", "broken", "empty", "gone"]
    sample = {k: str(tmp_path / k) for k in keys}
    out = LoadModalitiesd(keys=keys, spatial_size=(32, 32, 8))(dict(sample, patient_id="ct-1"))
    r = out["modality_reasons"]

    assert r["complete"] == "observed"
    img = out["complete"]
    assert img.shape == (1, 128, 128, 6)
    assert float(img.pixdim[2]) == pytest.approx(5.0)
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), _rescaled(files[0]).T)  # PydicomReader swaps i/j

    assert r["gap"].startswith("incomplete series: ") and str(gap) in r["gap"] and "missing slice" in r["gap"]
    assert "slice002.dcm" in r["gap"] and "slice004.dcm" in r["gap"] and "about 1 slice" in r["gap"]
    assert r["dup"].startswith("incomplete series: ") and "duplicate" in r["dup"] and "copy_of_slice002.dcm" in r["dup"]
    assert r["broken"].startswith("unreadable: ") and str(broken) in r["broken"]
    assert r["empty"].startswith("file not found: ") and "no DICOM files" in r["empty"]
    assert r["gone"] == f"file not found: {tmp_path / 'gone'}"
    assert out["present"].tolist() == [True, False, False, False, False, False]
    assert all(out[k].shape == (1, 32, 32, 8) and is_placeholder(out[k]) for k in keys[1:])


def test_dicom_series_shipped_with_pydicom():
    if not DICOMDIR_TESTS.is_dir():
        pytest.skip(f"pydicom dicomdirtests not found at {DICOMDIR_TESTS}")
    loader = LoadModality()
    img, reason = loader(str(DICOMDIR_TESTS / "98892001" / "CT5N"))
    assert reason == "observed" and img.shape == (1, 16, 16, 5)
    assert float(img.pixdim[2]) == pytest.approx(2.5)

    # CT2 holds instances 18, 180, 181, 182: a 202.5 mm hole that the plain reader would stack as one volume
    gap_folder = DICOMDIR_TESTS / "77654033" / "CT2"
    img, reason = loader(str(gap_folder))
    assert reason.startswith("incomplete series: ") and str(gap_folder) in reason and "about 161 slice" in reason
    assert is_placeholder(img)
    stacked = LoadImage(reader=PydicomReader(), ensure_channel_first=True)(str(gap_folder))
    assert stacked.shape[-1] == 4 and abs(float(stacked.pixdim[2]) - 1.25) > 10  # silently wrong without the check

    _, reason = loader(str(DICOMDIR_TESTS / "98892003" / "MR700"))  # radial localiser
    assert reason.startswith("unreadable: ") and "not parallel" in reason
    _, reason = loader(str(DICOMDIR_TESTS / "98892003" / "MR2"))  # two series in one folder
    assert reason.startswith("unreadable: ") and "mixes 3 DICOM series" in reason
    assert inspect_dicom_series(DICOMDIR_TESTS / "98892001" / "CT5N") is None


def test_single_dicom_files():
    for name, shape in (("CT_small.dcm", (1, 128, 128)), ("MR_small.dcm", (1, 64, 64))):
        path = get_testdata_file(name)
        img, reason = LoadModality()(path)
        assert reason == "observed" and img.shape == shape
        np.testing.assert_array_equal(img[0].numpy(), _rescaled(path).T)


# ------------------------------------------------------------------------------------------------ harmonisation


def test_harmonize_full_resolution_real_volume_and_placeholders(tmp_path):
    _need_data()
    keys = ["t1", "flair"]
    sample = {"patient_id": "AURORA-example", "t1": str(PATIENT / "t1.nii.gz"), "flair": str(tmp_path / "x.nii.gz")}
    loaded = LoadModalitiesd(keys=keys, spatial_size=(64, 64, 64))(sample)
    assert loaded["t1"].shape == (1, 240, 240, 155)
    out = HarmonizeModalitiesd(keys=keys, axcodes="RAS", pixdim=(3.75, 3.75, 3.75), spatial_size=(64, 64, 64))(loaded)
    assert out["t1"].shape == out["flair"].shape == (1, 64, 64, 64)
    torch.testing.assert_close(out["t1"].pixdim.float(), torch.full((3,), 3.75))
    torch.testing.assert_close(out["flair"].affine, out["t1"].affine)
    assert is_placeholder(out["flair"]) and float(out["flair"].abs().max()) == 0.0
    assert out["flair"].meta["dymo_reason"] == loaded["modality_reasons"]["flair"]
    # the brain survives resampling: about as much signal (sum x voxel volume) as the original
    orig = float(loaded["t1"].sum()) * 1.0
    resampled = float(out["t1"].sum()) * 3.75**3
    assert abs(resampled - orig) / orig < 0.05
    assert out["present"].tolist() == [True, False]


def test_harmonize_orientation_and_sizes(tmp_path, small):
    flipped = _small_copy(PATIENT / "t1.nii.gz", tmp_path / "t1_flipped.nii.gz", flip_x=True)
    loaded = LoadModalitiesd(keys=["a", "b"])({"a": str(small["t1"]), "b": str(flipped)})
    assert not torch.equal(loaded["a"], loaded["b"])  # stored differently
    out = HarmonizeModalitiesd(keys=["a", "b"], axcodes="RAS")(loaded)
    torch.testing.assert_close(out["a"].as_tensor(), out["b"].as_tensor())  # same physical image once oriented
    torch.testing.assert_close(out["a"].affine, out["b"].affine)

    resized = HarmonizeModalitiesd(keys=["a", "b"], spatial_size=32, size_mode="resize")(loaded)
    assert resized["a"].shape == resized["b"].shape == (1, 32, 32, 32)
    with pytest.raises(ValueError, match="size_mode"):
        HarmonizeModalitiesd(keys=["a"], size_mode="stretch")


def test_harmonize_without_target_size_uses_first_harmonised_shape(small):
    loaded = LoadModalitiesd(keys=["t1", "t2"], spatial_size=(8, 8, 8))({"t1": str(small["t1"]), "t2": None})
    assert loaded["t2"].shape == (1, 8, 8, 8)
    out = HarmonizeModalitiesd(keys=["t1", "t2"], pixdim=(8.0, 8.0, 8.0))(loaded)
    assert out["t2"].shape == out["t1"].shape == (1, 30, 30, 20)
    assert is_placeholder(out["t2"])


# ------------------------------------------------------------------------------------------------ configuration checks


def test_check_datalist(tmp_path, small):
    datalist = [
        {"patient_id": "p1", "t1": str(small["t1"]), "flair": str(tmp_path / "missing.nii.gz"), "age": 50},
        {"patient_id": "p2", "t1": "", "flair": None, "age": ""},
    ]
    assert check_datalist(datalist, ["t1", "flair"], required=["t1"], clinical_fields=["age"]) == {"t1": 1, "flair": 0}
    with pytest.raises(ValueError, match=r"'t2'.*no datalist entry.*'p1'"):
        check_datalist(datalist, ["t1", "t2"])
    with pytest.raises(ValueError, match=r"required modality 'flair' is missing for every patient.*'p1'"):
        check_datalist(datalist, ["t1", "flair"], required=["flair"])
    with pytest.raises(ValueError, match=r"clinical field 'sex'.*'p1'"):
        check_datalist(datalist, ["t1"], clinical_fields=["sex"])
    with pytest.raises(ValueError, match="not among modalities"):
        check_datalist(datalist, ["t1"], required=["t9"])
