"""The lesion-centred region of interest: found in the guide, shared in world space, fallback, spec and cohort wiring."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from monai_dymo.cohort import CohortSpec, cohort_dataset, prepare_cohort
from monai_dymo.transforms import (
    FOREGROUND_GUIDE,
    REASON_META_KEY,
    ROI_GUIDE_KEY,
    BrightestRegionCentre,
    GuidedROICropd,
    is_placeholder,
    make_placeholder,
)
from tests.cohort_fixtures import make_tiny_cohort


def _brain(lesion_at=(28, 12, 21), size=40, spacing=2.0, origin=-40.0):
    """A 'brain' cube (1.0) with a bright 'lesion' (5.0) and a bright rim (9.0, which the erosion must ignore)."""
    x = torch.zeros(1, size, size, size)
    x[:, 5:35, 5:35, 5:35] = 1.0
    x[:, 5, 5:35, 5:35] = 9.0  # the bright edge of the foreground
    i, j, k = lesion_at
    x[:, i - 2:i + 2, j - 2:j + 2, k - 2:k + 2] = 5.0
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] *= spacing
    affine[:3, 3] = origin
    return MetaTensor(x, affine=affine)


def test_centre_is_the_smoothed_lesion_not_the_bright_rim():
    centre = BrightestRegionCentre(sigma=1.0, margin=2)(_brain())
    assert np.abs(centre.numpy() - np.array([27.5, 11.5, 20.5])).max() <= 1.0
    rim = BrightestRegionCentre(sigma=0.0, margin=0)(_brain())  # without the erosion the rim wins
    assert int(rim[0]) == 5
    with pytest.raises(ValueError, match="no foreground"):
        BrightestRegionCentre()(torch.zeros(1, 8, 8, 8))


def _ring_lesion(centre=(20, 18, 22), size=40):
    """A brain (1.0) with a lesion whose oedema ring (radius 5-8 voxels, 4.0) is brighter than its core (2.0), plus a
    small, brighter spot (6.0) far from it: FLAIR's picture of a tumour and a bright artefact."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    r = (grid - torch.tensor(centre, dtype=torch.float32)[:, None, None, None]).pow(2).sum(0).sqrt()
    x = torch.zeros(size, size, size)
    x[2:-2, 2:-2, 2:-2] = 1.0
    x[r < 8] = 4.0
    x[r < 5] = 2.0
    x[30:32, 6:8, 6:8] = 6.0
    return x[None]


def test_fraction_centres_the_crop_on_the_lesion_region_not_its_brightest_voxel():
    img = _ring_lesion()
    peak = BrightestRegionCentre(sigma=0.0, margin=1)(img)
    assert peak.tolist() == [30, 6, 6]  # the artefact is the brightest voxel, then the ring: never the lesion's centre
    ring = BrightestRegionCentre(sigma=1.0, margin=1)(img)
    assert float((ring - torch.tensor([20, 18, 22])).abs().max()) >= 3
    centre = BrightestRegionCentre(sigma=1.0, margin=1, fraction=0.5)(img)
    assert centre.dtype == torch.int64 and centre.tolist() == [20, 18, 22]
    # a uniform region that is all brighter than the fraction of its peak: its centroid, the centre of the brain
    flat = torch.zeros(1, 21, 21, 21)
    flat[:, 2:-2, 2:-2, 2:-2] = 1.0
    assert BrightestRegionCentre(sigma=0.0, margin=0, fraction=0.5)(flat).tolist() == [10, 10, 10]
    # nothing brighter than zero (a negative z-scored image): the argmax
    assert BrightestRegionCentre(sigma=0.0, margin=0, fraction=0.5)(-img - 10).tolist() == \
        BrightestRegionCentre(sigma=0.0, margin=0)(-img - 10).tolist()
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            BrightestRegionCentre(fraction=bad)


def test_every_volume_is_cropped_around_the_same_world_point():
    flair = _brain()
    # T2 on another grid (1 mm, other origin) that covers the same world region: a ramp so the crop's origin shows
    t2 = MetaTensor(torch.arange(80 ** 3, dtype=torch.float32).reshape(1, 80, 80, 80) + 1.0,
                    affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)))
    t2.affine[:3, 3] = -40.0
    data = {"patient_id": "p7", "flair": flair, "t2": t2, "t1": make_placeholder((1, 40, 40, 40), "absent: x")}
    out = GuidedROICropd(["t1", "t2", "flair"], guide_keys=["flair"], roi_size=16, sigma=1.0, margin=2)(data)
    assert out[ROI_GUIDE_KEY] == "flair"
    assert all(tuple(out[k].shape) == (1, 16, 16, 16) for k in ("t1", "t2", "flair"))
    assert is_placeholder(out["t1"]) and out["t1"].meta[REASON_META_KEY].startswith("absent")
    # both crops are centred on the same world point (voxel 8 of 16 is the centre), each at its own resolution
    centre = {k: (out[k].affine.numpy() @ np.array([8.0, 8.0, 8.0, 1.0]))[:3] for k in ("flair", "t2")}
    assert np.allclose(centre["flair"], centre["t2"], atol=2.0)
    assert np.allclose(np.diag(out["t2"].affine.numpy())[:3], 1.0) and np.allclose(np.diag(out["flair"].affine)[:3], 2.0)
    # and the lesion sits in the middle of the FLAIR crop
    inside = (out["flair"][0] == 5.0).nonzero().float().mean(0)
    assert torch.allclose(inside, torch.full((3,), 7.5), atol=1.5)


def test_a_region_leaving_the_volume_is_zero_padded_and_without_guide_the_brain_centre_is_used():
    flair = _brain(lesion_at=(33, 33, 33))
    out = GuidedROICropd(["flair"], guide_keys="flair", roi_size=[24, 24, 24], margin=2, sigma=0.0)(
        {"patient_id": "p1", "flair": flair})
    assert tuple(out["flair"].shape) == (1, 24, 24, 24) and float(out["flair"][0, -1, -1, -1]) == 0.0
    t1 = _brain()
    data = {"patient_id": "p2", "t1": t1, "flair": make_placeholder((1, 40, 40, 40), "absent")}
    out = GuidedROICropd(["t1", "flair"], guide_keys=["flair"], roi_size=10)(data)
    assert out[ROI_GUIDE_KEY] == FOREGROUND_GUIDE
    # the foreground is voxels 5..34: its bounding-box centre is 19.5 -> crop start about 14.5 voxels = -11 mm
    assert np.allclose(out["t1"].affine[:3, 3].numpy(), -40.0 + 2.0 * 15, atol=2.0)
    nothing = GuidedROICropd(["flair"], guide_keys=["flair"], roi_size=10)(
        {"patient_id": "p3", "flair": make_placeholder((1, 40, 40, 40), "absent")})
    assert tuple(nothing["flair"].shape) == (1, 10, 10, 10) and nothing[ROI_GUIDE_KEY] == FOREGROUND_GUIDE
    with pytest.raises(ValueError, match=r"guide\(s\) \['t2'\]"):
        GuidedROICropd(["flair"], guide_keys=["t2"], roi_size=10)
    with pytest.raises(ValueError, match="patient p4, modality flair"):
        GuidedROICropd(["flair"], guide_keys=["flair"], roi_size=10)({"patient_id": "p4", "flair": torch.ones(1, 8, 8, 8)})


@pytest.mark.parametrize(
    "roi, message",
    [
        ({"guide": ["xray"]}, "must list image3d modalities"),
        ({"guide": ["ct"], "radius": 3}, r"unknown key\(s\) \['radius'\]"),
        ({"guide": ["ct"], "sigma": -1}, ">= 0"),
        ({"guide": ["ct"], "fraction": 1.2}, r"'fraction' must be in \(0, 1\)"),
        ({"guide": ["ct"], "fraction": "half"}, "'fraction' must be a number"),
        ("ct", "must be a mapping"),
    ],
)
def test_roi_spec_errors_name_the_key(tmp_path, roi, message):
    cfg = make_tiny_cohort(tmp_path / "data")
    cfg["modalities"][0]["pixdim"] = [2.0, 2.0, 2.0]
    cfg["roi"] = roi
    with pytest.raises(ValueError, match=message):
        CohortSpec.from_config(cfg)
    cfg["roi"] = {"guide": ["ct"]}
    cfg["modalities"][0].pop("pixdim")
    with pytest.raises(ValueError, match=r"need a 'pixdim'.*\['ct'\]"):
        CohortSpec.from_config(cfg)


def test_cohort_with_roi_crops_around_the_lesion_and_caches_apart(tmp_path):
    cfg = make_tiny_cohort(tmp_path / "data", size=16)
    datalist = json.loads(open(cfg["datalist"]).read())
    lesions = {}  # patient -> world position of a bright 'lesion' painted into its CT
    for entry in datalist["validation"]:
        if not entry.get("ct"):
            continue
        file = tmp_path / "data" / entry["ct"]
        img = nib.load(str(file))
        vol = np.asarray(img.dataobj, dtype=np.float32)
        vol[10:13, 4:7, 9:12] = 5000.0
        nib.save(nib.Nifti1Image(vol, img.affine), str(file))
        lesions[entry["patient_id"]] = nib.affines.apply_affine(img.affine, [11, 5, 10])
    assert len(lesions) >= 5
    cfg["modalities"][0].update(pixdim=[2.0, 2.0, 2.0], spatial_size=[8, 8, 8])
    cfg["roi"] = {"guide": ["ct"], "sigma": 1.0, "margin": 1}
    spec = CohortSpec.from_config(cfg)
    out = prepare_cohort(spec, tmp_path / "prepared", stats_file=tmp_path / "models" / "clinical_stats.json")
    ds = cohort_dataset(spec, "validation", stats_file=out["stats_file"], cache="disk", cache_dir=tmp_path / "cache")
    items = [ds[i] for i in range(len(ds))]
    assert all(tuple(d["ct"].shape) == (1, 8, 8, 8) for d in items)
    for d in items:
        if d["patient_id"] in lesions:
            assert d[ROI_GUIDE_KEY] == "ct"
            centre_world = nib.affines.apply_affine(d["ct"].affine.numpy(), [3.5, 3.5, 3.5])
            assert np.abs(centre_world - lesions[d["patient_id"]]).max() <= 2.0  # one voxel
        else:
            assert is_placeholder(d["ct"]) and d[ROI_GUIDE_KEY] == FOREGROUND_GUIDE
    batch = list_data_collate(items)
    assert tuple(batch["ct"].shape) == (len(items), 1, 8, 8, 8) and len(batch[ROI_GUIDE_KEY]) == len(items)
    plain = json.loads(json.dumps(cfg))
    plain.pop("roi")
    cohort_dataset(CohortSpec.from_config(plain), "validation", stats_file=out["stats_file"], cache="disk",
                   cache_dir=tmp_path / "cache")[0]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the region of interest is part of the cache key
