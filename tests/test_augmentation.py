"""Training augmentation of a cohort respects the data: co-registered volumes share one spatial draw, pictures from
separate studies get their own, and no flip changes what an orientation means."""

from __future__ import annotations

import torch

from monai.data import MetaTensor
from monai.transforms import RandAffined, RandBiasFieldd, RandFlipd, RandGaussianNoised

from monai_dymo.cohort import CohortSpec, build_augmentation

COHORT = {
    "datalist": "unused.json",
    "classes": ["a", "b"],
    "modalities": [
        {"name": "t1", "kind": "image3d", "spatial_size": [8, 8, 8]},
        {"name": "t2", "kind": "image3d", "spatial_size": [8, 8, 8]},
        {"name": "ct", "kind": "image2d", "spatial_size": [8, 8]},
        {"name": "mr", "kind": "image2d", "spatial_size": [8, 8]},
    ],
}


def _sample(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(1, 8, 8, 8, generator=g)
    pic = torch.rand(1, 8, 8, generator=g)
    return {"t1": MetaTensor(vol.clone()), "t2": MetaTensor(vol.clone()), "ct": MetaTensor(pic.clone()),
            "mr": MetaTensor(pic.clone())}


def test_volumes_share_one_spatial_draw_pictures_get_their_own():
    spec = CohortSpec.from_config(COHORT, base_dir="/tmp")
    aug = build_augmentation(spec, flip_prob=0.5, affine_prob=1.0, bias_field_prob=0.0, noise_prob=0.0)
    aug.set_random_state(0)
    differ = 0
    for seed in range(6):
        out = aug(_sample(seed))
        torch.testing.assert_close(out["t1"].as_tensor(), out["t2"].as_tensor())  # co-registered: the same draw
        differ += not torch.allclose(out["ct"].as_tensor(), out["mr"].as_tensor())
    assert differ == 6  # separate studies: independent draws


def test_only_left_right_flips_and_none_on_pictures_by_default():
    spec = CohortSpec.from_config(COHORT, base_dir="/tmp")
    flips = [t for t in build_augmentation(spec).transforms if isinstance(t, RandFlipd)]
    assert len(flips) == 1 and list(flips[0].keys) == ["t1", "t2"] and flips[0].flipper.spatial_axis == 0
    with_2d = [t for t in build_augmentation(spec, flip_2d=True).transforms if isinstance(t, RandFlipd)]
    assert [list(t.keys) for t in with_2d] == [["t1", "t2"], ["ct"], ["mr"]]
    assert all(t.flipper.spatial_axis == 1 for t in with_2d[1:])  # left-right of a picture, never up-down


def test_mri_intensity_augmentation_is_drawn_per_sequence():
    spec = CohortSpec.from_config(COHORT, base_dir="/tmp")
    aug = build_augmentation(spec, flip_prob=0.0, affine_prob=0.0, bias_field_prob=1.0, noise_prob=1.0)
    kinds = [(type(t), tuple(t.keys)) for t in aug.transforms]
    assert (RandBiasFieldd, ("t1",)) in kinds and (RandBiasFieldd, ("t2",)) in kinds
    assert (RandGaussianNoised, ("t1",)) in kinds and not any(k == ("ct",) for t, k in kinds if t != RandAffined)
    aug.set_random_state(1)
    out = aug(_sample(0))
    assert not torch.allclose(out["t1"].as_tensor(), out["t2"].as_tensor())  # each acquisition its own bias / noise
    torch.testing.assert_close(out["ct"].as_tensor(), _sample(0)["ct"].as_tensor())  # pictures untouched here


def test_translate_shifts_the_volumes_together_and_keeps_the_content():
    spec = CohortSpec.from_config(COHORT, base_dir="/tmp")
    vol = torch.zeros(1, 8, 8, 8)
    vol[0, 3:5, 3:5, 3:5] = 1.0  # a small 'lesion' in the middle of the region
    still = build_augmentation(spec, flip_prob=0.0, affine_prob=1.0, rotate_deg=0.0, scale=0.0, translate=0.0,
                               bias_field_prob=0.0, noise_prob=0.0)
    moved = build_augmentation(spec, flip_prob=0.0, affine_prob=1.0, rotate_deg=0.0, scale=0.0, translate=2.0,
                               bias_field_prob=0.0, noise_prob=0.0)
    moved.set_random_state(1)
    sample = {**_sample(0), "t1": MetaTensor(vol.clone()), "t2": MetaTensor(vol.clone())}
    torch.testing.assert_close(still(dict(sample))["t1"].as_tensor(), vol)  # no shift: unchanged
    shifted = 0
    for _ in range(5):
        out = moved(dict(sample))
        torch.testing.assert_close(out["t1"].as_tensor(), out["t2"].as_tensor())  # one draw for both sequences
        centre = (out["t1"][0] > 0.5).nonzero().float().mean(0)
        assert float((centre - 3.5).abs().max()) <= 2.0 + 1e-4  # moved by at most `translate` voxels
        shifted += int(not torch.allclose(centre, torch.full((3,), 3.5)))
    assert shifted >= 3
