"""Tests of the per-subset calibration (method section 3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_dymo.calibration import SubsetCalibration, fit_calibration
from monai_dymo.subsets import all_subset_masks, mask_to_code

NAMES = ("t1", "t2", "flair")
C = 3


class ToyFusion(nn.Module):
    """encode: per-modality linear tokens; fuse: masked mean of tokens -> MLP -> (logits, L2-normalised z)."""

    def __init__(self, names=NAMES, in_dim=5, d=8, proj_dim=4, num_classes=C, normalize=True):
        super().__init__()
        self.modalities = tuple(names)
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.enc = nn.ModuleDict({n: nn.Linear(in_dim, 2 * d) for n in names})
        self.d = d
        self.body = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Dropout(0.5))
        self.head = nn.Linear(d, num_classes)
        self.proj = nn.Linear(d, proj_dim)
        self.normalize = normalize
        self.encode_calls = 0

    def encode(self, inputs):
        self.encode_calls += 1
        return {n: self.enc[n](inputs[n]).reshape(-1, 2, self.d) for n in self.modalities}

    def fuse(self, tokens, subset):
        w = subset.to(torch.float32)
        h = sum(tokens[n].mean(1) * w[:, i : i + 1] for i, n in enumerate(self.modalities)) / w.sum(1, keepdim=True)
        h = self.body(h)
        z = self.proj(h)
        return self.head(h), (F.normalize(z, dim=-1) if self.normalize else z)


def _dataset(n=60, seed=0, with_present=False, batch_size=16):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, 5, generator=g) for m in NAMES}
    y = torch.arange(n) % C
    present = torch.rand(n, len(NAMES), generator=g) > 0.3
    present[torch.arange(n), torch.randint(0, len(NAMES), (n,), generator=g)] = True
    batches = []
    for s in range(0, n, batch_size):
        b = {m: x[m][s : s + batch_size] for m in NAMES}
        b["label"] = y[s : s + batch_size]
        if with_present:
            b["present"] = present[s : s + batch_size]
        batches.append(b)
    return batches, x, y, present


def _direct(net, x, y, metric, present=None):
    """All projections in memory, then mu / sigma exactly as the method states."""
    net.eval()
    M = len(NAMES)
    mu = torch.full((2**M, C, net.proj_dim), float("nan"), dtype=torch.float64)
    sigma = torch.full((2**M, C), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        tokens = net.encode(x)
        for mask in all_subset_masks(M):
            code = int(mask_to_code(mask))
            _, z = net.fuse(tokens, mask.expand(len(y), M))
            z = z.double()
            for c in range(C):
                sel = y == c
                if present is not None:
                    sel &= (present | ~mask).all(1)
                zc = z[sel]
                m = zc.mean(0)
                mu[code, c] = m
                d = 1 - zc @ m if metric == "cosine" else (zc - m).norm(dim=-1)
                # symmetrised sample, population std (numpy's default ddof=0), as docs/method.md states
                sigma[code, c] = float(np.std(np.concatenate([d.numpy(), -d.numpy()])))
    return mu, sigma


@pytest.mark.parametrize("metric, strategy", [("cosine", "moments"), ("cosine", "two_pass"), ("cosine", "auto"),
                                              ("euclidean", "auto")])
def test_fit_equals_direct_computation(metric, strategy):
    torch.manual_seed(0)
    net = ToyFusion()
    net.train()
    batches, x, y, _ = _dataset()
    calib = fit_calibration(
        net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, metric=metric, strategy=strategy, progress=False
    )
    encode_calls = net.encode_calls
    assert net.training  # put back in train mode after the fit (it was in train mode before)
    mu, sigma = _direct(net, x, y, metric)
    assert calib.metric == metric and calib.modalities == NAMES
    assert calib.num_modalities == 3 and calib.num_classes == C and calib.proj_dim == net.proj_dim
    assert torch.allclose(calib.prototypes[1:], mu[1:], atol=1e-6)
    assert torch.allclose(calib.sigma[1:], sigma[1:], rtol=1e-5, atol=1e-7)
    assert torch.isnan(calib.sigma[0]).all()
    assert torch.allclose(calib.overall, calib.prototypes[1:].mean(0))
    assert encode_calls == len(batches) * (1 if strategy != "two_pass" and metric == "cosine" else 2)


def test_fit_present_aware():
    torch.manual_seed(1)
    net = ToyFusion()
    batches, x, y, present = _dataset(n=90, with_present=True)
    calib = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False)
    mu, sigma = _direct(net, x, y, "cosine", present=present)
    assert torch.allclose(calib.prototypes[1:], mu[1:], atol=1e-6)
    assert torch.allclose(calib.sigma[1:], sigma[1:], rtol=1e-5, atol=1e-7)
    # ignoring present gives different statistics for subsets with modalities some samples lack
    plain = fit_calibration(
        net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, present_key=None, progress=False
    )
    assert not torch.allclose(plain.prototypes[7], calib.prototypes[7])


def test_fit_unnormalised_projection_moments_still_exact():
    torch.manual_seed(2)
    net = ToyFusion(normalize=False)
    batches, x, y, _ = _dataset()
    calib = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False)
    mu, sigma = _direct(net, x, y, "cosine")
    assert torch.allclose(calib.sigma[1:], sigma[1:], rtol=1e-5)


def test_absent_class_raises():
    net = ToyFusion()
    batches, *_ = _dataset()
    for b in batches:
        b["label"] = b["label"] % 2  # class 2 never appears
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False)


def test_sigma_is_population_std_not_unbiased():
    """sigma**2 = sum(d**2) / n for both metrics (the unbiased 2n - 1 / n - 1 conventions are measurably different)."""
    torch.manual_seed(5)
    net = ToyFusion().eval()
    batches, x, y, _ = _dataset(n=24)
    for metric in ("cosine", "euclidean"):
        calib = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, metric=metric,
                                progress=False)
        with torch.no_grad():
            _, z = net.fuse(net.encode(x), torch.ones(len(y), 3, dtype=torch.bool))
        zc = z.double()[y == 0]
        mu = zc.mean(0)
        d = 1 - zc @ mu if metric == "cosine" else (zc - mu).norm(dim=-1)
        expected = (d.pow(2).sum() / len(d)).sqrt()
        assert torch.allclose(calib.sigma[7, 0], expected, rtol=1e-9)
        assert not torch.allclose(calib.sigma[7, 0], torch.cat([d, -d]).std(), rtol=1e-4)


def test_class_missing_for_one_subset_falls_back():
    """Natural missingness: (subset, class) pairs without a training patient get pooled statistics, recorded."""
    torch.manual_seed(6)
    net = ToyFusion()
    batches, x, y, present = _dataset(n=60, with_present=True)
    for b in batches:
        b["present"][b["label"] == 1, 2] = False  # class 1 never has flair (bit 2)
    calib = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False)
    fb = calib.fallback
    assert fb.shape == (8, C) and not fb[:, [0, 2]].any()
    assert fb[[4, 5, 6, 7], 1].all() and not fb[[1, 2, 3], 1].any()
    assert {names for names, cls in calib.fallback_pairs()} == {"{flair}", "{t1, flair}", "{t2, flair}",
                                                               "{t1, t2, flair}"}
    # {t1, t2, flair} falls back to its largest proper subsets with class-1 data: {t1, t2} only
    assert torch.allclose(calib.prototypes[7, 1], calib.prototypes[3, 1])
    assert torch.allclose(calib.sigma[7, 1], calib.sigma[3, 1])
    # {t1, flair} -> {t1}; {flair} has no proper subset with data -> pooled over every fitted subset of class 1
    assert torch.allclose(calib.prototypes[5, 1], calib.prototypes[1, 1])
    assert torch.isfinite(calib.prototypes[4, 1]).all() and calib.sigma[4, 1] > 0
    # overall prototypes leave fallback rows out
    fitted = ~calib.fallback[1:, 1]
    assert torch.allclose(calib.overall[1], calib.prototypes[1:][fitted, 1].mean(0))
    # fitted pairs are exactly what they would be without the fallback
    mu, sigma = _direct(net, x, y, "cosine", present=torch.cat([b["present"] for b in batches]))
    ok = ~calib.fallback
    ok[0] = False
    assert torch.allclose(calib.prototypes[ok], mu[ok], atol=1e-6)
    assert torch.allclose(calib.sigma[ok], sigma[ok], rtol=1e-5)
    # survives save / load
    path = Path(tempfile.mkdtemp()) / "calibration.pt"
    calib.save(path)
    assert torch.equal(SubsetCalibration.load(path).fallback, calib.fallback)


def test_min_samples_falls_back_thin_pairs():
    torch.manual_seed(7)
    net = ToyFusion()
    batches, *_ = _dataset(n=30, with_present=True)
    present = torch.cat([b["present"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    n_t1_flair = int(((labels == 0) & present[:, 0] & present[:, 2]).sum())
    n_t1 = int(((labels == 0) & present[:, 0]).sum())
    assert n_t1_flair < n_t1
    calib = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False,
                            min_samples=n_t1_flair + 1)
    assert bool(calib.fallback[5, 0]) and not bool(calib.fallback[1, 0])
    with pytest.raises(ValueError, match="fewer than 10000"):
        fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False,
                        min_samples=10_000)
    with pytest.raises(ValueError, match="min_samples"):
        fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False, min_samples=0)


def test_bad_labels_and_batches_raise():
    net = ToyFusion()
    batches, *_ = _dataset(n=16)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        fit_calibration(net.encode, net.fuse, [{**batches[0], "label": batches[0]["label"] + 5}],
                        modalities=NAMES, num_classes=C, progress=False)
    with pytest.raises(ValueError, match="flair"):
        fit_calibration(net.encode, net.fuse, [{k: v for k, v in batches[0].items() if k != "flair"}],
                        modalities=NAMES, num_classes=C, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        fit_calibration(net.encode, net.fuse, [], modalities=NAMES, num_classes=C, progress=False)


def test_two_pass_needs_reiterable_loader():
    net = ToyFusion()
    batches, *_ = _dataset(n=30)
    with pytest.raises(ValueError, match="second calibration pass"):
        fit_calibration(net.encode, net.fuse, iter(batches), modalities=NAMES, num_classes=C, strategy="two_pass",
                        progress=False)


def test_input_keys_and_classmethod_alias():
    torch.manual_seed(3)
    net = ToyFusion()
    batches, *_ = _dataset(n=30)
    renamed = [{("img_" + k if k in NAMES else k): v for k, v in b.items()} for b in batches]
    a = fit_calibration(net.encode, net.fuse, batches, modalities=NAMES, num_classes=C, progress=False)
    b = SubsetCalibration.fit(net.encode, net.fuse, renamed, modalities=NAMES, num_classes=C,
                              input_keys=[f"img_{n}" for n in NAMES], progress=False)
    assert torch.allclose(a.prototypes[1:], b.prototypes[1:]) and torch.allclose(a.sigma[1:], b.sigma[1:])


def test_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(8, C, 4, generator=g, dtype=torch.float64)
    sigma = torch.rand(8, C, generator=g, dtype=torch.float64) + 0.1
    overall = torch.randn(C, 4, generator=g, dtype=torch.float64)
    calib = SubsetCalibration(protos, sigma, overall=overall, metric="euclidean", modalities=NAMES)
    path = tmp_path / "calibration.pt"
    calib.save(path)
    back = SubsetCalibration.load(path, map_location="cpu")
    assert torch.equal(back.prototypes, calib.prototypes) and torch.equal(back.sigma, calib.sigma)
    assert torch.equal(back.overall, calib.overall)
    assert back.metric == "euclidean" and back.modalities == NAMES
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == 2
    state["format_version"] = 1  # written before the population-sigma correction: refused, naming the file
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{path}.*format version 1.*refit"):
        SubsetCalibration.load(path)
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="not a monai_dymo calibration"):
        SubsetCalibration.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"calibration {path}"):
        SubsetCalibration.load(path)


def test_constructor_validation_and_defaults():
    protos = torch.randn(8, C, 4)
    sigma = torch.rand(8, C) + 0.1
    calib = SubsetCalibration(protos, sigma)
    assert torch.allclose(calib.overall, protos[1:].double().mean(0))
    assert calib.to("cpu") is calib
    with pytest.raises(ValueError, match="2\\*\\*M rows"):
        SubsetCalibration(torch.randn(6, C, 4), torch.rand(6, C))
    with pytest.raises(ValueError, match="sigma must be"):
        SubsetCalibration(protos, sigma[:, :2])
    bad = sigma.clone()
    bad[5, 1] = 0
    with pytest.raises(ValueError, match=r"code 5\), class 1"):
        SubsetCalibration(protos, bad)
    with pytest.raises(ValueError, match="metric"):
        SubsetCalibration(protos, sigma, metric="manhattan")
    with pytest.raises(ValueError, match="modality names"):
        SubsetCalibration(protos, sigma, modalities=["a", "b"])
    row0 = sigma.clone()
    row0[0] = float("nan")
    SubsetCalibration(protos, row0)  # row 0 (empty subset) is never used
