"""FusionEnsemble: the mean-probability ensemble of fusion networks behind DyMo's encode / fuse interface; its maths,
its calibration, DyMo on it, loading from weight files and export."""

from __future__ import annotations

import math

import pytest
import torch

from monai_dymo import DyMoInferer, fit_calibration, select_modalities
from monai_dymo.networks import FusionEnsemble, export_fusion
from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer, build_polymnist_fusion
from monai_dymo.subsets import all_subset_masks

MODALITIES = ("t1", "clin", "t2")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _member(seed: int, logit_fusion: str = "transformer", metric: str = "cosine") -> DynamicFusionTransformer:
    torch.manual_seed(seed)
    encoders = {
        "t1": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2),
        "clin": ClinicalTokenEncoder(2, [3], 16),
        "t2": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2),
    }
    net = DynamicFusionTransformer(MODALITIES, encoders, num_classes=3, dim=16, depth=2, num_heads=2, proj_dim=8,
                                   logit_fusion=logit_fusion, metric=metric)
    for p in net.parameters():  # away from the zero initialisation
        p.data.add_(0.2 * torch.randn_like(p))
    return net.eval()


def _inputs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clin = torch.cat([torch.randn(batch, 2, generator=g), torch.randint(0, 3, (batch, 1), generator=g).float()], 1)
    return {"t1": torch.randn(batch, 1, 8, 8, generator=g), "clin": clin, "t2": torch.randn(batch, 1, 8, 8, generator=g)}


def _subsets(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return all_subset_masks(3)[torch.randint(0, 7, (batch,), generator=g)]


def _loader(batches: int = 3, batch: int = 9, seed: int = 5) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(batches):
        x = _inputs(batch, seed + i)
        x["label"] = torch.arange(batch) % 3
        x["present"] = torch.ones(batch, 3, dtype=torch.bool)
        out.append(x)
    return out


def test_ensemble_of_one_member_is_that_member():
    net = _member(0)
    ens = FusionEnsemble([net]).eval()
    x, subset = _inputs(7), _subsets(7)
    with torch.no_grad():
        logits, z = net.fuse(net.encode(x), subset)
        e_logits, e_z = ens.fuse(ens.encode(x), subset)
    torch.testing.assert_close(e_logits.softmax(-1), logits.softmax(-1))
    torch.testing.assert_close(e_z, z)
    assert ens.modalities == MODALITIES and ens.num_classes == 3 and ens.proj_dim == 8 and ens.num_members == 1


@pytest.mark.parametrize("logit_fusion", ["transformer", "product"])
def test_probabilities_are_the_members_mean_and_projections_concatenated(logit_fusion):
    members = [_member(0, logit_fusion), _member(1, logit_fusion), _member(2, logit_fusion)]
    ens = FusionEnsemble(members).eval()
    x, subset = _inputs(10), _subsets(10)
    with torch.no_grad():
        tokens = ens.encode(x)
        assert tokens["t1"].shape == (10, 3, 4, 16)  # [B, K, n_m, d]
        logits, z = ens.fuse(tokens, subset)
        outs = [m.fuse(m.encode(x), subset) for m in members]
    mean_prob = torch.stack([lg.softmax(-1) for lg, _ in outs]).mean(0)
    torch.testing.assert_close(logits.softmax(-1), mean_prob)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(10))  # log-probabilities
    torch.testing.assert_close(z, torch.cat([zk for _, zk in outs], -1) / math.sqrt(3))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(10))
    # against concatenated unit prototypes / sqrt(K): the cosine is the members' mean cosine
    protos = [torch.nn.functional.normalize(torch.randn(3, 8), dim=-1) for _ in members]
    joint = torch.cat(protos, -1) / math.sqrt(3)
    torch.testing.assert_close(z @ joint.T, torch.stack([zk @ p.T for (_, zk), p in zip(outs, protos)]).mean(0))
    assert ens.proj_dim == 24


def test_row_index_and_euclidean_members():
    ens = FusionEnsemble([_member(0, metric="euclidean"), _member(1, metric="euclidean")]).eval()
    x = _inputs(4)
    index = torch.tensor([0, 0, 3, 1, 2, 3])
    subset = _subsets(6, seed=3)
    with torch.no_grad():
        tokens = ens.encode(x)
        by_index = ens.fuse(tokens, subset, index=index)
        copied = ens.fuse({m: t.index_select(0, index) for m, t in tokens.items()}, subset)
        z_members = [m.fuse(m.encode(x), subset, index=index)[1] for m in ens.members]
    torch.testing.assert_close(by_index[0], copied[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_index[1], copied[1], atol=1e-5, rtol=1e-5)
    # Euclidean: not normalised; the squared distance is the members' mean squared distance
    torch.testing.assert_close(by_index[1], torch.cat(z_members, -1) / math.sqrt(2), atol=1e-5, rtol=1e-5)
    assert ens.metric == "euclidean"


def test_members_must_agree():
    with pytest.raises(ValueError, match="differ in metric"):
        FusionEnsemble([_member(0), _member(1, metric="euclidean")])
    other = DynamicFusionTransformer(("t1", "t2"), {"t1": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,),
                                                                             pool_size=2),
                                                    "t2": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,),
                                                                            pool_size=2)},
                                     num_classes=3, dim=16, num_heads=2, proj_dim=8)
    with pytest.raises(ValueError, match="differ in modalities"):
        FusionEnsemble([_member(0), other])
    with pytest.raises(ValueError, match="at least one member"):
        FusionEnsemble([])


def test_calibration_is_fitted_on_the_ensemble_itself():
    """Prototypes of the concatenated projection = the members' own class means, concatenated, / sqrt(K); the ICS
    distance is the members' mean cosine distance to them."""
    members = [_member(0), _member(1)]
    ens = FusionEnsemble(members)
    loader = _loader()
    kw = dict(modalities=MODALITIES, num_classes=3, progress=False)
    cal = fit_calibration(ens.encode, ens.fuse, loader, **kw)
    own = [fit_calibration(m.encode, m.fuse, loader, **kw) for m in members]
    torch.testing.assert_close(cal.prototypes[1:], torch.cat([c.prototypes[1:] for c in own], -1) / math.sqrt(2))
    torch.testing.assert_close(cal.overall, torch.cat([c.overall for c in own], -1) / math.sqrt(2))
    assert cal.proj_dim == ens.proj_dim == 16
    # sigma: the spread of d = mean_k (1 - z_k . mu_k) over the class's samples
    subset = all_subset_masks(3)[6]  # code 7: every modality
    with torch.no_grad():
        d = torch.zeros(27, dtype=torch.float64)
        labels = torch.cat([b["label"] for b in loader])
        for m, c in zip(members, own):
            z = torch.cat([m.fuse(m.encode({n: b[n] for n in MODALITIES}), subset.expand(9, 3))[1]
                           for b in loader]).double()
            d += (1 - (z * c.prototypes[7, labels]).sum(-1)) / 2
    sigma = torch.stack([(d[labels == k] ** 2).mean().sqrt() for k in range(3)])
    torch.testing.assert_close(cal.sigma[7], sigma, atol=1e-6, rtol=1e-5)


def test_dymo_runs_on_the_ensemble():
    ens = FusionEnsemble([_member(0), _member(1)])
    cal = fit_calibration(ens.encode, ens.fuse, _loader(), modalities=MODALITIES, num_classes=3, progress=False)
    x = _inputs(6, seed=9)
    present = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        result = select_modalities(ens.fuse, ens.encode(x), present, cal)
    assert result.logits.shape == (6, 3) and torch.isfinite(result.logits).all()
    assert result.projection.shape == (6, 16)
    assert (result.selected | ~present).all() and not (result.accepted & present).any()
    inferer = DyMoInferer(cal, margin=0.0)
    logits = inferer(x, ens, present=present)
    torch.testing.assert_close(logits, result.logits)


def test_from_weights_loads_one_member_per_file(tmp_path):
    members = [_member(0), _member(1)]
    paths = []
    for i, m in enumerate(members):
        paths.append(tmp_path / f"fusion_fold{i}.pt")
        torch.save(m.state_dict(), paths[-1])
    template = _member(7)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    ens = FusionEnsemble.from_weights(template, paths).eval()
    assert all(torch.equal(v, template.state_dict()[k]) for k, v in before.items())  # the template is left alone
    x, subset = _inputs(5), _subsets(5)
    with torch.no_grad():
        for loaded, member in zip(ens.members, members):
            torch.testing.assert_close(loaded.fuse(loaded.encode(x), subset), member.fuse(member.encode(x), subset))
    built = FusionEnsemble.from_weights(lambda: _member(3), paths)  # a builder instead of a template
    assert built.num_members == 2
    wrong = DynamicFusionTransformer(MODALITIES, {m: ClinicalTokenEncoder(2, [3], 16) for m in MODALITIES},
                                     num_classes=3, dim=16, num_heads=2, proj_dim=8)
    with pytest.raises(ValueError, match=r"fusion_fold0\.pt do not fit"):
        FusionEnsemble.from_weights(wrong, paths)


@pytest.mark.slow
def test_export_of_the_ensemble_matches_eager():
    """TorchScript and torch.export of the ensemble's mean-probability logits (image members: the clinical encoder's
    input checks are data-dependent, which torch.export cannot trace)."""
    members = []
    for seed, mode in ((0, "product"), (1, "transformer")):
        torch.manual_seed(seed)
        net = build_polymnist_fusion(num_modalities=3, num_classes=4, dim=16, depth=2, num_heads=2, proj_dim=8,
                                     channels=(8, 16, 16))
        net.logit_fusion = mode
        for p in net.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        members.append(net)
    ens = FusionEnsemble(members)
    g = torch.Generator().manual_seed(0)
    inputs = {f"m{i}": torch.rand(4, 3, 28, 28, generator=g) for i in range(3)}
    present = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        expected, _ = ens(inputs, present)
        scripted = torch.jit.script(ens.exportable().eval())
        torch.testing.assert_close(scripted(inputs, present), expected, atol=1e-5, rtol=1e-5)
        program = export_fusion(ens, (inputs, present))
        torch.testing.assert_close(program.module()(inputs, present), expected, atol=1e-5, rtol=1e-5)
    assert list(ens.exportable().state_dict()) == list(ens.state_dict())
