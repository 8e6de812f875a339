"""Tests of DyMoInferer (recovery, encode once, batched selection, records, empty patients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from monai_dymo.calibration import fit_calibration
from monai_dymo.inferers import NO_MODALITY_ERROR, DyMoInferer
from monai_dymo.selection import select_modalities
from tests.toy_fusion import ConstantRecovery
from tests.toy_fusion import ToyFusionNet as ToyNet

NAMES = ("ct", "pet", "clin")
C = 3


def _batch(B=10, seed=1, missing=0.5):
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, 4, generator=g) for n in NAMES}
    present = torch.rand(B, len(NAMES), generator=g) >= missing
    present[torch.arange(B), torch.randint(0, len(NAMES), (B,), generator=g)] = True
    return x, present


@pytest.fixture(scope="module")
def net_and_calib(toy_fusion):
    return toy_fusion


def test_inferer_without_recovery_matches_select_modalities(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    inferer = DyMoInferer(calib)
    net.encoded.clear()
    logits = inferer(x, net, present=present)
    assert len(net.encoded) == 1  # encoders run once
    with torch.no_grad():
        ref = select_modalities(net.fuse, net.encode(x), present, calib)
    assert torch.equal(logits, ref.logits)
    assert torch.equal(inferer.last_result.selected, ref.selected)
    records = inferer.last_records(patient_ids=[f"p{i}" for i in range(10)])
    assert [r["patient_id"] for r in records] == [f"p{i}" for i in range(10)]
    assert all(r["error"] is None for r in records)
    assert not logits.requires_grad


def test_inferer_passes_the_reward_margin(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    with torch.no_grad():
        tokens = net.encode(x)
        paper = select_modalities(net.fuse, tokens, present, calib)
    assert paper.accepted.any()
    # a margin just above the smallest accepted reward drops at least that acceptance
    b, m = paper.accepted.nonzero(as_tuple=True)
    margin = float(paper.rewards[paper.accept_step[b, m], b, m].min()) + 1e-9  # that patient stops at that step
    inferer = DyMoInferer(calib, margin=margin)
    logits = inferer(x, net, present=present)
    with torch.no_grad():
        ref = select_modalities(net.fuse, tokens, present, calib, margin=margin)
    assert torch.equal(logits, ref.logits) and torch.equal(inferer.last_result.selected, ref.selected)
    assert int(ref.accepted.sum()) < int(paper.accepted.sum())
    with pytest.raises(ValueError, match="margin"):
        DyMoInferer(calib, margin=-1.0)


def test_inferer_with_recovery_fills_only_missing(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch(seed=2)
    rec = ConstantRecovery(0.5)
    inferer = DyMoInferer(calib, recovery=rec)
    net.encoded.clear()
    logits = inferer(x, net, present=present)
    assert rec.calls == 1 and len(net.encoded) == 1
    seen = net.encoded[0]
    for i, n in enumerate(NAMES):
        assert torch.equal(seen[n][present[:, i]], x[n][present[:, i]])  # observed kept bit for bit
        assert (seen[n][~present[:, i]] == 0.5).all()  # missing recovered
    filled = {n: torch.where(present[:, i, None], x[n], torch.full_like(x[n], 0.5)) for i, n in enumerate(NAMES)}
    with torch.no_grad():
        ref = select_modalities(net.fuse, net.encode(filled), present, calib)
    assert torch.allclose(logits, ref.logits) and torch.equal(inferer.last_result.selected, ref.selected)
    # recovery changes the result compared with using the raw placeholders
    plain = DyMoInferer(calib)(x, net, present=present)
    assert not torch.allclose(plain, logits)


def test_recovery_not_called_when_complete(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    rec = ConstantRecovery()
    DyMoInferer(calib, recovery=rec)(x, net, present=torch.ones_like(present))
    assert rec.calls == 0


def test_empty_patients_reported_with_nan(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch(B=8, seed=3)
    present[[2, 5]] = False
    inferer = DyMoInferer(calib)
    logits = inferer(x, net, present=present)
    assert torch.isnan(logits[[2, 5]]).all()
    keep = [0, 1, 3, 4, 6, 7]
    with torch.no_grad():
        ref = select_modalities(net.fuse, net.encode({n: v[keep] for n, v in x.items()}), present[keep], calib)
    assert torch.allclose(logits[keep], ref.logits)
    records = inferer.last_records()
    assert records[2]["error"] == NO_MODALITY_ERROR and records[5]["error"] == NO_MODALITY_ERROR
    assert records[2]["prediction"] is None and records[2]["observed"] == [] and records[2]["quality"] is None
    assert all(records[i]["error"] is None for i in keep)
    assert inferer.last_result.present.shape == (8, 3)


def test_all_empty_batch(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch(B=3)
    inferer = DyMoInferer(calib)
    logits = inferer(x, net, present=torch.zeros_like(present))
    assert logits.shape == (3, C) and torch.isnan(logits).all()
    assert [r["error"] for r in inferer.last_records()] == [NO_MODALITY_ERROR] * 3


def test_on_empty_raise(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch(B=4)
    present[1] = False
    with pytest.raises(ValueError, match=r"\[1\]"):
        DyMoInferer(calib, on_empty="raise")(x, net, present=present)
    with pytest.raises(ValueError, match="on_empty"):
        DyMoInferer(calib, on_empty="ignore")


def test_present_defaults(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    inferer = DyMoInferer(calib)
    a = inferer({**x, "present": present}, net)
    b = inferer(x, net, present=present)
    assert torch.equal(a, b)
    full = inferer(x, net)  # no missingness information: all observed
    assert torch.equal(full, net(x, torch.ones_like(present))[0].detach())
    with pytest.raises(ValueError, match="present must be"):
        inferer(x, net, present=present[:, :2])
    assert torch.equal(inferer(x, net, present=present.long()), b)
    from monai.data import MetaTensor

    meta = inferer({n: MetaTensor(v) for n, v in x.items()}, net, present=MetaTensor(present))
    assert torch.equal(meta.as_subclass(torch.Tensor), b)
    assert type(inferer.last_result.present) is torch.Tensor


def test_network_checks(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    inferer = DyMoInferer(calib)
    with pytest.raises(ValueError, match="lacks \\['encode', 'fuse', 'modalities'\\]"):
        inferer(x, nn.Linear(2, 2), present=present)
    other = ToyNet(names=("ct", "clin", "pet"))
    with pytest.raises(ValueError, match="do not match"):
        inferer(x, other, present=present)
    with pytest.raises(ValueError, match="classes"):
        inferer(x, ToyNet(num_classes=4), present=present)
    with pytest.raises(ValueError, match="lack modalities"):
        inferer({k: v for k, v in x.items() if k != "pet"}, net, present=present)
    with pytest.raises(ValueError, match="modalities"):
        inferer(x, ToyNet(names=("a", "b")), present=present)
    # a DataParallel-style wrapper is unwrapped
    wrapper = nn.Module()
    wrapper.module = net
    assert torch.equal(inferer(x, wrapper, present=present), inferer(x, net, present=present))


def test_calibration_moved_once(net_and_calib):
    net, calib = net_and_calib
    inferer = DyMoInferer(calib)
    first = inferer.calibration_on(torch.device("cpu"))
    assert first is inferer.calibration_on("cpu") is calib


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_inferer_cuda(net_and_calib):
    net, calib = net_and_calib
    x, present = _batch()
    cpu = DyMoInferer(calib)(x, net, present=present)
    gnet = ToyNet().eval()
    gnet.load_state_dict(net.state_dict())
    gnet = gnet.cuda()
    inferer = DyMoInferer(calib)
    gpu = inferer({k: v.cuda() for k, v in x.items()}, gnet, present=present.cuda())
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    assert inferer.calibration_on("cuda").device.type == "cuda"


def test_with_dynamic_fusion_transformer():
    fusion = pytest.importorskip("monai_dymo.networks.fusion")
    torch.manual_seed(0)
    names = ("a", "b", "c")
    net = fusion.build_image_fusion(
        names, spatial_dims=2, num_classes=2, in_channels=1, dim=16, depth=1, num_heads=2, proj_dim=8,
        channels=(4, 8), strides=(2, 2), pool_size=2,
    ).eval()
    g = torch.Generator().manual_seed(0)
    train = [{**{n: torch.randn(8, 1, 16, 16, generator=g) for n in names}, "label": torch.arange(8) % 2}]
    calib = fit_calibration(net.encode, net.fuse, train, modalities=names, num_classes=2, progress=False)
    x = {n: torch.randn(6, 1, 16, 16, generator=g) for n in names}
    present = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    inferer = DyMoInferer(calib)
    logits = inferer(x, net, present=present)
    assert logits.shape == (6, 2) and torch.isnan(logits[5]).all() and torch.isfinite(logits[:5]).all()
    res = inferer.last_result
    with torch.no_grad():
        final = net({n: v[:5] for n, v in x.items()}, res.selected[:5])
    # logits are those of the final subset
    assert torch.allclose(logits[:5], final[0], atol=1e-4)
    assert torch.equal(res.selected[:5] & present[:5], present[:5])
    assert math.isfinite(inferer.last_records()[0]["log_ics"])


def test_inferer_classifies_each_observed_modality_alone(net_and_calib, tmp_path):
    """Records carry the class from each OBSERVED modality alone (None where missing); the report turns them into
    <m>_alone columns, a single_modality block in the JSON summary and an 'accuracy alone' column in the HTML."""
    from monai_dymo.handlers import SelectionReportWriter, read_report

    net, calib = net_and_calib
    x, present = _batch(B=12, seed=4)
    present[3] = False  # nothing observed: an error row, no alone predictions
    inferer = DyMoInferer(calib)
    logits = inferer(x, net, present=present)
    records = inferer.last_records(patient_ids=[f"p{i}" for i in range(12)])
    with torch.no_grad():
        tokens = net.encode(x)
    labels = torch.arange(12) % C
    for b, rec in enumerate(records):
        rec["label"] = int(labels[b])
        for i, m in enumerate(NAMES):
            if not present[b, i]:
                assert rec["alone"][m] is None
                continue
            alone = torch.zeros(1, len(NAMES), dtype=torch.bool)
            alone[0, i] = True
            expected = net.fuse({n: t[b : b + 1] for n, t in tokens.items()}, alone)[0].argmax(-1).item()
            assert rec["alone"][m] == expected
    # the prediction itself is untouched by the extra rows
    keep = present.any(1)
    with torch.no_grad():
        ref = select_modalities(net.fuse, net.encode({n: t[keep] for n, t in x.items()}), present[keep], calib)
    assert torch.equal(logits[keep], ref.logits)
    writer = SelectionReportWriter(str(tmp_path), modalities=NAMES, class_names=["a", "b", "c"])
    writer.write(records)
    summary = read_report(tmp_path / "dymo_report.json")["summary"]
    for i, m in enumerate(NAMES):
        seen = [b for b in range(12) if present[b, i]]
        right = sum(records[b]["alone"][m] == int(labels[b]) for b in seen)
        assert summary["single_modality"][m] == {"patients": len(seen), "accuracy": round(100 * right / len(seen), 2)}
    import csv

    rows = list(csv.DictReader(open(tmp_path / "dymo_report.csv")))
    assert rows[3]["ct_alone"] == "" and {r["pet_alone"] for r in rows} - {""} <= {"a", "b", "c"}
    html = (tmp_path / "dymo_report.html").read_text()
    assert "accuracy alone" in html and f"{summary['single_modality']['ct']['accuracy']:.1f}%" in html
    off = DyMoInferer(calib, single_modality=False)
    off(x, net, present=present)
    assert "alone" not in off.last_records()[0]
