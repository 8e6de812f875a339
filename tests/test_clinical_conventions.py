"""One clinical convention across layers: what ``ClinicalFieldsd`` writes (NaN = missing field, ``-1`` = category unseen
in training, cardinalities from ``ClinicalFieldStats.describe``) is what the clinical networks read."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from monai.data import CSVDataset, DataLoader
from monai_dymo.networks import ClinicalTokenEncoder
from monai_dymo.networks.recovery import IterativeImputerRecovery, MoPoERecovery
from monai_dymo.networks.recovery.base import UNKNOWN_CODE
from monai_dymo.transforms import UNKNOWN_CATEGORY, ClinicalFieldsd, ClinicalFieldStats, RandSimulateMissingModalitiesd

CSV_TEXT = """patient_id,age,sex,crp,grade
a,54,M,3.2,2
b,61,F,12.0,3
c,70,F,0.8,2
d,47,M,5.5,4
e,,F,-999,3
f,58,X,2.0,
g,66,,7.1,9
h,52,X,-999,3
"""
TRAIN = ["a", "b", "c", "d", "e"]
GROUPS = {"demographics": ["age", "sex"], "labs": ["crp", "grade"]}


@pytest.fixture()
def encoded(tmp_path):
    csv = tmp_path / "clinical.csv"
    csv.write_text(CSV_TEXT)
    df = pd.read_csv(io.StringIO(CSV_TEXT))
    stats = ClinicalFieldStats.fit(
        df[df.patient_id.isin(TRAIN)], continuous=["age", "crp"], categorical=["sex", "grade"], sentinels=[-999]
    )
    ds = CSVDataset(src=str(csv), transform=ClinicalFieldsd(GROUPS, stats))
    batch = next(iter(DataLoader(ds, batch_size=len(df), shuffle=False)))
    return stats, batch


def _row(batch, pid):
    return batch["patient_id"].index(pid)


def test_unknown_code_is_shared():
    assert UNKNOWN_CATEGORY == UNKNOWN_CODE == -1


def test_token_encoder_reads_transform_output(encoded):
    stats, batch = encoded
    torch.manual_seed(0)
    for group, fields in GROUPS.items():
        layout = stats.describe(fields)
        enc = ClinicalTokenEncoder(layout["num_continuous"], list(layout["categorical"].values()), dim=8).eval()
        x, mask = batch[group], batch["field_mask"][group]
        tokens = enc(x)
        assert tokens.shape == (x.shape[0], len(fields), 8) and bool(tokens.isfinite().all())
        # NaN already marks the missing fields: the field mask adds nothing
        torch.testing.assert_close(enc(x, mask), tokens)
    d = batch["demographics"]
    e, f, g, a, b = (_row(batch, p) for p in "efgab")
    enc = ClinicalTokenEncoder(1, [stats.num_categories("sex")], dim=8).eval()
    tok = enc(d)
    assert torch.isnan(d[e, 0]) and d[f, 1] == UNKNOWN_CATEGORY and torch.isnan(d[g, 1])
    # sex: unseen "X" (patient f) gets the unknown row, blank (patient g) the missing row, F and M their own rows
    sex = {p: tok[_row(batch, p), 1] for p in "abfg"}
    assert not torch.allclose(sex["f"], sex["g"])
    assert not torch.allclose(sex["f"], sex["a"]) and not torch.allclose(sex["f"], sex["b"])
    assert not torch.allclose(sex["a"], sex["b"])


def test_recovery_networks_read_transform_output(encoded):
    stats, batch = encoded
    present = batch["present"].bool()
    specs = {
        "demographics": {"shape": [2], "categorical": {1: stats.num_categories("sex")}},
        "labs": {"shape": [2], "categorical": {1: stats.num_categories("grade")}},
    }
    torch.manual_seed(0)
    net = MoPoERecovery(list(GROUPS), specs, latent_dim=4).eval()
    inputs = {g: batch[g] for g in GROUPS}
    hidden = present.clone()
    hidden[:3, 1] = False  # labs of the first three patients to be recovered from their demographics
    out = net(inputs, hidden)
    assert bool(out["labs"][:3].isfinite().all())
    torch.testing.assert_close(out["demographics"], inputs["demographics"], equal_nan=True)  # observed: as they came
    # an unseen category (-1) is no information, exactly like a missing field
    d = inputs["demographics"]
    as_nan = d.clone()
    as_nan[as_nan[:, 1] == UNKNOWN_CODE, 1] = float("nan")
    assert bool((d[:, 1] == UNKNOWN_CODE).any())
    recon = net.decode("demographics", torch.zeros(d.shape[0], 4))
    nll = net.negative_log_likelihood
    torch.testing.assert_close(nll("demographics", recon, d), nll("demographics", recon, as_nan))
    with_nan = {**inputs, "demographics": as_nan}
    torch.testing.assert_close(net.encode_natural(inputs, present), net.encode_natural(with_nan, present))

    imputer = IterativeImputerRecovery(
        {"demographics": 2, "labs": 2},
        categorical={"demographics": {1: stats.num_categories("sex")}, "labs": {1: stats.num_categories("grade")}},
        fill_observed_fields=True,
    )
    imputer.fit(inputs, present)
    filled, filled_nan = imputer(inputs, present), imputer(with_nan, present)
    unknown = d[:, 1] == UNKNOWN_CODE
    assert bool((filled["demographics"][unknown, 1] == UNKNOWN_CODE).all())  # the observed code is kept as it came
    torch.testing.assert_close(filled["labs"], filled_nan["labs"])  # and imputes the rest as a missing field would
    torch.testing.assert_close(filled["demographics"][:, 0], filled_nan["demographics"][:, 0])

def test_simulated_missing_clinical_group_is_nan(encoded):
    _, batch = encoded
    row = {
        "patient_id": "a",
        "demographics": batch["demographics"][0].clone(),
        "labs": batch["labs"][0].clone(),
        "field_mask": {g: batch["field_mask"][g][0].clone() for g in GROUPS},
        "modality_reasons": {g: "observed" for g in GROUPS},
    }
    out = RandSimulateMissingModalitiesd(list(GROUPS), rate=1.0)(row)
    dropped = [g for g, p in zip(GROUPS, out["present"].tolist()) if not p]
    assert len(dropped) == 1  # at least one modality is kept
    assert bool(torch.isnan(out[dropped[0]]).all()) and not out["field_mask"][dropped[0]].any()
