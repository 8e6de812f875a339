"""Left-right asymmetry input (MirrorAsymmetry / mirror_3d): the lesion stands out, the anatomy cancels."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks import (
    MirrorAsymmetry,
    MirrorInputEncoder,
    MoPoERecovery,
    build_token_encoder,
    is_small_encoder,
)


def _symmetric_brain(offset: int = 0) -> torch.Tensor:
    """A [1, 1, 20, 8, 8] volume: a brain symmetric about its own centre, ``offset`` voxels off the array centre."""
    x = torch.zeros(1, 1, 20, 8, 8)
    profile = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0])  # symmetric along left-right
    x[0, 0, 6 + offset : 14 + offset] = profile[:, None, None]
    return x


@pytest.mark.parametrize("offset", [0, -4, 3])
def test_a_symmetric_brain_has_no_asymmetry_wherever_it_sits(offset):
    out = MirrorAsymmetry(axis=0)(_symmetric_brain(offset))
    assert out.shape == (1, 2, 20, 8, 8)
    torch.testing.assert_close(out[:, :1], _symmetric_brain(offset))  # the image itself comes first
    assert out[:, 1].abs().max() == 0


def test_a_one_sided_lesion_shows_positive_on_its_side_negative_on_the_other():
    x = _symmetric_brain(2)  # brain on voxels 8..15, centre 11.5
    x[0, 0, 9, 3, 3] += 5.0  # lesion left of the centre; its mirror is voxel 14
    asym = MirrorAsymmetry(axis=0)(x)[0, 1]
    assert asym[9, 3, 3] == 5.0 and asym[14, 3, 3] == -5.0
    assert int((asym != 0).sum()) == 2


def test_per_sample_centres_and_an_empty_volume():
    batch = torch.cat([_symmetric_brain(-3), _symmetric_brain(4), torch.zeros(1, 1, 20, 8, 8)])
    out = MirrorAsymmetry(axis=0)(batch)
    assert out[:, 1].abs().max() == 0  # each sample mirrored about its own brain; the empty one stays 0
    with pytest.raises(ValueError, match="axis 3 does not exist"):
        MirrorAsymmetry(axis=3)(batch)


def test_mirror_encoder_keeps_the_token_grid_and_is_scriptable():
    torch.manual_seed(0)
    enc = build_token_encoder(3, 1, 16, channels=(4, 8), pool_size=2, mirror_axis=0)
    assert isinstance(enc, MirrorInputEncoder) and enc.in_channels == 1 and enc.num_tokens == 8
    assert enc.encoder.in_channels == 2
    enc.eval()
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(torch.jit.script(enc)(x), enc(x))
    with pytest.raises(ValueError, match=r"expected an image batch \[B, 2"):
        enc.encoder(x)  # the inner backbone reads two channels


def test_cohort_fusion_with_mirror_3d_only_wraps_volumes(tmp_path):
    from monai_dymo.cohort import CohortSpec
    from monai_dymo.cohort.networks import build_cohort_fusion, init_encoders_from_recovery

    spec = CohortSpec.from_config({
        "name": "c", "datalist": str(tmp_path / "d.json"), "classes": ["a", "b"],
        "modalities": [{"name": "t1", "kind": "image3d", "spatial_size": [16, 16, 16]},
                       {"name": "xray", "kind": "image2d", "spatial_size": [16, 16]}],
    })
    net = build_cohort_fusion(spec, dim=16, num_heads=2, channels_3d=(4, 8), mirror_3d=True)
    assert isinstance(net.encoders["t1"], MirrorInputEncoder)
    assert not isinstance(net.encoders["xray"], MirrorInputEncoder)
    assert is_small_encoder(net.encoders["t1"]) and is_small_encoder(net.encoders["xray"])
    assert not is_small_encoder(build_token_encoder(3, 1, 16, backbone="resnet10"))
    logits, _ = net({"t1": torch.randn(2, 1, 16, 16, 16), "xray": torch.randn(2, 1, 16, 16)})
    assert logits.shape == (2, 2)
    # the recovery start still fits every convolution after the first (which reads two channels here)
    rec = MoPoERecovery(["t1"], {"t1": {"shape": [1, 16, 16, 16], "channels": [4, 8], "strides": [2, 2]}}, latent_dim=4)
    torch.save(rec.state_dict(), tmp_path / "recovery.pt")
    copied = init_encoders_from_recovery(net, tmp_path / "recovery.pt", ["t1"])
    assert copied["t1"] > 0
    torch.testing.assert_close(net.encoders["t1"].encoder.features[1].conv.weight,
                               rec.encoders["t1"].net.layer_1.conv.weight)
