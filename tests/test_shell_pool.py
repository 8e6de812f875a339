"""Radial shell pooling: one token per concentric shell of a lesion-centred region of interest."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks import ImageTokenEncoder, RadialShellPool, build_token_encoder
from monai_dymo.networks.shell_pool import shell_index


def test_shells_grow_from_the_centre_out_and_the_corners_join_the_last():
    shell = shell_index([10, 10, 10], 4, torch.device("cpu")).reshape(10, 10, 10)
    assert int(shell[4, 4, 4]) == 0 and int(shell[5, 5, 5]) == 0  # the 8 central voxels of an even grid
    assert int(shell[0, 0, 0]) == 3 and int(shell[9, 0, 9]) == 3
    # along an axis from the centre the shell never decreases
    line = shell[5, 5, 5:]
    assert torch.all(line[1:] >= line[:-1]) and int(line[0]) == 0 and int(line[-1]) == 3
    counts = torch.bincount(shell.reshape(-1), minlength=4)
    assert int(counts.sum()) == 1000 and bool(torch.all(counts > 0))


def test_each_token_is_the_mean_of_its_shell():
    pool = RadialShellPool(3)
    shell = shell_index([9, 9, 9], 3, torch.device("cpu")).reshape(1, 1, 9, 9, 9).float()
    x = torch.cat([shell * 10.0, torch.full_like(shell, 2.5)], dim=1)  # channel 0: 10 x shell id; channel 1: constant
    out = pool(x)
    assert out.shape == (1, 2, 3)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 10.0, 20.0]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[0, 1], torch.full((3,), 2.5))


def test_tokens_do_not_depend_on_the_direction_from_the_centre():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12, 12, 12)
    pool = RadialShellPool(4)
    for dims in ((2, 3), (3, 4), (2, 4)):
        torch.testing.assert_close(pool(torch.rot90(x, 1, dims)), pool(x))
        torch.testing.assert_close(pool(torch.flip(x, dims)), pool(x))
    # but moving the content off the centre changes them
    assert not torch.allclose(pool(torch.roll(x, 3, dims=2)), pool(x))


def test_too_many_shells_for_the_grid_give_zero_tokens_and_bad_counts_fail():
    out = RadialShellPool(6)(torch.ones(1, 1, 2, 2))
    # the four voxels of a 2x2 grid lie at one distance from its centre: one shell holds them, the others are zeros
    assert out.shape == (1, 1, 6) and int((out != 0).sum()) == 1 and float(out.max()) == 1.0
    with pytest.raises(ValueError, match="num_shells"):
        RadialShellPool(0)


@pytest.mark.parametrize("backbone", ["small", "resnet10"])
def test_encoders_give_one_token_per_shell(backbone):
    enc = build_token_encoder(3, 1, 16, backbone=backbone, pool_size=4, pool_mode="shells",
                              channels=(4, 8, 8), strides=(2, 2, 1)).eval()
    assert enc.num_tokens == 4
    assert enc(torch.randn(2, 1, 40, 40, 40)).shape == (2, 4, 16)


def test_small_shell_encoder_is_scriptable_and_rejects_unknown_pooling():
    enc = ImageTokenEncoder(3, 1, 8, channels=(4, 8), strides=(2, 1), pool_size=3, pool_mode="shells").eval()
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(torch.jit.script(enc)(x), enc(x))
    with pytest.raises(ValueError, match="shells"):
        ImageTokenEncoder(3, 1, 8, pool_mode="rings")
    with pytest.raises(ValueError, match="number of shells"):
        ImageTokenEncoder(3, 1, 8, pool_size=None, pool_mode="shells")


def test_cohort_fusion_takes_strides_and_shells(tmp_path):
    from tests.cohort_fixtures import two_sequence_spec

    from monai_dymo.cohort.networks import build_cohort_fusion

    spec = two_sequence_spec(tmp_path)
    net = build_cohort_fusion(spec, dim=16, num_heads=2, channels_3d=(4, 8, 8), strides_3d=(2, 2, 1),
                              pool_3d=5, pool_mode="shells")
    assert net.encoders["t1"].num_tokens == 5
    logits, _ = net({"t1": torch.randn(2, 1, 24, 24, 24), "flair": torch.randn(2, 1, 24, 24, 24)})
    assert logits.shape == (2, 3)
