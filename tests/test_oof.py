"""Out-of-fold predictions and outcomes: each fold's network on its held-out fold, every pooled patient exactly once
with its fold; the outcomes of every fold concatenated and certified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_dymo.oof import certify_out_of_fold, fold_calibrations, oof_outcomes, oof_predictions
from tests.test_ensemble import MODALITIES, _inputs, _member

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N, K = 24, 2


def _patients():
    """24 pooled patients, fold = patient index % 2, natural gaps, labels 0..2."""
    x = _inputs(N, seed=11)
    present = torch.ones(N, 3, dtype=torch.bool)
    present[1::4, 0] = False
    present[2::5, 2] = False
    labels = torch.arange(N) % 3
    folds = (torch.arange(N) // 3) % K  # stratified: every fold holds every class
    return x, present, labels, folds


def _loader(rows: torch.Tensor, batch: int = 5) -> list[dict]:
    x, present, labels, _ = _patients()
    out = []
    for s in range(0, len(rows), batch):
        r = rows[s : s + batch]
        out.append({**{m: x[m][r] for m in MODALITIES}, "present": present[r], "label": labels[r],
                    "patient_id": [f"p{int(i):02d}" for i in r], "index": r.clone()})
    return out


@pytest.fixture(scope="module")
def folds():
    _, _, _, fold = _patients()
    nets = [_member(10 + f) for f in range(K)]
    train = [_loader((fold != f).nonzero().squeeze(1)) for f in range(K)]
    held = [_loader((fold == f).nonzero().squeeze(1)) for f in range(K)]
    train_full = []  # the calibration needs every (subset, class): complete training patients
    for loader in train:
        train_full.append([{**b, "present": torch.ones_like(b["present"])} for b in loader])
    cals = fold_calibrations(nets, train_full, num_classes=3, progress=False)
    return nets, cals, held, fold


def test_oof_frame_has_every_pooled_patient_once_with_its_fold(folds, tmp_path):
    nets, cals, held, fold = folds
    path = tmp_path / "oof.csv"
    table = oof_predictions(nets, cals, held, path=path, progress=False)
    assert len(table) == N and table["index"].tolist() == list(range(N))
    assert table["patient_id"].is_unique and table["fold"].tolist() == fold.tolist()
    assert table["label"].tolist() == (torch.arange(N) % 3).tolist()
    for method in ("dymo", "observed_only", "all_recovered"):  # prediction and per-class probabilities
        assert table[f"pred_{method}"].between(0, 2).all()
        probs = table[[f"prob_{method}_{k}" for k in range(3)]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        assert (probs.argmax(1) == table[f"pred_{method}"].to_numpy()).all()
    assert path.is_file() and len(np.genfromtxt(path, delimiter=",", skip_header=1)) == N
    # fold f's rows are fold f's network's predictions
    from monai_dymo.evaluation import compare_on_natural_missingness

    alone = compare_on_natural_missingness(nets[1], cals[1], held[1], progress=False)
    rows = table[table["fold"] == 1].reset_index(drop=True)
    assert rows["pred_dymo"].tolist() == alone["pred_dymo"].tolist()


def test_a_patient_held_out_twice_is_refused(folds):
    nets, cals, held, _ = folds
    with pytest.raises(ValueError, match=r"held out by folds \[0, 1\]"):
        oof_predictions(nets, cals, [held[0], held[0]], progress=False)
    with pytest.raises(ValueError, match="one per fold"):
        oof_predictions(nets, cals[:1], held, progress=False)


def test_oof_outcomes_are_concatenated_and_certified(folds):
    nets, cals, held, fold = folds
    outcomes = oof_outcomes(nets, cals, held, progress=False)
    assert outcomes["label"].shape == (N,) and outcomes["prefix_prediction"].shape == (N, 4)
    expected_folds = np.concatenate([np.full(int((fold == f).sum()), f) for f in range(K)])
    assert np.array_equal(outcomes["fold"], expected_folds)
    cal = certify_out_of_fold(cals[0], outcomes, delta=0.1)
    cert = cal.certification
    assert cert["num_patients"] == N and cert["source"].startswith("out of fold: 2 folds")
    # the certified calibration drives the out-of-fold table's margin and refer flag
    table = oof_predictions(nets, cals, held, certification=cert, margin="certified", refer_alpha=0.2,
                            progress=False)
    assert (table["margin_source"] == "certified").all() and "refer" in table
