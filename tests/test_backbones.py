"""The encoder factory (small CNN or MONAI backbones by name), pretrained weights and the recovery initialisation."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks import (
    BACKBONES,
    BackboneTokenEncoder,
    DynamicFusionTransformer,
    ImageTokenEncoder,
    MoPoERecovery,
    build_image_fusion,
    build_token_encoder,
    load_pretrained_backbone,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize(
    "backbone, dims, size",
    [("small", 2, 32), ("small", 3, 16), ("resnet10", 2, 32), ("resnet10", 3, 32), ("densenet121", 2, 32),
     ("efficientnet-b0", 2, 32)],
)
def test_every_backbone_gives_a_fixed_token_grid(backbone, dims, size):
    enc = build_token_encoder(dims, 1, 16, backbone=backbone, pool_size=2)
    tokens = enc(torch.randn(2, 1, *([size] * dims)))
    assert tuple(tokens.shape) == (2, 2**dims, 16) and enc.num_tokens == 2**dims
    assert isinstance(enc, ImageTokenEncoder if backbone == "small" else BackboneTokenEncoder)
    # the number of tokens does not depend on the image size
    assert enc(torch.randn(1, 1, *([size * 2] * dims))).shape[1] == 2**dims


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*resnet18"):
        build_token_encoder(2, 1, 16, backbone="resnet9")
    assert "densenet121" in BACKBONES and "efficientnet-b0" in BACKBONES


def test_fusion_builder_takes_a_backbone_by_name():
    net = build_image_fusion(["t1", "t2"], spatial_dims=2, num_classes=3, dim=16, num_heads=2, backbone="resnet10")
    assert isinstance(net.encoders["t1"], BackboneTokenEncoder) and net.num_tokens == {"t1": 16, "t2": 16}
    logits, _ = net({"t1": torch.randn(2, 1, 32, 32), "t2": torch.randn(2, 1, 32, 32)})
    assert logits.shape == (2, 3)


def _saved_backbone(tmp_path, in_channels: int, prefix: str = "module.", extra_head: bool = True):
    src = build_token_encoder(2, in_channels, 16, backbone="resnet10")
    state = {prefix + k: v for k, v in src.backbone.net.state_dict().items()}
    if extra_head:
        state[prefix + "fc.weight"] = torch.randn(1000, 512)  # an ImageNet classifier is ignored
    path = tmp_path / "pretrained.pt"
    torch.save({"state_dict": state}, path)
    return src, path


def test_pretrained_weights_load_with_prefixes_and_rgb_to_grey(tmp_path):
    src, path = _saved_backbone(tmp_path, in_channels=3)
    enc = build_token_encoder(2, 1, 16, backbone="resnet10", pretrained=path, name="xray")
    torch.testing.assert_close(enc.backbone.net.conv1.weight, src.backbone.net.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(enc.backbone.net.layer4[0].conv1.weight, src.backbone.net.layer4[0].conv1.weight)
    rgb = build_token_encoder(2, 3, 16, backbone="resnet10", pretrained=path)
    torch.testing.assert_close(rgb.backbone.net.conv1.weight, src.backbone.net.conv1.weight)


def test_pretrained_weights_that_do_not_fit_name_the_file_and_parameter(tmp_path):
    _, path = _saved_backbone(tmp_path, in_channels=3)
    with pytest.raises(ValueError, match=r"modality 'ct'.*pretrained\.pt.*'layer2\.0\.conv2\.weight'|modality 'ct'.*not "
                                         r"in the file"):
        build_token_encoder(2, 1, 16, backbone="resnet18", pretrained=path, name="ct")  # another depth
    with pytest.raises(ValueError, match="no parameter of .* matches the densenet121 backbone"):
        build_token_encoder(2, 1, 16, backbone="densenet121", pretrained=path, name="ct")
    with pytest.raises(FileNotFoundError, match="modality 'ct': pretrained weights not found"):
        build_token_encoder(2, 1, 16, backbone="resnet10", pretrained=tmp_path / "nope.pt", name="ct")
    torch.save({"conv1.weight": torch.zeros(64, 1, 3, 7, 7)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"'conv1\.weight' has shape \(64, 1, 3, 7, 7\) in the file"):
        load_pretrained_backbone(build_token_encoder(2, 1, 16, backbone="resnet10"), tmp_path / "bad.pt", name="ct")


def test_small_encoder_takes_pretrained_weights_too(tmp_path):
    src = build_token_encoder(3, 1, 16, channels=(4, 8))
    torch.save(src.features.state_dict(), tmp_path / "small.pt")
    enc = build_token_encoder(3, 1, 16, channels=(4, 8), pretrained=tmp_path / "small.pt")
    torch.testing.assert_close(enc.features[0].conv.weight, src.features[0].conv.weight)


def test_fusion_encoders_start_from_the_recovery_network(tmp_path):
    from monai_dymo.cohort.networks import init_encoders_from_recovery

    torch.manual_seed(0)
    specs = {m: {"shape": [1, 16, 16, 16], "channels": [4, 8], "strides": [2, 2]} for m in ("t1", "t2")}
    rec = MoPoERecovery(["t1", "t2"], specs, latent_dim=4)
    torch.save(rec.state_dict(), tmp_path / "recovery.pt")
    net = build_image_fusion(["t1", "t2"], spatial_dims=3, num_classes=2, dim=16, num_heads=2, channels=(4, 8),
                             strides=(2, 2), pool_size=2)
    copied = init_encoders_from_recovery(net, tmp_path / "recovery.pt")
    assert copied == {m: len([k for k in rec.state_dict() if k.startswith(f"encoders.{m}.net.")]) for m in ("t1", "t2")}
    assert copied["t1"] > 0
    torch.testing.assert_close(net.encoders["t2"].features[1].conv.weight, rec.encoders["t2"].net.layer_1.conv.weight)
    wrong = build_image_fusion(["t1", "t2"], spatial_dims=3, num_classes=2, dim=16, num_heads=2, channels=(5, 7),
                               strides=(2, 2))
    with pytest.raises(ValueError, match=r"fits the fusion encoder\(s\) \['t1', 't2'\]"):
        init_encoders_from_recovery(wrong, tmp_path / "recovery.pt")
    with pytest.raises(FileNotFoundError, match="train the recovery network first"):
        init_encoders_from_recovery(net, tmp_path / "none.pt")
    assert isinstance(net, DynamicFusionTransformer)


def test_large_pictures_get_more_recovery_stages_and_stay_small():
    from monai_dymo.cohort import CohortSpec, build_cohort_recovery

    def cohort(kind, size):
        mods = [{"name": n, "kind": kind, "spatial_size": size} for n in ("ct", "mr")]
        return CohortSpec.from_config({"datalist": "x.json", "classes": ["a", "b"], "modalities": mods}, base_dir="/")

    rec = build_cohort_recovery(cohort("image2d", [128, 128]))
    assert rec.specs["ct"].strides == (2, 2, 2, 2, 2)  # 128 / 32 = 4 per side at the end
    assert sum(p.numel() for p in rec.parameters()) * 4 < 10 * 2**20  # was 52 MB with three stages
    # the default brain cohort's experts are unchanged (the shipped recovery weights keep fitting)
    assert build_cohort_recovery(cohort("image3d", [48, 48, 48])).specs["ct"].channels == (8, 16, 32, 64)
    assert build_cohort_recovery(cohort("image2d", [28, 28])).specs["ct"].strides == (2, 2)  # 28 = 4 * 7
