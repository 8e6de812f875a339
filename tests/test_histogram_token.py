"""The intensity-histogram token: the log fraction of a region's foreground in each intensity band."""

from __future__ import annotations

import math

import pytest
import torch

from monai_dymo.networks import HistogramTokenEncoder, IntensityHistogram, build_token_encoder, is_small_encoder


def test_fractions_of_the_foreground_fall_in_their_bins_and_background_is_ignored():
    hist = IntensityHistogram(num_bins=4, low=0.0, high=3.0, eps=0.0)  # centres 0, 1, 2, 3
    x = torch.zeros(1, 1, 4, 5)  # 20 voxels: 10 background (0), 6 at 1.0, 3 at 2.0, 1 at 2.5
    flat = x.view(-1)
    flat[:6] = 1.0
    flat[6:9] = 2.0
    flat[9] = 2.5  # half in bin 2, half in bin 3
    frac = torch.exp(hist(x))[0]
    torch.testing.assert_close(frac, torch.tensor([0.0, 0.6, 0.35, 0.05]), rtol=1e-5, atol=1e-6)


def test_a_volume_ratio_becomes_a_difference_of_log_bins_whatever_the_size():
    """A bright shell around a less bright core: log(bright) - log(core) is the same at every scale."""
    hist = IntensityHistogram(num_bins=10, low=-3.0, high=6.0, eps=1e-6)
    diffs = []
    for radius in (5.0, 7.0, 9.0):
        coords = torch.stack(torch.meshgrid(*[torch.arange(40.0) - 19.5] * 3, indexing="ij"))
        rho = coords.pow(2).sum(0).sqrt()
        x = torch.full((40, 40, 40), -1.0)
        x[rho < 2.0 * radius] = 4.0  # the outer radius twice the core's: bright volume 7x the core's
        x[rho < radius] = 2.0
        h = hist(x[None, None])[0]
        diffs.append(float(h[7] - h[5]))  # bins centred at 4 and 2
    assert all(abs(d - math.log(7.0)) < 0.1 for d in diffs), diffs


def test_encoder_gets_one_more_token_and_stays_scriptable():
    enc = build_token_encoder(3, 1, 16, pool_size=4, pool_mode="shells", channels=(4, 8, 8), strides=(2, 2, 1),
                              histogram_bins=8).eval()
    assert isinstance(enc, HistogramTokenEncoder) and is_small_encoder(enc)
    assert enc.num_tokens == 5
    x = torch.randn(2, 1, 24, 24, 24)
    out = enc(x)
    assert out.shape == (2, 5, 16)
    torch.testing.assert_close(torch.jit.script(enc)(x), out)
    # the last token reads the intensities: shifting them changes it while the shell tokens (instance norm) stay
    shifted = enc(x + 3.0)
    assert not torch.allclose(shifted[:, -1], out[:, -1])


def test_bad_histograms_are_refused():
    with pytest.raises(ValueError, match="num_bins"):
        IntensityHistogram(num_bins=1)
    with pytest.raises(ValueError, match="high > low"):
        IntensityHistogram(low=2.0, high=1.0)


def test_cohort_fusion_adds_the_histogram_token_to_image_modalities_only(tmp_path):
    from tests.cohort_fixtures import two_sequence_spec

    from monai_dymo.cohort.networks import build_cohort_fusion

    spec = two_sequence_spec(tmp_path)
    net = build_cohort_fusion(spec, dim=16, num_heads=2, channels_3d=(4, 8, 8), strides_3d=(2, 2, 1),
                              pool_3d=4, pool_mode="shells", histogram_bins_3d=8)
    assert net.num_tokens == {"t1": 5, "flair": 5}
    plain = build_cohort_fusion(spec, dim=16, num_heads=2, channels_3d=(4, 8, 8), strides_3d=(2, 2, 1),
                                pool_3d=4, pool_mode="shells")
    assert plain.num_tokens == {"t1": 4, "flair": 4}


def test_shell_histograms_say_how_far_out_each_band_reaches():
    """A bright core inside a darker surround: the bright band fills the inner shell and is absent from the outer."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(20.0) - 9.5] * 3, indexing="ij"))
    rho = coords.pow(2).sum(0).sqrt()
    x = torch.full((1, 1, 20, 20, 20), 1.0)
    x[0, 0][rho < 4.0] = 3.0
    hist = IntensityHistogram(num_bins=3, low=1.0, high=3.0, eps=0.0, num_shells=2)  # centres 1, 2, 3
    frac = torch.exp(hist(x)).reshape(2, 3)  # [shell, bin]
    torch.testing.assert_close(frac.sum(1), torch.ones(2))
    assert float(frac[0, 2]) > 0.4 and float(frac[1, 2]) == 0.0 and float(frac[1, 0]) == 1.0
    # one shell is the plain histogram
    whole = torch.exp(IntensityHistogram(num_bins=3, low=1.0, high=3.0, eps=0.0)(x))[0]
    torch.testing.assert_close(whole, torch.tensor([1 - float((rho < 4.0).float().mean()), 0.0,
                                                    float((rho < 4.0).float().mean())]))
    enc = build_token_encoder(3, 1, 16, pool_size=4, pool_mode="shells", channels=(4, 8, 8), strides=(2, 2, 1),
                              histogram_bins=5, histogram_shells=4)
    assert enc.to_token[0].in_features == 20 and enc(torch.randn(1, 1, 20, 20, 20)).shape == (1, 5, 16)
    with pytest.raises(ValueError, match="num_shells"):
        IntensityHistogram(num_shells=0)


def test_histogram_only_encoder_has_one_token_and_no_convolution(tmp_path):
    enc = build_token_encoder(3, 1, 16, backbone="none", histogram_bins=6, histogram_shells=3, name="flair").eval()
    assert isinstance(enc, HistogramTokenEncoder) and enc.encoder is None and not is_small_encoder(enc)
    assert enc.num_tokens == 1 and not any(isinstance(m, torch.nn.Conv3d) for m in enc.modules())
    x = torch.randn(2, 1, 12, 12, 12)
    out = enc(x)
    assert out.shape == (2, 1, 16)
    torch.testing.assert_close(torch.jit.script(enc)(x), out)
    # the token is a function of the histogram alone: permuting voxels within a shell does not change it
    flipped = torch.flip(x, dims=(2, 3, 4))  # central symmetry keeps every voxel's shell
    torch.testing.assert_close(enc(flipped), out)
    with pytest.raises(ValueError, match="'flair'.*histogram_bins"):
        build_token_encoder(3, 1, 16, backbone="none", name="flair")
    with pytest.raises(ValueError, match="pretrained"):
        build_token_encoder(3, 1, 16, backbone="none", histogram_bins=6, pretrained=tmp_path / "w.pt")

    from tests.cohort_fixtures import two_sequence_spec

    from monai_dymo.cohort.networks import build_cohort_fusion

    net = build_cohort_fusion(two_sequence_spec(tmp_path), dim=16, num_heads=2, backbone_3d="none",
                              histogram_bins_3d=6, histogram_shells_3d=3)
    assert net.num_tokens == {"t1": 1, "flair": 1}
    # nothing convolutional to start from the recovery network: said, not silently skipped
    from monai_dymo.cohort.networks import init_encoders_from_recovery

    torch.save({}, tmp_path / "recovery.pt")
    with pytest.raises(ValueError, match="backbone_3d small"):
        init_encoders_from_recovery(net, tmp_path / "recovery.pt")
