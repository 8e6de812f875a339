"""Encoders and the DyMo fusion transformer (method section 1)."""

from __future__ import annotations

import pytest
import torch

from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer, build_image_fusion, build_polymnist_fusion
from monai_dymo.subsets import all_subset_masks


# tiny tensors: a single thread is faster and immune to other processes competing for the cores
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _random_subsets(batch: int, num_mod: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, 2**num_mod, (batch,), generator=g)
    return all_subset_masks(num_mod)[codes - 1]


def _small_fusion(dropout: float = 0.0, depth: int = 2) -> DynamicFusionTransformer:
    torch.manual_seed(0)
    encoders = {
        "t1": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2),  # 4 tokens
        "clin": ClinicalTokenEncoder(2, [3, 2], 16),  # 4 tokens
        "t2": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=(1, 3)),  # 3 tokens
    }
    return DynamicFusionTransformer(
        ("t1", "clin", "t2"), encoders, num_classes=3, dim=16, depth=depth, num_heads=2, proj_dim=8, dropout=dropout
    )


def _small_inputs(batch: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clin = torch.cat([torch.randn(batch, 2, generator=g), torch.randint(0, 2, (batch, 2), generator=g).float()], 1)
    return {
        "t1": torch.randn(batch, 1, 8, 8, generator=g),
        "clin": clin,
        "t2": torch.randn(batch, 1, 8, 8, generator=g),
    }


# ---------------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize(
    "spatial_dims,in_channels,size,kwargs,expected_tokens",
    [
        (2, 3, 28, {"channels": (8, 16), "strides": (2, 2), "pool_size": 4}, 16),
        (2, 3, 28, {"channels": (8, 16), "strides": (2, 2), "pool_size": None, "spatial_size": 28}, 49),
        (3, 1, 32, {"channels": (4, 8), "strides": (2, 2), "pool_size": 2}, 8),
        (3, 1, 32, {"channels": (4, 8), "strides": (2, 2), "pool_size": None, "spatial_size": 32}, 512),
        (3, 1, 64, {"channels": (4, 8, 8), "strides": (2, 2, 2), "pool_size": (2, 2, 1), "num_res_units": 1}, 4),
    ],
)
def test_image_encoder_shapes(spatial_dims, in_channels, size, kwargs, expected_tokens):
    enc = ImageTokenEncoder(spatial_dims, in_channels, 12, **kwargs)
    assert enc.num_tokens == expected_tokens
    x = torch.randn(2, in_channels, *([size] * spatial_dims))
    out = enc(x)
    assert out.shape == (2, expected_tokens, 12)
    assert torch.isfinite(out).all()


def test_image_encoder_unknown_token_count_and_bad_input():
    enc = ImageTokenEncoder(2, 3, 8, channels=(4,), strides=(2,), pool_size=None)
    assert enc.num_tokens is None
    assert enc(torch.randn(1, 3, 10, 10)).shape == (1, 25, 8)
    with pytest.raises(ValueError, match=r"\[B, 3, S, S\].*\(1, 1, 10, 10\)"):
        enc(torch.randn(1, 1, 10, 10))
    with pytest.raises(ValueError, match="spatial_dims"):
        ImageTokenEncoder(1, 3, 8)
    with pytest.raises(ValueError, match="equal length"):
        ImageTokenEncoder(2, 3, 8, channels=(4, 8), strides=(2,))


def test_clinical_encoder_tokens():
    torch.manual_seed(0)
    enc = ClinicalTokenEncoder(2, [3, 4], dim=6)
    assert enc.num_tokens == 4
    x = torch.tensor(
        [
            [0.5, -1.0, 2.0, 0.0],
            [float("nan"), 3.0, -1.0, 3.0],  # continuous 0 missing, categorical 0 unknown
        ]
    )
    out = enc(x)
    assert out.shape == (2, 4, 6)
    # continuous fields: value * w + b
    torch.testing.assert_close(out[0, 0], 0.5 * enc.cont_weight[0] + enc.cont_bias[0])
    torch.testing.assert_close(out[1, 1], 3.0 * enc.cont_weight[1] + enc.cont_bias[1])
    # missing field -> its learned missing embedding
    torch.testing.assert_close(out[1, 0], enc.missing_embedding[0])
    # categorical: own rows per field, unknown (-1) is a distinct extra row of that field
    w = enc.cat_embedding.weight
    torch.testing.assert_close(out[0, 2], w[2])  # field 0, category 2
    torch.testing.assert_close(out[1, 2], w[3])  # field 0, unknown -> row 3 (after its 3 categories)
    torch.testing.assert_close(out[0, 3], w[4 + 0])  # field 1 starts after field 0's 4 rows
    torch.testing.assert_close(out[1, 3], w[4 + 3])
    # optional mask: False marks a field missing
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 3] = False
    out_m = enc(x, mask)
    torch.testing.assert_close(out_m[0, 3], enc.missing_embedding[3])
    torch.testing.assert_close(out_m[0, :3], out[0, :3])
    # gradients flow to the used parameters and nothing is NaN
    out_m.sum().backward()
    assert torch.isfinite(enc.cont_weight.grad).all()


def test_clinical_encoder_errors():
    enc = ClinicalTokenEncoder(1, [3], dim=4)
    with pytest.raises(ValueError, match=r"\[B, 2\].*\(2, 3\)"):
        enc(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sample 1: categorical field 0 .*value 3.0"):
        enc(torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    with pytest.raises(ValueError, match="value 0.5"):
        enc(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="mask"):
        enc(torch.zeros(2, 2), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        ClinicalTokenEncoder(0, [], dim=4)


# ---------------------------------------------------------------------------------------------- fusion
def test_fusion_shapes_and_unit_norm():
    net = _small_fusion().eval()
    assert net.modalities == ("t1", "clin", "t2")
    assert (net.num_classes, net.proj_dim) == (3, 8)
    assert net.num_tokens == {"t1": 4, "clin": 4, "t2": 3}
    x = _small_inputs()
    tokens = net.encode(x)
    assert {k: tuple(v.shape) for k, v in tokens.items()} == {"t1": (6, 4, 16), "clin": (6, 4, 16), "t2": (6, 3, 16)}
    logits, z = net(x)
    assert logits.shape == (6, 3) and z.shape == (6, 8)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(6))
    # forward(subset=None) uses every modality
    full = torch.ones(6, 3, dtype=torch.bool)
    logits_all, z_all = net.fuse(tokens, full)
    torch.testing.assert_close(logits, logits_all)
    torch.testing.assert_close(z, z_all)
    # a single [M] subset is broadcast to every row
    one = torch.tensor([True, False, True])
    torch.testing.assert_close(net.fuse(tokens, one)[0], net.fuse(tokens, one.expand(6, 3))[0])


def _spec_reference(net: DynamicFusionTransformer, x: dict, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Method section 1, written out literally from the network's parameters: per-modality LayerNorm, zero the tokens
    of modalities outside the subset, add the modality embedding, prepend CLS, add positional embeddings, run the blocks'
    own forward over the whole sequence with a key mask hiding the unselected modalities, CLS -> heads."""
    parts = [net.cls_token.expand(subset.shape[0], -1, -1)]
    for i, m in enumerate(net.modalities):
        t = net.token_norms[m](net.encoders[m](x[m]))
        parts.append(t * subset[:, i, None, None].float() + net.modality_embedding[i])
    seq = torch.cat(parts, dim=1) + net.pos_embedding
    hidden = torch.cat(
        [torch.zeros(subset.shape[0], 1, dtype=torch.bool)]
        + [(~subset[:, i, None]).expand(-1, net.num_tokens[m]) for i, m in enumerate(net.modalities)],
        dim=1,
    )
    for block in net.blocks:
        seq = block(seq, src_key_padding_mask=hidden)
    cls = net.norm(seq[:, 0])
    return net.classifier(cls), torch.nn.functional.normalize(net.projection(cls), dim=-1)


def _perturb_parameters(net: DynamicFusionTransformer) -> None:
    # non-trivial LayerNorm affine parameters and biases (the defaults are 1 / 0)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_forward_matches_method_written_out(depth):
    net = _small_fusion(depth=depth).eval()
    _perturb_parameters(net)
    x = _small_inputs(batch=20)
    subset = _random_subsets(20, 3, seed=3)
    with torch.no_grad():
        logits, z = net(x, subset)
        logits_ref, z_ref = _spec_reference(net, x, subset)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("depth", [1, 2])
def test_fuse_matches_full_masked_reference(train_mode, depth):
    net = _small_fusion(depth=depth)
    _perturb_parameters(net)
    net.train(train_mode)  # dropout is 0, so train mode exercises the autograd (non fast-path) attention
    x = _small_inputs(batch=20)
    subset = _random_subsets(20, 3, seed=3)
    assert len(torch.unique(subset.sum(1))) > 1  # rows of different sizes in one call
    with torch.set_grad_enabled(train_mode):
        tokens = net.encode(x)
        logits, z = net.fuse(tokens, subset)
        logits_ref, z_ref = net.fuse_full(tokens, subset)
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    if train_mode:
        params = [p for p in net.parameters() if p.requires_grad]
        grads = torch.autograd.grad(logits.sum() + z.sum(), params, retain_graph=True, allow_unused=True)
        grads_ref = torch.autograd.grad(logits_ref.sum() + z_ref.sum(), params, allow_unused=True)
        for (name, _), g, g_ref in zip(net.named_parameters(), grads, grads_ref):
            if g_ref is None:
                assert g is None or not g.any(), name
                continue
            if name.endswith("conv.bias"):  # conv bias before BatchNorm: true gradient 0, only rounding noise
                continue
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("depth", [1, 2])
def test_fuse_with_row_index_and_chunks(depth):
    """``index`` (several rows per sample: the first block's projection is shared) and small chunks give the same
    rows as fusing copies of the tokens over the whole sequence."""
    net = _small_fusion(depth=depth).eval()
    _perturb_parameters(net)
    x = _small_inputs(batch=5)
    g = torch.Generator().manual_seed(4)
    index = torch.randint(0, 5, (40,), generator=g)
    subset = _random_subsets(40, 3, seed=9)
    with torch.no_grad():
        tokens = net.encode(x)
        copied = {m: t.index_select(0, index) for m, t in tokens.items()}
        ref = net.fuse_full(copied, subset)
        for chunk in (4096, 12, 1):
            net.chunk_tokens = chunk
            for out in (net.fuse(tokens, subset, index=index), net.fuse(copied, subset)):
                torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
        full_idx = net.fuse_full(tokens, subset, index=index)
    torch.testing.assert_close(full_idx[0], ref[0])
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 5\).*found 0..5"):
        net.fuse(tokens, subset[:2], index=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="index must be an integer tensor"):
        net.fuse(tokens, subset[:2], index=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \[B, M\] = \(3, 3\), found \(2, 3\)"):
        net.fuse(tokens, subset[:2], index=torch.tensor([0, 1, 2]))


def test_each_row_independent_of_batch_composition():
    net = _small_fusion().eval()
    x = _small_inputs(batch=8)
    subset = _random_subsets(8, 3, seed=5)
    with torch.no_grad():
        tokens = net.encode(x)
        logits, z = net.fuse(tokens, subset)
        for b in range(8):
            lb, zb = net.fuse({k: v[b : b + 1] for k, v in tokens.items()}, subset[b : b + 1])
            torch.testing.assert_close(lb[0], logits[b], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(zb[0], z[b], atol=1e-5, rtol=1e-5)


def test_hidden_tokens_do_not_influence_outputs():
    net = _small_fusion().eval()
    x = _small_inputs(batch=12)
    subset = _random_subsets(12, 3, seed=7)
    subset[0] = torch.tensor([True, False, False])  # make sure some rows hide modalities
    with torch.no_grad():
        tokens = net.encode(x)
        ref = net.fuse(tokens, subset)
        ref_full = net.fuse_full(tokens, subset)
        perturbed = {}
        for i, m in enumerate(net.modalities):
            noise = 100.0 * torch.randn_like(tokens[m])
            hidden = (~subset[:, i]).float()[:, None, None]
            perturbed[m] = tokens[m] + hidden * noise
        for fuse in (net.fuse, net.fuse_full):
            out = fuse(perturbed, subset)
            torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref_full[0], ref[0], atol=1e-5, rtol=1e-5)
        # ...while perturbing a visible token does change that row
        visible_noise = dict(tokens)
        visible_noise["t1"] = tokens["t1"] + 10.0 * torch.randn_like(tokens["t1"])
        out = net.fuse(visible_noise, subset)
        assert (out[0][0] - ref[0][0]).abs().max() > 1e-3


def test_eval_mode_is_deterministic_with_dropout():
    net = _small_fusion(dropout=0.5).eval()
    x = _small_inputs()
    subset = _random_subsets(6, 3)
    with torch.no_grad():
        a = net(x, subset)
        b = net(x, subset)
    torch.testing.assert_close(a[0], b[0])
    net.train()
    c = net.fuse(net.encode(x), subset)[0]
    d = net.fuse(net.encode(x), subset)[0]
    assert not torch.allclose(c, d)


def test_fusion_validation_errors():
    net = _small_fusion().eval()
    x = _small_inputs()
    tokens = net.encode(x)
    full = torch.ones(6, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"missing \['t2'\]"):
        net.encode({k: v for k, v in x.items() if k != "t2"})
    with pytest.raises(ValueError, match=r"unknown \['flair'\]"):
        net.encode({**x, "flair": x["t1"]})
    with pytest.raises(ValueError, match="modality 'clin': batch size 5"):
        net.encode({**x, "clin": x["clin"][:5]})
    with pytest.raises(ValueError, match=r"missing \['clin'\]"):
        net.fuse({k: v for k, v in tokens.items() if k != "clin"}, full)
    with pytest.raises(ValueError, match=r"modality 't2'.*\(6, 3, 16\).*\(6, 5, 16\)"):
        net.fuse({**tokens, "t2": torch.zeros(6, 5, 16)}, full)
    with pytest.raises(ValueError, match=r"modality 't1'.*\(6, 4, 16\).*\(6, 4, 8\)"):
        net.fuse({**tokens, "t1": torch.zeros(6, 4, 8)}, full)
    with pytest.raises(ValueError, match=r"shape \[B, M\] = \(6, 3\), found \(6, 2\)"):
        net.fuse(tokens, torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        net.fuse(tokens, torch.ones(6, 3))
    empty = full.clone()
    empty[4] = False
    with pytest.raises(ValueError, match="row 4: empty subset"):
        net.fuse(tokens, empty)
    with pytest.raises(ValueError, match="clinical fields"):
        net.encode({**x, "clin": torch.zeros(6, 3)})


def test_fusion_construction_errors():
    enc = {"a": ClinicalTokenEncoder(2, [], 8), "b": ClinicalTokenEncoder(1, [], 8)}
    with pytest.raises(ValueError, match=r"missing \['c'\], unknown \['b'\]"):
        DynamicFusionTransformer(("a", "c"), enc, num_classes=2, dim=8, num_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        DynamicFusionTransformer(("a", "b"), enc, num_classes=2, dim=8, num_heads=3)
    unknown = {"a": ImageTokenEncoder(2, 1, 8, channels=(4,), strides=(2,), pool_size=None), "b": enc["b"]}
    with pytest.raises(ValueError, match="modality 'a': number of tokens unknown"):
        DynamicFusionTransformer(("a", "b"), unknown, num_classes=2, dim=8, num_heads=2)
    # ... unless given explicitly
    net = DynamicFusionTransformer(("a", "b"), unknown, num_classes=2, dim=8, num_heads=2, num_tokens={"a": 16})
    out = net({"a": torch.randn(2, 1, 8, 8), "b": torch.randn(2, 1)})
    assert out[0].shape == (2, 2)


def test_builders():
    net = build_polymnist_fusion().eval()
    assert net.modalities == ("m0", "m1", "m2", "m3", "m4")
    assert (net.num_classes, net.proj_dim) == (10, 64)
    x = {m: torch.rand(3, 3, 28, 28) for m in net.modalities}
    subset = _random_subsets(3, 5)
    with torch.no_grad():
        logits, z = net(x, subset)
    assert logits.shape == (3, 10) and z.shape == (3, 64)

    net3d = build_image_fusion(("t1", "flair"), spatial_dims=3, num_classes=2, channels=(4, 8), strides=(2, 2))
    assert net3d.num_tokens == {"t1": 8, "flair": 8}
    net3d.eval()
    with torch.no_grad():
        logits, z = net3d({"t1": torch.randn(2, 1, 32, 32, 32), "flair": torch.randn(2, 1, 32, 32, 32)})
    assert logits.shape == (2, 2) and z.shape == (2, 64)


def test_reference_recipe_encoder_gives_four_max_pooled_tokens():
    # docs/method.md §7: three stride-2 convolutions (32, 64, 128, ReLU, no norm), 1x1 conv, 2x2 max-pool
    enc = ImageTokenEncoder(2, 3, 16, channels=(4, 8, 8), strides=(2, 2, 2), norm=None, act="RELU", pool_size=2,
                            pool_mode="max")
    assert enc.num_tokens == 4
    x = torch.rand(2, 3, 28, 28)
    tokens = enc(x)
    assert tokens.shape == (2, 4, 16)
    feat = enc.features(x)  # [2, 16, 4, 4]
    assert feat.shape[-2:] == (4, 4)
    torch.testing.assert_close(tokens, torch.nn.functional.max_pool2d(feat, 2).flatten(2).transpose(1, 2))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in enc.modules())
    with pytest.raises(ValueError, match="pool_mode"):
        ImageTokenEncoder(2, 3, 16, pool_mode="median")
    net = build_polymnist_fusion(dim=32, channels=(4, 8, 8), strides=(2, 2, 2), norm=None, act="RELU", pool_size=2,
                                 pool_mode="max", mlp_ratio=4)
    assert net.num_tokens == {m: 4 for m in net.modalities}


def test_euclidean_projection_is_not_normalised():
    cos = build_polymnist_fusion(dim=16, proj_dim=8).eval()
    euc = build_polymnist_fusion(dim=16, proj_dim=8, metric="euclidean").eval()
    assert (cos.metric, euc.metric) == ("cosine", "euclidean")
    euc.load_state_dict(cos.state_dict())  # same parameters: only the head's normalisation differs
    x = {m: torch.rand(3, 3, 28, 28) for m in cos.modalities}
    with torch.no_grad():
        (l_cos, z_cos), (l_euc, z_euc) = cos(x), euc(x)
    torch.testing.assert_close(l_cos, l_euc)
    torch.testing.assert_close(z_cos, torch.nn.functional.normalize(z_euc, dim=-1))
    assert not torch.allclose(z_euc.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="metric"):
        build_polymnist_fusion(metric="dot")


def test_constructible_from_bundle_config():
    from monai.bundle import ConfigParser

    config = {
        "dim": 16,
        "network": {
            "_target_": "monai_dymo.networks.fusion.DynamicFusionTransformer",
            "modalities": ["t1", "clin"],
            "encoders": {
                "t1": {
                    "_target_": "monai_dymo.networks.encoders.ImageTokenEncoder",
                    "spatial_dims": 3,
                    "in_channels": 1,
                    "dim": "@dim",
                    "channels": [4],
                    "strides": [2],
                    "pool_size": 2,
                },
                "clin": {
                    "_target_": "monai_dymo.networks.encoders.ClinicalTokenEncoder",
                    "num_continuous": 2,
                    "categorical_cardinalities": [3],
                    "dim": "@dim",
                },
            },
            "num_classes": 2,
            "dim": "@dim",
            "num_heads": 2,
            "proj_dim": 8,
        },
        "polymnist": {"_target_": "monai_dymo.networks.fusion.build_polymnist_fusion", "dim": 32, "depth": 1},
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network")
    assert isinstance(net, DynamicFusionTransformer) and net.num_tokens == {"t1": 8, "clin": 3}
    logits, z = net.eval()({"t1": torch.randn(2, 1, 8, 8, 8), "clin": torch.tensor([[0.1, 0.2, 1.0], [0.3, 0.0, 2.0]])})
    assert logits.shape == (2, 2) and z.shape == (2, 8)
    assert parser.get_parsed_content("polymnist").dim == 32


def test_build_fusion_from_modality_spec():
    """One builder for every modality kind, by ``_target_`` from a config; the presets are settings of it."""
    from monai.bundle import ConfigParser

    from monai_dymo.errors import DyMoInputError
    from monai_dymo.networks import build_fusion

    config = {
        "net": {
            "_target_": "monai_dymo.networks.build_fusion",
            "modalities": [
                {"name": "ct", "kind": "image3d", "spatial_size": [8, 8, 8]},
                {"name": "photo", "kind": "image2d", "spatial_size": [16, 16], "channels": 3},
                {"name": "clin", "kind": "clinical", "num_continuous": 2, "categorical": [3]},
            ],
            "num_classes": 2,
            "settings": {"dim": 16, "channels_3d": [4], "channels_2d": [4, 8], "proj_dim": 8},
            "num_heads": 2,
        }
    }
    net = ConfigParser(config).get_parsed_content("net").eval()
    assert net.modalities == ("ct", "photo", "clin") and net.dim == 16
    assert net.num_tokens == {"ct": 8, "photo": 4, "clin": 3}
    logits, z = net({"ct": torch.randn(2, 1, 8, 8, 8), "photo": torch.randn(2, 3, 16, 16),
                     "clin": torch.tensor([[0.1, 0.2, 1.0], [0.3, 0.0, 2.0]])})
    assert logits.shape == (2, 2) and z.shape == (2, 8)
    torch.manual_seed(0)
    preset = build_polymnist_fusion(num_modalities=2, dim=32)
    torch.manual_seed(0)
    entries = [{"name": f"m{i}", "kind": "image2d", "spatial_size": [28, 28], "channels": 3} for i in range(2)]
    same = build_fusion(entries, 10, dim=32, mlp_ratio=4.0, proj_dim=64, dropout=0.0, channels_2d=[32, 64, 128],
                        pool_2d=2, norm=None, act="RELU", pool_mode="max")
    assert all(torch.equal(a, b) for a, b in zip(preset.state_dict().values(), same.state_dict().values()))
    assert list(preset.state_dict()) == list(same.state_dict())
    with pytest.raises(DyMoInputError, match="kind 'image4d'"):
        build_fusion([{"name": "a", "kind": "image4d"}], 2)
    with pytest.raises(DyMoInputError, match=r"unknown setting\(s\) \['width'\]"):
        build_fusion(entries, 10, width=3)


def test_selection_passes_row_index_and_matches_copied_tokens():
    """``select_modalities`` hands candidate rows to ``fuse`` as patient indices when ``fuse`` takes ``index``; the
    selection is the same as with a ``fuse`` that only accepts copied tokens."""
    from monai_dymo.calibration import fit_calibration
    from monai_dymo.selection import select_modalities

    net = _small_fusion().eval()
    _perturb_parameters(net)
    train = [{**_small_inputs(batch=24, seed=s), "label": torch.arange(24) % 3} for s in (2, 3)]
    calib = fit_calibration(net.encode, net.fuse, train, modalities=net.modalities, num_classes=3, progress=False)
    x = _small_inputs(batch=16, seed=5)
    present = torch.zeros(16, 3, dtype=torch.bool)
    present[torch.arange(16), torch.arange(16) % 3] = True
    indexed: list[bool] = []

    def with_index(tokens, subset, index=None):
        indexed.append(index is not None)
        return net.fuse(tokens, subset, index=index)

    with torch.no_grad():
        tokens = net.encode(x)
        a = select_modalities(with_index, tokens, present, calib)
        b = select_modalities(lambda tok, subset: net.fuse(tok, subset), tokens, present, calib)
    assert indexed[0] is False and all(indexed[1:]) and len(indexed) > 1
    assert torch.equal(a.selected, b.selected) and torch.equal(a.rejected, b.rejected)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5, equal_nan=True)


# ------------------------------------------------------------------------- blocks = nn.TransformerEncoderLayer
def _layer_reference(net: DynamicFusionTransformer, tokens: dict, subset: torch.Tensor) -> tuple:
    """The full masked sequence through freshly built ``torch.nn.TransformerEncoderLayer``\\ s (pre-norm, exact GELU,
    batch first) holding the network's block weights: what ``fuse`` must compute."""
    layers = []
    for block in net.blocks:
        layer = torch.nn.TransformerEncoderLayer(
            d_model=net.dim,
            nhead=block.self_attn.num_heads,
            dim_feedforward=block.linear1.out_features,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
            bias=block.linear1.bias is not None,
        )
        layer.load_state_dict(block.state_dict())
        layers.append(layer.eval())
    rows = subset.shape[0]
    cls = (net.cls_token + net.pos_embedding[:, :1]).expand(rows, -1, -1)
    x = torch.cat([cls] + [tokens[m] for m in net.modalities], dim=1)
    visible = torch.cat([torch.ones_like(subset[:, :1]), subset[:, net.token_modality]], dim=1)
    for layer in layers:
        x = layer(x, src_key_padding_mask=~visible)
    cls_out = net.norm(x[:, 0])
    return net.classifier(cls_out), torch.nn.functional.normalize(net.projection(cls_out), dim=-1)


def _random_tokens(net: DynamicFusionTransformer, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, net.num_tokens[m], net.dim, generator=g) for m in net.modalities}


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_polymnist_fusion(),  # the PolyMNIST bundle's network
        lambda: build_image_fusion(("t1", "t1c", "t2", "flair"), spatial_dims=3, num_classes=3),  # the MRI default
        lambda: build_image_fusion(("a", "b"), spatial_dims=2, num_classes=2, dim=32, depth=3, num_heads=8),
        lambda: _small_fusion(depth=1),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_blocks_equal_torch_transformer_encoder_layer(build, bias):
    torch.manual_seed(0)
    net = build().eval()
    if not bias:  # the fused path also follows nn.TransformerEncoderLayer(bias=False)
        block = net.blocks[0]
        net.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(
                net.dim, block.self_attn.num_heads, block.linear1.out_features, 0.0, "gelu",
                batch_first=True, norm_first=True, bias=False,
            )
            for _ in net.blocks
        )
    _perturb_parameters(net)
    tokens = _random_tokens(net, batch=12)
    subset = _random_subsets(12, len(net.modalities), seed=4)
    index = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7])  # several rows per sample: the shared-q/k/v path
    with torch.no_grad():
        for idx in (None, index):
            logits, z = net.fuse(tokens, subset, index=idx)
            picked = tokens if idx is None else {m: t.index_select(0, idx) for m, t in tokens.items()}
            logits_ref, z_ref = _layer_reference(net, picked, subset)
            torch.testing.assert_close(logits, logits_ref, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(z, z_ref, atol=2e-5, rtol=1e-5)


def test_shipped_polymnist_weights_fuse_as_torch_transformer_encoder_layers():
    from pathlib import Path

    weights = Path(__file__).resolve().parents[1] / "bundles" / "polymnist_dymo" / "models" / "fusion.pt"
    net = build_polymnist_fusion().eval()  # the bundle's network (configs/common.yaml)
    net.load_state_dict(torch.load(weights, weights_only=True))
    g = torch.Generator().manual_seed(0)
    x = {m: torch.rand(16, 3, 28, 28, generator=g) for m in net.modalities}
    subset = _random_subsets(16, 5, seed=1)
    with torch.no_grad():
        tokens = net.encode(x)
        logits, z = net.fuse(tokens, subset)
        logits_ref, z_ref = _layer_reference(net, tokens, subset)
    torch.testing.assert_close(logits, logits_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(z, z_ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: setattr(b, "norm_first", False), "norm_first=False"),
        (lambda b: setattr(b, "activation", torch.nn.functional.relu), "activation"),
        (lambda b: setattr(b, "activation", torch.nn.GELU(approximate="tanh")), "exact GELU"),
        (lambda b: setattr(b.self_attn, "batch_first", False), "batch_first=False"),
        (lambda b: setattr(b, "norm2", torch.nn.RMSNorm(16)), "LayerNorm"),
    ],
)
def test_fuse_refuses_blocks_it_would_not_compute_exactly(change, message):
    net = _small_fusion(depth=2).eval()
    change(net.blocks[1])
    tokens = _random_tokens(net, batch=3)
    with pytest.raises(ValueError, match=f"fusion block 1: .*{message}"):
        net.fuse(tokens, torch.ones(3, 3, dtype=torch.bool))
    net.blocks[1] = torch.nn.Identity()
    with pytest.raises(ValueError, match="fusion block 1: is a Identity"):
        net.fuse(tokens, torch.ones(3, 3, dtype=torch.bool))
