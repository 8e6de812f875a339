"""The presence mask carries its modality names; every consumer aligns it by name (never mixes up modalities)."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch, list_data_collate
from monai.utils import optional_import

from monai_dymo.calibration import fit_calibration
from monai_dymo.engines import DyMoEvaluator, PrepareDyMoBatch
from monai_dymo.engines.recovery_trainer import PrepareRecoveryBatch
from monai_dymo.inferers import DyMoInferer
from monai_dymo.presence import PRESENT_NAMES_META_KEY, align_present, present_modality_names
from monai_dymo.transforms import SimulateMissingModalitiesd
from tests.test_inferer import ToyNet

Events, _ = optional_import("ignite.engine", name="Events")

TRANSFORM_ORDER = ("demo", "t1", "flair")
NETWORK_ORDER = ("t1", "flair", "demo")


def _samples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "patient_id": f"p{i}",
                "label": i % 3,
                **{m: torch.randn(4, generator=g) for m in TRANSFORM_ORDER},
                "modality_reasons": dict.fromkeys(TRANSFORM_ORDER, "observed"),
            }
        )
    return out


def _drop_flair(modalities=TRANSFORM_ORDER):
    """A real transform writing the mask in ITS order ([demo, t1, flair]): FLAIR dropped for every patient."""
    return SimulateMissingModalitiesd(keys=["flair"], rate=1.0, keep_at_least_one=False, modalities=modalities)


def test_transform_mask_names_its_columns_and_survives_collation():
    d = _drop_flair()(_samples(1)[0])
    assert isinstance(d["present"], MetaTensor)
    assert d["present"].tolist() == [True, True, False]
    assert present_modality_names(d["present"]) == TRANSFORM_ORDER
    batch = list_data_collate([_drop_flair()(s) for s in _samples(3)])
    assert present_modality_names(batch["present"]) == TRANSFORM_ORDER
    assert present_modality_names(decollate_batch(batch)[1]["present"]) == TRANSFORM_ORDER


def test_align_present_reorders_by_name_and_refuses_other_modalities():
    mask = MetaTensor(torch.tensor([[True, True, False]]), meta={PRESENT_NAMES_META_KEY: ["demo,t1,flair"]})
    assert align_present(mask, NETWORK_ORDER, "me").tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match=r"me: .*\['demo', 't1', 'flair'\].*\['t1', 't2', 'demo'\]"):
        align_present(mask, ("t1", "t2", "demo"), "me")
    mixed = MetaTensor(torch.ones(2, 3, dtype=torch.bool), meta={PRESENT_NAMES_META_KEY: ["a,b,c", "c,b,a"]})
    with pytest.raises(ValueError, match="different modality orders"):
        align_present(mixed, ("a", "b", "c"), "me")
    plain = torch.tensor([[True, False, True]])  # no names: taken in the consumer's order
    assert torch.equal(align_present(plain, NETWORK_ORDER, "me"), plain)


@pytest.fixture
def net_and_calib():
    torch.manual_seed(0)
    net = ToyNet(names=NETWORK_ORDER).eval()
    g = torch.Generator().manual_seed(1)
    batches = [
        {**{n: torch.randn(12, 4, generator=g) for n in NETWORK_ORDER}, "label": torch.arange(12) % 3}
        for _ in range(2)
    ]
    calib = fit_calibration(net.encode, net.fuse, batches, modalities=NETWORK_ORDER, num_classes=3, progress=False)
    return net, calib


def test_issue_case_transforms_and_network_in_different_orders(net_and_calib):
    """Transforms mark [demo, t1, flair], the network works on [t1, flair, demo]; patients lack FLAIR."""
    net, calib = net_and_calib
    data = [_drop_flair()(s) for s in _samples(6)]
    loader = DataLoader(Dataset(data), batch_size=3, collate_fn=list_data_collate)
    evaluator = DyMoEvaluator(device="cpu", val_data_loader=loader, network=net, inferer=DyMoInferer(calib))
    records = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: records.extend(o["dymo_selection"] for o in e.state.output)
    )
    evaluator.run()
    assert len(records) == 6
    for rec in records:
        assert rec["observed"] == ["t1", "demo"], rec
        assert rec["recovered"] == ["flair"]
        assert rec["reasons"]["flair"].startswith("simulated missing")
        assert "flair" not in rec["selected"] or "flair" in [a["modality"] for a in rec["accepted"]]


def test_inferer_aligns_a_named_mask_given_in_the_inputs(net_and_calib):
    net, calib = net_and_calib
    batch = list_data_collate([_drop_flair()(s) for s in _samples(4)])
    inputs = {m: batch[m] for m in NETWORK_ORDER}
    inferer = DyMoInferer(calib)
    inferer({**inputs, "present": batch["present"]}, net)
    assert inferer.last_result.present.tolist() == [[True, False, True]] * 4
    other = MetaTensor(batch["present"].as_tensor(), meta={PRESENT_NAMES_META_KEY: ["demo,t1,t2"] * 4})
    with pytest.raises(ValueError, match=r"DyMoInferer: .*\['demo', 't1', 't2'\].*\['t1', 'flair', 'demo'\]"):
        inferer({**inputs, "present": other}, net)


def test_trainer_recovery_and_calibration_batches_are_aligned(net_and_calib):
    net, _ = net_and_calib
    batch = list_data_collate([_drop_flair()(s) for s in _samples(4)])
    _, _, _, kwargs = PrepareDyMoBatch(NETWORK_ORDER)(batch)
    assert kwargs["present"].tolist() == [[True, False, True]] * 4
    _, present = PrepareRecoveryBatch(NETWORK_ORDER)(batch)
    assert present.tolist() == [[True, False, True]] * 4
    # calibration: the named mask gives exactly the statistics of the same mask reordered by hand
    batch["label"] = torch.tensor([0, 1, 2, 0])
    named = fit_calibration(net.encode, net.fuse, [batch], modalities=NETWORK_ORDER, num_classes=3, progress=False,
                            min_samples=1)
    by_hand = dict(batch, present=torch.tensor([[True, False, True]] * 4))
    manual = fit_calibration(net.encode, net.fuse, [by_hand], modalities=NETWORK_ORDER, num_classes=3,
                             progress=False)
    assert torch.equal(named.fallback, manual.fallback)
    assert torch.allclose(named.prototypes.nan_to_num(), manual.prototypes.nan_to_num())


def test_evaluator_refuses_an_unnamed_mask_that_contradicts_the_reasons(net_and_calib):
    """A plain (unnamed) mask in the transforms' order would be read by position: the reasons expose it."""
    net, calib = net_and_calib
    data = []
    for s in _samples(3):
        d = _drop_flair()(s)
        d["present"] = d["present"].as_tensor()  # names stripped, e.g. by a user's own transform
        data.append(d)
    loader = DataLoader(Dataset(data), batch_size=3, collate_fn=list_data_collate)
    evaluator = DyMoEvaluator(device="cpu", val_data_loader=loader, network=net, inferer=DyMoInferer(calib))
    with pytest.raises(ValueError, match=r"patient 'p0', modality 'flair'.*disagree on the modality order"):
        evaluator.run()
