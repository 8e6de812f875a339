"""logit_fusion "product": the subset's logits are the sum of its modalities' single-modality log-probabilities (a
product of experts), z stays the transformer's; the same in the fast path, the reference path, training's
fuse_subsets and the scripted / exported network."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks import FusionExport, example_fusion_inputs, export_fusion
from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer
from monai_dymo.subsets import all_subset_masks

MODALITIES = ("t1", "clin", "t2")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _pair() -> tuple[DynamicFusionTransformer, DynamicFusionTransformer]:
    """The same weights with the transformer's logits and with the product of experts."""
    nets = []
    for mode in ("transformer", "product"):
        torch.manual_seed(0)
        encoders = {
            "t1": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2),
            "clin": ClinicalTokenEncoder(2, [3], 16),
            "t2": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=(1, 3)),
        }
        nets.append(DynamicFusionTransformer(MODALITIES, encoders, num_classes=3, dim=16, depth=2, num_heads=2,
                                             proj_dim=8, logit_fusion=mode))
    plain, product = nets
    for p in plain.parameters():  # away from the zero initialisation
        p.data.add_(0.1 * torch.randn_like(p))
    product.load_state_dict(plain.state_dict())
    return plain.eval(), product.eval()


def _inputs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clin = torch.cat([torch.randn(batch, 2, generator=g), torch.randint(0, 3, (batch, 1), generator=g).float()], 1)
    t1, t2 = torch.randn(batch, 1, 8, 8, generator=g), torch.randn(batch, 1, 8, 8, generator=g)
    return {"t1": t1, "clin": clin, "t2": t2}


def _expected(plain: DynamicFusionTransformer, tokens: dict, subset: torch.Tensor) -> torch.Tensor:
    """sum over the row's modalities of log_softmax(the transformer's logits of that modality alone), written out."""
    out = torch.zeros(subset.shape[0], plain.num_classes)
    for m in range(len(MODALITIES)):
        alone = torch.zeros_like(subset)
        alone[:, m] = True
        out += plain.fuse(tokens, alone)[0].log_softmax(-1) * subset[:, m : m + 1]
    return out


def test_product_logits_are_the_sum_of_single_modality_log_probabilities():
    plain, product = _pair()
    subsets = all_subset_masks(3)  # every non-empty subset
    subset = subsets.repeat_interleave(4, 0)
    x = _inputs(subset.shape[0])
    with torch.no_grad():
        tokens = plain.encode(x)
        logits, z = product.fuse(tokens, subset)
        _, z_plain = plain.fuse(tokens, subset)
        expected = _expected(plain, tokens, subset)
        ref_logits, ref_z = product.fuse_full(tokens, subset)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, z_plain)  # z (prototypes, calibration, quality) is the transformer's
    torch.testing.assert_close(ref_logits, logits, atol=1e-5, rtol=1e-5)  # the reference path agrees
    torch.testing.assert_close(ref_z, z, atol=1e-5, rtol=1e-5)
    single = subset.sum(1) == 1  # one modality: the expert's own (log-normalised) prediction
    torch.testing.assert_close(logits[single].softmax(-1), plain.fuse(tokens, subset)[0][single].softmax(-1))
    # the product is not the transformer's own decision on the larger subsets (else the option would be void)
    transformer = plain.fuse(tokens, subset)[0]
    assert not torch.allclose(logits[~single].softmax(-1), transformer[~single].softmax(-1), atol=1e-3)


def test_product_with_row_index_and_hidden_modalities():
    plain, product = _pair()
    x = _inputs(5)
    g = torch.Generator().manual_seed(3)
    index = torch.randint(0, 5, (30,), generator=g)
    subset = all_subset_masks(3)[torch.randint(0, 7, (30,), generator=g)]
    with torch.no_grad():
        tokens = product.encode(x)
        copied = {m: t.index_select(0, index) for m, t in tokens.items()}
        indexed = product.fuse(tokens, subset, index=index)[0]
        torch.testing.assert_close(indexed, product.fuse(copied, subset)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(indexed, _expected(plain, copied, subset), atol=1e-5, rtol=1e-5)
        # a modality outside a row's subset changes nothing in that row
        noisy = dict(copied, t2=copied["t2"] + torch.randn_like(copied["t2"]))
        without_t2 = ~subset[:, 2]
        torch.testing.assert_close(product.fuse(noisy, subset)[0][without_t2], indexed[without_t2], atol=1e-5,
                                   rtol=1e-5)


def test_training_rows_keep_the_transformers_logits():
    """fuse_subsets (training's cross-entropy, the checkpoint criterion) fits the transformer's logits for every
    subset: one-modality rows are the experts the product multiplies."""
    plain, product = _pair()
    x = _inputs(6)
    subsets = all_subset_masks(3)
    present = torch.ones(6, 3, dtype=torch.bool)
    present[0, 1] = False
    with torch.no_grad():
        out = product(x, subsets=subsets, present=present)
        ref = plain(x, subsets=subsets, present=present)
        decided = product.fuse(product.encode(x), out["subset"], index=out["rows"])[0]
    assert not out["subset"][out["rows"] == 0][:, 1].any()  # sample 0's rows never use its missing modality
    torch.testing.assert_close(out["logits"], ref["logits"])
    torch.testing.assert_close(out["z"], ref["z"])
    many = out["subset"].sum(1) > 1
    assert not torch.allclose(decided[many].softmax(-1), out["logits"][many].softmax(-1), atol=1e-3)
    product.train()
    loss = torch.nn.functional.cross_entropy(product(x, subsets=subsets, present=present)["logits"],
                                             torch.randint(0, 3, (out["logits"].shape[0],)))
    loss.backward()
    assert product.classifier.weight.grad.abs().sum() > 0


def test_unknown_logit_fusion_is_refused():
    with pytest.raises(ValueError, match="logit_fusion must be one of \\['transformer', 'product'\\], got 'mean'"):
        DynamicFusionTransformer(["a"], {"a": ClinicalTokenEncoder(2, [], 8)}, num_classes=2, dim=8, num_heads=2,
                                 logit_fusion="mean")


def _format() -> dict:
    image = {"type": "image", "format": "magnitude", "num_channels": 1, "spatial_shape": [8, 8], "dtype": "float32",
             "value_range": []}
    clin = {"type": "tabular", "format": "fields", "num_channels": 3, "spatial_shape": [], "dtype": "float32",
            "value_range": []}
    present = {"type": "mask", "format": "bool", "num_channels": 3, "spatial_shape": [], "dtype": "bool",
               "value_range": [0, 1], "channel_def": {str(i): m for i, m in enumerate(MODALITIES)}}
    return {"inputs": {"t1": image, "clin": clin, "t2": dict(image), "present": present},
            "outputs": {"pred": {"type": "logits", "format": "classes", "num_channels": 3, "spatial_shape": [],
                                 "dtype": "float32", "value_range": []}}}


def test_scripted_product_matches_the_network():
    _, product = _pair()
    inputs, present = example_fusion_inputs(_format(), batch_size=5)
    inputs["clin"] = _inputs(5)["clin"]  # a valid category index
    present[0] = torch.tensor([True, False, False])
    present[1] = torch.tensor([False, True, True])
    scripted = torch.jit.script(FusionExport(product).eval())
    with torch.no_grad():
        expected, _ = product(inputs, present)
        torch.testing.assert_close(scripted(inputs, present), expected, atol=1e-5, rtol=1e-5)


def test_exported_product_matches_the_network():
    torch.manual_seed(0)
    encoders = {m: ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2) for m in ("t1", "t2")}
    product = DynamicFusionTransformer(("t1", "t2"), encoders, num_classes=3, dim=16, num_heads=2, proj_dim=8,
                                       logit_fusion="product").eval()
    for p in product.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = _inputs(4)
    inputs = {"t1": x["t1"], "t2": x["t2"]}
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    with torch.no_grad():
        program = export_fusion(product, (inputs, present))
        expected, _ = product(inputs, present)
        torch.testing.assert_close(program.module()(inputs, present), expected, atol=1e-5, rtol=1e-5)
