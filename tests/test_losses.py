"""Prototype loss, subset-averaged training loss and the prototype accumulator (method section 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_dymo.losses import PrototypeAccumulator, PrototypeLoss, SubsetAugmentedLoss, prototype_logits


def _data(n: int = 10, c: int = 3, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    protos = torch.randn(c, d, generator=g)
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return z, protos, logits, y


def _manual_proto_ce(z, protos, y, tau):
    # explicit softmax and negative log-likelihood, row by row
    out = []
    for i in range(z.shape[0]):
        scores = [float(z[i] @ protos[c]) / tau for c in range(protos.shape[0])]
        m = max(scores)
        log_norm = m + math.log(sum(math.exp(s - m) for s in scores))
        out.append(log_norm - scores[int(y[i])])
    return torch.tensor(out)


def test_prototype_loss_matches_manual():
    z, protos, _, y = _data()
    expected = _manual_proto_ce(z, protos, y, 0.1)
    torch.testing.assert_close(PrototypeLoss(0.1)(z, y, protos), expected.mean())
    torch.testing.assert_close(PrototypeLoss(0.1, reduction="none")(z, y, protos), expected)
    torch.testing.assert_close(
        PrototypeLoss(0.5, reduction="sum")(z, y, protos), _manual_proto_ce(z, protos, y, 0.5).sum()
    )
    torch.testing.assert_close(prototype_logits(z, protos, 0.1), z @ protos.t() * 10.0)
    # [N, 1] labels are accepted
    torch.testing.assert_close(PrototypeLoss(0.1)(z, y[:, None], protos), expected.mean())


def test_prototype_loss_errors():
    z, protos, _, y = _data()
    with pytest.raises(ValueError, match="same D"):
        PrototypeLoss()(z, y, protos[:, :3])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        PrototypeLoss()(z, torch.full_like(y, 3), protos)
    with pytest.raises(ValueError, match=r"shape \[10\]"):
        PrototypeLoss()(z, y[:5], protos)
    with pytest.raises(ValueError, match="temperature"):
        PrototypeLoss(0.0)


def test_subset_augmented_loss_group_averaging():
    z, protos, logits, y = _data(n=9)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])  # unequal group sizes: per-group mean, then mean over groups
    loss = SubsetAugmentedLoss(3, 4, prototype_weight=0.7, temperature=0.1)
    ce_rows = torch.tensor([-float(torch.log_softmax(logits[i], 0)[y[i]]) for i in range(9)])
    pr_rows = _manual_proto_ce(z, protos, y, 0.1)
    ce = torch.stack([ce_rows[groups == k].mean() for k in range(3)]).mean()
    pr = torch.stack([pr_rows[groups == k].mean() for k in range(3)]).mean()

    # inactive: cross-entropy only
    terms = loss.compute(logits, z, y, groups)
    torch.testing.assert_close(terms["ce_loss"], ce)
    torch.testing.assert_close(terms["loss"], ce)
    assert float(terms["prototype_loss"]) == 0.0
    assert not loss.active

    loss.set_prototypes(protos)
    loss.set_active(True)
    terms = loss.compute(logits, z, y, groups)
    torch.testing.assert_close(terms["prototype_loss"], pr)
    torch.testing.assert_close(terms["loss"], ce + 0.7 * pr)
    torch.testing.assert_close(loss(logits, z, y, groups), ce + 0.7 * pr)
    # no groups: plain means; skipped subset indices (empty groups) are ignored
    torch.testing.assert_close(loss.compute(logits, z, y)["ce_loss"], ce_rows.mean())
    torch.testing.assert_close(loss.compute(logits, z, y, groups * 2)["ce_loss"], ce)


def test_subset_augmented_loss_label_smoothing():
    """label_smoothing eps: each row's classifier term is (1 - eps) * CE(y) + eps * mean over classes of CE(c); the
    prototype term is not smoothed."""
    z, protos, logits, y = _data(n=9)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    plain = SubsetAugmentedLoss(3, 4, prototype_weight=0.5)
    smooth = SubsetAugmentedLoss(3, 4, prototype_weight=0.5, label_smoothing=0.2)
    logp = torch.log_softmax(logits, 1)
    rows = torch.stack([-(0.8 * logp[i, y[i]] + 0.2 * logp[i].mean()) for i in range(9)])
    expected = torch.stack([rows[groups == k].mean() for k in range(3)]).mean()
    for loss in (plain, smooth):
        loss.set_prototypes(protos)
        loss.set_active(True)
    terms, reference = smooth.compute(logits, z, y, groups), plain.compute(logits, z, y, groups)
    torch.testing.assert_close(terms["ce_loss"], expected)
    assert float(terms["ce_loss"]) != pytest.approx(float(reference["ce_loss"]))
    torch.testing.assert_close(terms["prototype_loss"], reference["prototype_loss"])
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\), got 1.0"):
        SubsetAugmentedLoss(3, 4, label_smoothing=1.0)


def test_subset_augmented_loss_state_and_errors():
    loss = SubsetAugmentedLoss(3, 4)
    assert set(loss.state_dict()) == {"prototypes", "prototype_active"}
    with pytest.raises(ValueError, match=r"prototypes must have shape \(3, 4\)"):
        loss.set_prototypes(torch.zeros(2, 4))
    z, _, logits, y = _data()
    with pytest.raises(ValueError, match=r"logits must have shape \[N, 3\]"):
        loss.compute(logits[:, :2], z, y)
    with pytest.raises(ValueError, match=r"z must have shape"):
        loss.compute(logits, z[:, :2], y)
    with pytest.raises(ValueError, match="integer class indices"):
        loss.compute(logits, z, y.float() + 0.5)


def test_prototype_accumulator_means():
    z, _, _, y = _data(n=30, c=3, d=4, seed=2)
    acc = PrototypeAccumulator(3, 4)
    acc.update(z[:12], y[:12])
    acc.update(z[12:], y[12:])
    expected = torch.stack([z[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(acc.compute(), expected)
    assert acc.counts.tolist() == [int((y == c).sum()) for c in range(3)]

    state = acc.state_dict()
    other = PrototypeAccumulator(3, 4)
    other.load_state_dict(state)
    torch.testing.assert_close(other.compute(), expected)
    acc.reset()
    assert int(acc.counts.sum()) == 0


def test_prototype_accumulator_unseen_classes():
    acc = PrototypeAccumulator(3, 2)
    acc.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 2]))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        acc.compute()
    previous = torch.full((3, 2), 9.0)
    out = acc.compute(previous=previous)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [9.0, 9.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="labels must be in"):
        acc.update(torch.zeros(1, 2), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"z must have shape \[N, 2\]"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]))


# ------------------------------------------------------------------------------------------ Euclidean variant
def _manual_sq_dist_ce(z, protos, y, tau):
    out = []
    for i in range(z.shape[0]):
        scores = [-float(((z[i] - protos[c]) ** 2).sum()) / tau for c in range(protos.shape[0])]
        m = max(scores)
        log_norm = m + math.log(sum(math.exp(s - m) for s in scores))
        out.append(log_norm - scores[int(y[i])])
    return torch.tensor(out)


def test_euclidean_prototype_loss_uses_squared_distances():
    z, protos, _, y = _data(seed=5)
    z = 1.7 * z + 0.3  # not normalised, as in the Euclidean variant
    expected = _manual_sq_dist_ce(z, protos, y, 0.1)
    torch.testing.assert_close(PrototypeLoss(0.1, metric="euclidean")(z, y, protos), expected.mean())
    torch.testing.assert_close(
        prototype_logits(z, protos, 0.1, "euclidean"),
        -torch.cdist(z, protos) ** 2 / 0.1,
    )
    # not the dot-product loss, and not the plain (unsquared) distance
    assert not torch.allclose(PrototypeLoss(0.1)(z, y, protos), expected.mean())
    plain = F.cross_entropy(-torch.cdist(z, protos) / 0.1, y)
    assert not torch.allclose(plain, expected.mean())
    with pytest.raises(ValueError, match="metric"):
        PrototypeLoss(0.1, metric="manhattan")


def test_subset_augmented_loss_euclidean_prototype_term():
    z, protos, logits, y = _data(seed=6)
    z = 2.0 * z
    loss = SubsetAugmentedLoss(3, 4, metric="euclidean")
    assert loss.metric == "euclidean" and SubsetAugmentedLoss(3, 4).metric == "cosine"
    loss.set_prototypes(protos)
    loss.set_active(True)
    terms = loss.compute(logits, z, y)
    torch.testing.assert_close(terms["prototype_loss"], _manual_sq_dist_ce(z, protos, y, 0.1).mean())
    torch.testing.assert_close(terms["loss"], F.cross_entropy(logits, y) + terms["prototype_loss"])
