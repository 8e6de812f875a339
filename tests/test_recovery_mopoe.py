"""MoPoE recovery: product of experts, ELBO, specs, builders, save/load."""

from __future__ import annotations

import itertools

import pytest
import torch

from monai_dymo.networks.recovery.mopoe import (
    ModalitySpec,
    MoPoERecovery,
    build_mri_recovery,
    build_polymnist_recovery,
    gaussian_kl_standard,
    product_of_experts,
)


def _small_net(beta: float = 1.0) -> MoPoERecovery:
    torch.manual_seed(0)
    specs = {
        "a": {"shape": [1, 8, 8], "channels": [4, 8], "strides": [2, 2]},
        "b": {"shape": [3], "hidden": [8], "categorical": {0: 2}},
        "c": {"shape": [2], "hidden": [8]},
    }
    return MoPoERecovery(["a", "b", "c"], specs, latent_dim=5, beta=beta)


def _inputs(b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    clin = torch.randn(b, 3, generator=g)
    clin[:, 0] = torch.randint(0, 2, (b,), generator=g).float()
    return {"a": torch.rand(b, 1, 8, 8, generator=g), "b": clin, "c": torch.randn(b, 2, generator=g)}


def test_product_of_experts_closed_form():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, 2, generator=g)
    logvar = torch.randn(4, 3, 2, generator=g)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    mu_s, lv_s = product_of_experts(mu, logvar, mask)
    for i in range(4):
        prec = torch.ones(2)
        num = torch.zeros(2)
        for m in range(3):
            if mask[i, m]:
                prec = prec + 1 / logvar[i, m].exp()
                num = num + mu[i, m] / logvar[i, m].exp()
        torch.testing.assert_close(mu_s[i], num / prec)
        torch.testing.assert_close(lv_s[i], -prec.log())
    # [B, K, M] form agrees with the [B, M] form
    masks = mask.unsqueeze(1).expand(4, 2, 3)
    mu_k, lv_k = product_of_experts(mu, logvar, masks)
    torch.testing.assert_close(mu_k[:, 1], mu_s)
    torch.testing.assert_close(lv_k[:, 0], lv_s)
    # a masked-out expert has no influence, and the prior alone gives N(0, I)
    mu2 = mu.clone()
    mu2[0, 1] += 100.0
    torch.testing.assert_close(product_of_experts(mu2, logvar, mask)[0], mu_s)
    none = torch.zeros(1, 3, dtype=torch.bool)
    m0, l0 = product_of_experts(mu[:1], logvar[:1], none)
    assert torch.equal(m0, torch.zeros(1, 2)) and torch.equal(l0, torch.zeros(1, 2))


def test_kl_is_mean_over_subsets_of_observed_modalities():
    net = _small_net().eval()
    x = _inputs(3)
    present = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    terms = net.elbo(x, present, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, logvar = net.encode(x, present)
    expected = []
    for i in range(3):
        obs = [m for m in range(3) if present[i, m]]
        kls = []
        for r in range(1, len(obs) + 1):
            for sub in itertools.combinations(obs, r):
                mask = torch.zeros(1, 3, dtype=torch.bool)
                mask[0, list(sub)] = True
                kls.append(gaussian_kl_standard(*product_of_experts(mu[i : i + 1], logvar[i : i + 1], mask)))
        expected.append(torch.cat(kls).mean())
    torch.testing.assert_close(terms["kl"], torch.stack(expected).mean())
    torch.testing.assert_close(terms["loss"], terms["recon"] + net.beta * terms["kl"])


def test_elbo_ignores_missing_rows_and_trains():
    net = _small_net()
    x = _inputs(6)
    present = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    ref = net.elbo(x, present, generator=torch.Generator().manual_seed(5))
    # change only values of missing rows: the objective must not move
    y = {k: v.clone() for k, v in x.items()}
    for m, name in enumerate(net.modalities):
        y[name][~present[:, m]] = 7.0
    other = net.elbo(y, present, generator=torch.Generator().manual_seed(5))
    for k in ("loss", "recon", "kl"):
        torch.testing.assert_close(other[k], ref[k])
    assert all(torch.isfinite(v) for v in ref.values())
    ref["loss"].backward()
    assert all(p.grad is not None for p in net.encoders.parameters())
    # a modality never observed in the batch reports NaN recon and gets no gradient from it
    only_a = torch.tensor([[1, 0, 0]] * 4, dtype=torch.bool)
    net.zero_grad()
    t = net.elbo({"a": x["a"][:4]}, only_a)
    assert torch.isnan(t["recon_b"]) and torch.isfinite(t["loss"])
    t["loss"].backward()
    assert all(p.grad is None for p in net.decoders["b"].parameters())


def test_categorical_field_must_hold_class_indices():
    net = _small_net()
    x = _inputs(4)
    x["b"][2, 0] = 1.5
    with pytest.raises(ValueError, match=r"row 2, modality 'b', categorical field 0"):
        net.elbo(x, torch.ones(4, 3, dtype=torch.bool))


def test_save_load_round_trip(tmp_path):
    net = _small_net().eval()
    x = _inputs(7)
    present = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=torch.bool
    )
    with torch.no_grad():
        ref = net(x, present)

    # state_dict into a fresh, differently initialised network of the same config
    torch.manual_seed(123)
    fresh = MoPoERecovery(**net.get_config()).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x, present)["a"], ref["a"])
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        out = fresh(x, present)
    assert all(torch.equal(out[k], ref[k]) for k in ref)

    # file format with config + version tag
    path = tmp_path / "mopoe.pt"
    net.save(path)
    loaded = MoPoERecovery.load(path).eval()
    assert loaded.get_config() == net.get_config()
    with torch.no_grad():
        out = loaded(x, present)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a monai_dymo.MoPoERecovery checkpoint"):
        MoPoERecovery.load(tmp_path / "plain.pt")


def test_modality_spec_validation_and_defaults():
    img = ModalitySpec.from_config({"shape": [3, 28, 28]})
    assert img.likelihood == "laplace" and img.scale == 0.75
    assert img.decoder_channels == (64, 32, 3) and img.decoder_strides == (2, 2, 1)
    vec = ModalitySpec.from_config({"shape": [5], "categorical": {"2": 4}})
    assert vec.likelihood == "gaussian" and vec.scale == 1.0 and vec.categorical == {2: 4}
    assert vec.continuous_fields == [0, 1, 3, 4]
    assert ModalitySpec.from_config(img.to_config()) == img
    with pytest.raises(ValueError, match="image likelihood"):
        ModalitySpec.from_config({"shape": [1, 8, 8], "likelihood": "poisson"})
    with pytest.raises(ValueError, match="only allowed for vector"):
        ModalitySpec.from_config({"shape": [1, 8, 8], "categorical": {0: 2}})
    with pytest.raises(ValueError, match="not divisible"):
        ModalitySpec.from_config({"shape": [1, 10, 10], "decoder_channels": [8, 1], "decoder_strides": [2, 2]})
    with pytest.raises(ValueError, match="unknown modality spec key"):
        ModalitySpec.from_config({"shape": [4], "colour": "red"})
    with pytest.raises(ValueError, match="out of range"):
        ModalitySpec.from_config({"shape": [4], "categorical": {4: 2}})
    with pytest.raises(ValueError, match="no shape configured"):
        MoPoERecovery(["a", "b"], {"a": {"shape": [3]}})


def test_builders_polymnist_and_mri():
    net = build_polymnist_recovery(latent_dim=16, channels=(8, 16, 16)).eval()
    assert net.modalities == ("m0", "m1", "m2", "m3", "m4")
    b = 6
    x = {m: torch.rand(b, 3, 28, 28) for m in net.modalities}
    present = torch.rand(b, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    present[:, 2] = True
    with torch.no_grad():
        out = net(x, present)
    for m, name in enumerate(net.modalities):
        assert out[name].shape == (b, 3, 28, 28)
        assert torch.equal(out[name][present[:, m]], x[name][present[:, m]])
        assert bool(((out[name] >= 0) & (out[name] <= 1)).all())

    mri = build_mri_recovery(
        spatial_size=(16, 16, 16),
        latent_dim=8,
        channels=(4, 8),
        strides=(2, 2),
        clinical=[{"name": "clinical", "kind": "clinical", "num_continuous": 2, "categorical": [2]}],
    ).eval()
    assert mri.modalities == ("t1", "t1c", "t2", "flair", "clinical")
    vols = {m: torch.randn(2, 1, 16, 16, 16) for m in ("t1", "flair")}
    vols["clinical"] = torch.tensor([[0.2, -0.3, 1.0], [1.0, 0.5, 0.0]])
    present = torch.tensor([[1, 0, 0, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = mri(vols, present)
    assert out["t1c"].shape == (2, 1, 16, 16, 16) and out["clinical"].shape == (2, 3)
    assert torch.equal(out["flair"], vols["flair"]) and torch.equal(out["clinical"][0], vols["clinical"][0])
    assert torch.isfinite(mri.elbo(vols, present)["loss"])


def test_subset_sampling_uniform_within_observed_and_kl_estimate():
    present = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool).repeat(700, 1)
    draw = MoPoERecovery.sample_subsets(present, torch.Generator().manual_seed(0))
    assert not bool((draw & ~present).any()) and bool(draw.any(1).all())
    full = draw[2::3]
    codes = (full.long() * torch.tensor([1, 2, 4])).sum(1)
    freq = torch.bincount(codes, minlength=8)[1:].float() / len(full)
    assert float((freq - 1 / 7).abs().max()) < 0.05  # uniform over the 7 non-empty subsets
    assert torch.equal(draw[1::3], present[1::3])

    # with the exhaustive table switched off, the KL is the (unbiased) one-subset estimate
    net = _small_net()
    mc = MoPoERecovery(**{**net.get_config(), "max_kl_subsets": 1})
    mc.load_state_dict(net.state_dict())
    x = _inputs(4)
    only_c = torch.tensor([[0, 0, 1]] * 4, dtype=torch.bool)  # one observed modality: both forms must agree
    a = net.elbo(x, only_c, generator=torch.Generator().manual_seed(1))
    b = mc.elbo(x, only_c, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a["kl"], b["kl"])
    torch.testing.assert_close(a["loss"], b["loss"])
    assert torch.isfinite(mc.elbo(x, torch.ones(4, 3, dtype=torch.bool))["loss"])


def test_expert_parametrizations_and_state_dict_guard():
    x = _inputs(5)
    present = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    torch.manual_seed(0)
    nat = MoPoERecovery(**{**_small_net().get_config(), "expert_parametrization": "natural"}).eval()
    assert nat.get_config()["expert_parametrization"] == "natural"
    # encode (mu, logvar) and encode_natural describe the same experts; posterior = product of those experts
    with torch.no_grad():
        mu, logvar = nat.encode(x, present)
        eta, log_prec = nat.encode_natural(x, present)
        torch.testing.assert_close(mu * torch.exp(-logvar), eta * present.unsqueeze(-1))
        torch.testing.assert_close(nat.posterior(x, present)[0], product_of_experts(mu, logvar, present)[0])
        out = nat(x, present)
    for m, name in enumerate(nat.modalities):
        assert torch.equal(out[name][present[:, m]], x[name][present[:, m]])
    assert torch.isfinite(nat.elbo(x, present)["loss"])

    # weights never load silently into the other parametrisation; legacy state_dicts (no marker) are "mean_logvar"
    std = _small_net()
    with pytest.raises(RuntimeError, match="trained with expert_parametrization='natural'"):
        std.load_state_dict(nat.state_dict())
    with pytest.raises(RuntimeError, match="trained with expert_parametrization='mean_logvar'"):
        nat.load_state_dict(std.state_dict())
    legacy = {k: v for k, v in std.state_dict().items() if k != "expert_parametrization_code"}
    fresh = _small_net()
    fresh.load_state_dict(legacy)
    with pytest.raises(RuntimeError):
        nat.load_state_dict(legacy)
    with pytest.raises(ValueError, match="expert_parametrization must be one of"):
        MoPoERecovery(**{**_small_net().get_config(), "expert_parametrization": "cholesky"})


def test_build_recovery_from_modality_spec():
    """One builder: image stages fitted to each size, likelihood from the intensity range, the imputer for clinical
    groups only; the PolyMNIST preset is settings of it."""
    from monai.bundle import ConfigParser

    from monai_dymo.networks import IterativeImputerRecovery, build_recovery
    from monai_dymo.networks.recovery import image_stages

    assert image_stages([28, 28], [32, 64, 128]) == ([32, 64], [2, 2])  # 28 = 4 * 7
    assert image_stages([128, 128], [32, 64, 128]) == ([32, 64, 128, 128, 128], [2] * 5)  # down to 4 x 4
    clinical = {"name": "clin", "kind": "clinical", "num_continuous": 2, "categorical": [3], "fields": ["a", "b", "c"]}
    config = {"rec": {"_target_": "monai_dymo.networks.build_recovery", "latent_dim": 4, "channels_3d": [4, 8],
                      "modalities": [{"name": "ct", "kind": "image3d", "spatial_size": [8, 8, 8]},
                                     {"name": "photo", "kind": "image2d", "spatial_size": [8, 8], "channels": 3,
                                      "unit_range": True}, clinical]}}
    rec = ConfigParser(config).get_parsed_content("rec")
    assert rec.modalities == ("ct", "photo", "clin")
    assert (rec.specs["ct"].likelihood, rec.specs["photo"].likelihood) == ("gaussian", "laplace")
    assert rec.specs["ct"].channels == (4, 8) and rec.specs["clin"].categorical == {2: 3}
    imputer = build_recovery([clinical])
    assert isinstance(imputer, IterativeImputerRecovery)
    torch.manual_seed(0)
    preset = build_polymnist_recovery(modalities=("m0", "m1"), latent_dim=8, channels=(4, 8, 8))
    torch.manual_seed(0)
    entries = [{"name": m, "kind": "image2d", "spatial_size": [28, 28], "channels": 3, "unit_range": True}
               for m in ("m0", "m1")]
    same = build_recovery(entries, latent_dim=8, expert_parametrization="mean_logvar", channels_2d=[4, 8, 8],
                          strides_2d=[2, 2, 2], image_options={"scale": 0.75})
    assert list(preset.state_dict()) == list(same.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(preset.state_dict().values(), same.state_dict().values()))
