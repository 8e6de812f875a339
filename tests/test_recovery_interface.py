"""Recovery-network interface: pass-through, shapes/dtype/device, batching, bad input (MoPoE and imputer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery
from monai_dymo.networks.recovery.mopoe import MoPoERecovery

MODS = ("img", "vol", "clin")


def _net(seed: int = 0) -> MoPoERecovery:
    torch.manual_seed(seed)
    specs = {
        "img": {"shape": [1, 8, 8], "channels": [4, 8], "strides": [2, 2], "output_activation": "sigmoid"},
        "vol": {"shape": [2, 8, 8, 8], "likelihood": "gaussian", "channels": [4, 8], "strides": [2, 2]},
        "clin": {"shape": [4], "categorical": {3: 3}, "hidden": [16]},
    }
    return MoPoERecovery(MODS, specs, latent_dim=6).eval()


def _batch(b: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clin = torch.randn(b, 4, generator=g)
    clin[:, 3] = torch.randint(0, 3, (b,), generator=g).float()
    return {"img": torch.rand(b, 1, 8, 8, generator=g), "vol": torch.randn(b, 2, 8, 8, 8, generator=g), "clin": clin}


# every non-empty pattern of 3 modalities, twice
PRESENT = torch.tensor(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]] * 2, dtype=torch.bool
)


def test_observed_pass_through_bit_for_bit():
    net = _net()
    x = _batch(len(PRESENT))
    with torch.no_grad():
        out = net(x, PRESENT)
    assert set(out) == set(MODS)
    for m, name in enumerate(MODS):
        rows = PRESENT[:, m]
        assert torch.equal(out[name][rows], x[name][rows])
        # missing rows were generated (not left as the input's values)
        assert not torch.equal(out[name][~rows], x[name][~rows])
    # inputs were not modified in place
    assert torch.equal(x["img"], _batch(len(PRESENT))["img"])
    # a modality observed for every patient is the very same tensor
    full = torch.ones(3, 3, dtype=torch.bool)
    xb = _batch(3)
    with torch.no_grad():
        out_full = net(xb, full)
    assert all(out_full[n] is xb[n] for n in MODS)


def test_shapes_dtype_device_and_placeholders():
    net = _net()
    b = len(PRESENT)
    x = _batch(b)
    x64 = dict(x, vol=x["vol"].double())
    with torch.no_grad():
        out = net(x64, PRESENT)
    for name in MODS:
        assert out[name].shape == x[name].shape
        assert out[name].device == x[name].device
    assert out["vol"].dtype == torch.float64 and out["img"].dtype == torch.float32
    # recovered categorical field holds a valid class index, image in sigmoid range
    cls = out["clin"][:, 3]
    assert torch.equal(cls, cls.round()) and bool(((cls >= 0) & (cls <= 2)).all())
    assert bool(((out["img"] >= 0) & (out["img"] <= 1)).all())

    # missing rows: zeros, garbage, or the modality left out entirely when missing for everyone -> same recovery
    only_img = torch.zeros(b, 3, dtype=torch.bool)
    only_img[:, 0] = True
    zeros = {"img": x["img"], "vol": torch.zeros_like(x["vol"]), "clin": torch.zeros_like(x["clin"])}
    garbage = {
        "img": x["img"],
        "vol": torch.randn_like(x["vol"]) * 100,
        "clin": torch.full_like(x["clin"], float("nan")),
    }
    with torch.no_grad():
        a = net(zeros, only_img)
        c = net(garbage, only_img)
        d = net({"img": x["img"]}, only_img)
    for name in ("vol", "clin"):
        assert torch.equal(a[name], c[name]) and torch.equal(a[name], d[name])
        assert d[name].shape == (b, *net.modality_shapes[name]) and d[name].dtype == torch.float32


def test_batched_equals_one_patient_at_a_time():
    net = _net()
    x = _batch(len(PRESENT))
    with torch.no_grad():
        batched = net(x, PRESENT)
        again = net(x, PRESENT)
        singles = [net({k: v[i : i + 1] for k, v in x.items()}, PRESENT[i : i + 1]) for i in range(len(PRESENT))]
    for name in MODS:
        assert torch.equal(batched[name], again[name])  # deterministic posterior mean
        stacked = torch.cat([s[name] for s in singles])
        torch.testing.assert_close(batched[name], stacked, atol=1e-5, rtol=1e-5)


def test_nan_fields_inside_observed_clinical_group_pass_through():
    net = _net()
    x = _batch(4)
    x["clin"][0, 1] = float("nan")
    present = torch.tensor([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = net(x, present)
    assert torch.isnan(out["clin"][0, 1]) and torch.equal(out["clin"][0, [0, 2, 3]], x["clin"][0, [0, 2, 3]])
    assert torch.isfinite(out["img"]).all() and torch.isfinite(out["vol"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_device():
    net = _net().cuda()
    x = {k: v.cuda() for k, v in _batch(len(PRESENT)).items()}
    with torch.no_grad():
        out = net(x, PRESENT.cuda())
    assert all(v.is_cuda for v in out.values())
    for m, name in enumerate(MODS):
        assert torch.equal(out[name][PRESENT[:, m].cuda()], x[name][PRESENT[:, m].cuda()])


def _fitted_imputer() -> IterativeImputerRecovery:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 2))
    b = np.stack([a[:, 0] + a[:, 1], a[:, 0] - a[:, 1], 3 * a[:, 0]], 1) + 0.01 * rng.normal(size=(200, 3))
    return IterativeImputerRecovery({"a": 2, "b": ["b0", "b1", "b2"]}).fit({"a": a, "b": b})


@pytest.mark.parametrize("kind", ["mopoe", "imputer"])
def test_bad_input_errors(kind):
    if kind == "mopoe":
        net, x, shape_key, good = _net(), _batch(3), "img", (1, 8, 8)
        present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    else:
        net = _fitted_imputer()
        x = {"a": torch.randn(3, 2), "b": torch.randn(3, 3)}
        shape_key, good = "b", (3,)
        present = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    names = net.modalities

    no_obs = present.clone()
    no_obs[2] = False
    with pytest.raises(ValueError, match=r"patient index 2 has no observed modality"):
        net(x, no_obs)

    with pytest.raises(ValueError, match=r"unknown modality name\(s\) \['flair'\]"):
        net({**x, "flair": torch.zeros(3, 1)}, present)
    # strict=False ignores extra keys (e.g. a whole batch dict)
    net({**x, "label": torch.zeros(3)}, present, strict=False)

    wrong = dict(x)
    wrong[shape_key] = torch.zeros(3, *(s + 1 for s in good))
    with pytest.raises(ValueError) as err:
        net(wrong, present)
    msg = str(err.value)
    assert "patient index 0" in msg and f"'{shape_key}'" in msg
    assert "expected shape [" + ", ".join(str(s) for s in good) + "]" in msg
    assert "found [" + ", ".join(str(s + 1) for s in good) + "]" in msg

    with pytest.raises(ValueError, match="batch size mismatch"):
        net({**x, shape_key: x[shape_key][:2]}, present)

    obs_col = names.index(shape_key)
    without = {k: v for k, v in x.items() if k != shape_key}
    with pytest.raises(ValueError, match=rf"patient index 0, modality '{shape_key}': marked observed"):
        net(without, present if present[0, obs_col] else torch.ones_like(present))

    with pytest.raises(ValueError, match=r"`present` must have shape \[B, "):
        net(x, present[:, :1])
    with pytest.raises(ValueError, match="bool"):
        net(x, present.float() * 0.5)


def test_nan_in_observed_image_is_rejected():
    net = _net()
    x = _batch(3)
    x["img"][1, 0, 2, 2] = float("nan")
    present = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"patient index 1, modality 'img': observed data contain NaN"):
        net(x, present)
    # the same NaN in a *missing* row is only a placeholder and is ignored
    present[1, 0] = False
    with torch.no_grad():
        out = net(x, present)
    assert torch.isfinite(out["img"]).all()
