"""The fusion network in MONAI's bundle tools: scriptable encoders, TorchScript and torch.export of FusionExport
against the eager network, and the dict-input verify_net_in_out."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks import (
    ClinicalTokenEncoder,
    FusionExport,
    ImageTokenEncoder,
    build_polymnist_fusion,
    example_fusion_inputs,
    export_fusion,
    verify_fusion_in_out,
)

MODALITIES = ["m0", "m1", "m2"]


def _format(num_classes: int = 4, modalities=MODALITIES) -> dict:
    image = {"type": "image", "format": "RGB", "num_channels": 3, "spatial_shape": [28, 28], "dtype": "float32",
             "value_range": [0, 1]}
    present = {"type": "mask", "format": "bool", "num_channels": len(modalities), "spatial_shape": [],
               "dtype": "bool", "value_range": [0, 1], "channel_def": {str(i): m for i, m in enumerate(modalities)}}
    return {
        "inputs": {**{m: dict(image) for m in modalities}, "present": present},
        "outputs": {"pred": {"type": "logits", "format": "classes", "num_channels": num_classes, "spatial_shape": [],
                             "dtype": "float32", "value_range": []}},
    }


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    net = build_polymnist_fusion(modalities=MODALITIES, num_classes=4, dim=16, depth=2, num_heads=2, proj_dim=8,
                                 channels=(8, 16, 16))
    for p in net.parameters():  # away from the zero initialisation of LayerNorm biases etc.
        p.data.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_encoders_script():
    image = ImageTokenEncoder(2, 3, 16, channels=(8,), strides=(2,), pool_size=4).eval()
    x = torch.rand(2, 3, 28, 28)
    assert torch.allclose(torch.jit.script(image)(x), image(x))
    clinical = ClinicalTokenEncoder(2, [3], dim=8).eval()
    c = torch.tensor([[0.5, float("nan"), 2.0], [1.0, -0.3, -1.0]])
    assert torch.allclose(torch.jit.script(clinical)(c), clinical(c))


def test_export_module_shares_the_network_state_dict_keys(network):
    assert list(FusionExport(network).state_dict()) == list(network.state_dict())


def test_torchscript_of_the_fusion_matches_eager(network):
    inputs, present = example_fusion_inputs(_format(), batch_size=5)
    scripted = torch.jit.script(FusionExport(network).eval())
    with torch.no_grad():
        expected, _ = network(inputs, present)
        assert torch.allclose(scripted(inputs, present), expected, atol=1e-5)
        one = torch.zeros(5, 3, dtype=torch.bool)
        one[:, 1] = True  # a single modality: the others' inputs must not matter
        other = {k: (v if k == "m1" else torch.rand_like(v)) for k, v in inputs.items()}
        assert torch.allclose(scripted(other, one), network(inputs, one)[0], atol=1e-5)


def test_torch_export_of_the_fusion_matches_eager(network):
    program = export_fusion(network, example_fusion_inputs(_format(), batch_size=4))
    inputs, present = example_fusion_inputs(_format(), batch_size=3)  # another batch size: dynamic batch dim
    with torch.no_grad():
        assert torch.allclose(program.module()(inputs, present), network(inputs, present)[0], atol=1e-5)


def test_verify_fusion_in_out(network):
    assert verify_fusion_in_out(network, {"network_data_format": _format()}).shape == (2, 4)
    with pytest.raises(ValueError, match="num_channels 10"):
        verify_fusion_in_out(network, _format(num_classes=10))
    with pytest.raises(ValueError, match=r"not the network's modalities \['m0', 'm1', 'm2'\]"):
        verify_fusion_in_out(network, _format(modalities=["m1", "m0", "m2"]))
