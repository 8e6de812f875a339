"""Class imbalance: class weights of the training loss and the balanced-accuracy checkpoint criterion."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from ignite.metrics import Recall
from sklearn.metrics import balanced_accuracy_score

from monai.data import DataLoader
from monai_dymo.engines import AllSubsetsEvaluator, BalancedAccuracy, SubsetAugmentedTrainer, build_checkpoint_metric
from monai_dymo.losses import SubsetAugmentedLoss, class_weights
from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer
from monai_dymo.subsets import all_subset_masks

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_balanced_class_weights_from_counts():
    w = class_weights([90, 10], "balanced")
    torch.testing.assert_close(w, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))
    assert float((torch.tensor([90.0, 10.0]) * w).sum()) == pytest.approx(100.0)  # average 1 over the patients
    torch.testing.assert_close(class_weights([5, 5, 5], "balanced"), torch.ones(3))
    assert class_weights([90, 10], "none") is None
    # a class without training patients has no row to weigh: 0, and the others are balanced among themselves
    torch.testing.assert_close(class_weights([30, 0, 10], "balanced"), torch.tensor([40 / 60, 0.0, 40 / 20]))
    with pytest.raises(ValueError, match="class_weighting must be one of balanced, none, got 'inverse'"):
        class_weights([90, 10], "inverse")
    with pytest.raises(ValueError, match="at least one patient"):
        class_weights([0, 0], "balanced")


def _batch_90_10(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    logits = torch.randn(100, 2, generator=g) + torch.tensor([1.5, 0.0])  # leaning to the common class
    z = F.normalize(torch.randn(100, 8, generator=g), dim=-1)
    groups = torch.arange(100) % 4
    return logits, z, y, groups


def test_weighted_loss_on_a_90_10_batch_is_the_class_balanced_loss():
    logits, z, y, _ = _batch_90_10()
    w = class_weights([90, 10])
    weighted, plain = SubsetAugmentedLoss(2, 8, class_weights=w), SubsetAugmentedLoss(2, 8)
    ce = F.cross_entropy(logits, y, reduction="none")
    # on a batch with the training split's proportions each class contributes half: the class-balanced loss
    expected = 0.5 * ce[y == 0].mean() + 0.5 * ce[y == 1].mean()
    torch.testing.assert_close(weighted(logits, z, y), expected)
    torch.testing.assert_close(plain(logits, z, y), ce.mean())
    assert float(weighted(logits, z, y)) > float(plain(logits, z, y))  # the rare class's larger error counts more
    torch.testing.assert_close(weighted.classifier_loss(logits, y), ce * w[y])  # per row (auxiliary loss too)
    # the prototype term is weighted the same way
    protos = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    for loss in (weighted, plain):
        loss.set_prototypes(protos)
        loss.set_active(True)
    proto_ce = F.cross_entropy(z @ protos.t() / 0.1, y, reduction="none")
    terms = weighted.compute(logits, z, y)
    torch.testing.assert_close(terms["prototype_loss"], (proto_ce * w[y]).mean())
    torch.testing.assert_close(plain.compute(logits, z, y)["prototype_loss"], proto_ce.mean())
    # equal weights change nothing; weights are checked; they are not saved with the prototypes
    ones = SubsetAugmentedLoss(2, 8, class_weights=[1.0, 1.0])
    torch.testing.assert_close(ones(logits, z, y), ce.mean())
    assert "class_weights" not in weighted.state_dict() and "prototypes" in weighted.state_dict()
    with pytest.raises(ValueError, match="class_weights must be 2 finite non-negative numbers"):
        SubsetAugmentedLoss(2, 8, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="class_weights must be 2"):
        SubsetAugmentedLoss(2, 8, class_weights=[-1.0, 1.0])


def _net(num_classes: int = 2) -> DynamicFusionTransformer:
    torch.manual_seed(0)
    encoders = {"a": ImageTokenEncoder(2, 1, 16, channels=(4,), strides=(2,), pool_size=2),
                "b": ClinicalTokenEncoder(3, [], 16)}
    return DynamicFusionTransformer(("a", "b"), encoders, num_classes=num_classes, dim=16, depth=1, num_heads=2,
                                    proj_dim=8)


def _samples(n: int = 20, rare_every: int = 10):
    g = torch.Generator().manual_seed(0)
    return [{"a": torch.randn(1, 8, 8, generator=g), "b": torch.randn(3, generator=g),
             "label": torch.tensor(int(i % rare_every == 0)), "present": torch.tensor([True, i % 3 != 0])}
            for i in range(n)]


def test_trainer_puts_the_class_weights_on_its_criterion_and_they_change_the_update():
    w = class_weights([18, 2])
    outputs = {}
    for name, weights in (("none", None), ("ones", torch.ones(2)), ("balanced", w)):
        net = _net()
        trainer = SubsetAugmentedTrainer("cpu", 1, DataLoader(_samples(), batch_size=20), net,
                                         torch.optim.SGD(net.parameters(), lr=0.1), num_subsets=2,
                                         unimodal_weight=1.0, class_weights=weights, progress=False)
        if weights is not None:
            torch.testing.assert_close(trainer.loss_function.class_weights, torch.as_tensor(weights))
        else:
            assert trainer.loss_function.class_weights is None
        trainer.run()
        outputs[name] = trainer.state.output
    for key in ("ce_loss", "unimodal_loss"):  # every subset and every modality alone
        torch.testing.assert_close(outputs["ones"][key], outputs["none"][key])
        assert not torch.allclose(outputs["balanced"][key], outputs["none"][key])
    net = _net()
    with pytest.raises(ValueError, match="give class_weights to the loss_function"):
        SubsetAugmentedTrainer("cpu", 1, [], net, torch.optim.SGD(net.parameters(), lr=0.1), num_subsets=2,
                               loss_function=SubsetAugmentedLoss(2, 8), class_weights=w, progress=False)


def test_balanced_accuracy_is_ignite_macro_recall_and_sklearn():
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 0, 1, 0, 1, 0, 2, 0])
    logits = F.one_hot(pred, 3).float() + 0.01 * torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    ours, recall = BalancedAccuracy(), Recall(average=True)
    for metric in (ours, recall):
        metric.update((logits[:6], y[:6]))  # two updates: pooled like the validation's batches
        metric.update((logits[6:], y[6:]))
    expected = balanced_accuracy_score(y.numpy(), pred.numpy())
    assert expected == pytest.approx((5 / 6 + 1 / 2 + 1 / 2) / 3)
    assert ours.compute() == pytest.approx(expected) and recall.compute() == pytest.approx(expected)
    # a class without any row: left out of the mean as sklearn does (ignite's macro recall counts it as 0)
    y2, pred2 = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 0, 2, 1, 0])
    ours.reset()
    ours.update((F.one_hot(pred2, 3).float(), y2))
    with warnings.catch_warnings():  # sklearn: "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(y2.numpy(), pred2.numpy())
    assert ours.compute() == pytest.approx(expected) == (2 / 3 + 1 / 2) / 2


def test_checkpoint_metric_by_name_pooled_over_every_subset():
    metrics = build_checkpoint_metric("balanced_accuracy")
    assert list(metrics) == ["val_balanced_accuracy"] and isinstance(metrics["val_balanced_accuracy"], BalancedAccuracy)
    assert list(build_checkpoint_metric("accuracy")) == ["val_accuracy"]
    with pytest.raises(ValueError, match="checkpoint_metric must be one of balanced_accuracy, accuracy, got 'auc'"):
        build_checkpoint_metric("auc")
    samples = _samples(12, rare_every=4)
    net = _net().eval()
    evaluator = AllSubsetsEvaluator("cpu", DataLoader(samples, batch_size=5), net, key_val_metric=metrics)
    evaluator.run()
    preds, labels = [], []
    with torch.no_grad():
        for s in samples:
            for subset in all_subset_masks(2):
                sub = subset & s["present"]
                if sub.any():
                    logits, _ = net({"a": s["a"][None], "b": s["b"][None]}, sub[None])
                    preds.append(int(logits.argmax(1)))
                    labels.append(int(s["label"]))
    assert evaluator.state.metrics["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
