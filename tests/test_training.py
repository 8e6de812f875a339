"""Subset-augmented training through MONAI engines, prototype refresh and checkpointing (method section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy

from monai.data import DataLoader
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    StatsHandler,
    ValidationHandler,
    from_engine,
)
from monai_dymo.engines.trainer import (
    AllSubsetsEvaluator,
    PrepareDyMoBatch,
    SubsetAugmentedTrainer,
    subset_augmented_forward,
)
from monai_dymo.handlers.prototypes import PrototypeRefreshHandler
from monai_dymo.losses import PrototypeAccumulator, SubsetAugmentedLoss
from monai_dymo.networks.encoders import ClinicalTokenEncoder, ImageTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer
from monai_dymo.subsets import all_subset_masks

MODALITIES = ("a", "b", "c")


# tiny tensors: a single thread is faster and immune to other processes competing for the cores
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _net(seed: int = 0, metric: str = "cosine", logit_fusion: str = "transformer") -> DynamicFusionTransformer:
    torch.manual_seed(seed)
    encoders = {
        "a": ImageTokenEncoder(2, 1, 32, channels=(8,), strides=(2,), pool_size=2),
        "b": ClinicalTokenEncoder(3, [3], 32),
        "c": ImageTokenEncoder(2, 1, 32, channels=(8,), strides=(2,), pool_size=2),
    }
    return DynamicFusionTransformer(
        MODALITIES, encoders, num_classes=3, dim=32, depth=1, num_heads=2, proj_dim=16, metric=metric,
        logit_fusion=logit_fusion,
    )


def _toy(n: int, seed: int, missing_c: bool = False):
    """3 classes; every modality alone carries the label (image stripes, clinical one-hot + a noisy category)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    a = torch.randn(n, 1, 8, 8, generator=g)
    c = torch.randn(n, 1, 8, 8, generator=g)
    for i in range(n):
        k = int(y[i])
        a[i, 0, :, 2 * k : 2 * k + 2] += 2.0
        c[i, 0, 2 * k : 2 * k + 2, :] += 2.0
    b = torch.randn(n, 4, generator=g)
    b[:, :3] += 2.0 * F.one_hot(y, 3)
    b[:, 3] = torch.where(torch.rand(n, generator=g) < 0.8, y, torch.randint(0, 3, (n,), generator=g)).float()
    present = torch.ones(n, 3, dtype=torch.bool)
    if missing_c:
        present[::2, 2] = False
        c[::2] = 0.0
    samples = [{"a": a[i], "b": b[i], "c": c[i], "label": y[i], "present": present[i]} for i in range(n)]
    return samples, {"a": a, "b": b, "c": c}, y, present


def _manual_loss(net, loss_fn, inputs, y, subsets, present=None):
    """Reference: re-encode and run the network once per subset, skip rows whose restricted subset is empty."""
    per_subset = []
    for s in subsets:
        rows = torch.arange(y.shape[0])
        sub = s.expand(y.shape[0], -1)
        if present is not None:
            sub = sub & present
            rows = sub.any(1).nonzero().flatten()
            if rows.numel() == 0:
                continue
        logits, z = net({k: v[rows] for k, v in inputs.items()}, sub[rows])
        loss = F.cross_entropy(logits, y[rows])
        if loss_fn.active:
            loss = loss + loss_fn.prototype_weight * F.cross_entropy(z @ loss_fn.prototypes.t() / 0.1, y[rows])
        per_subset.append(loss)
    return torch.stack(per_subset).mean()


@pytest.mark.parametrize("with_present", [False, True])
def test_encode_once_equals_reencoding(with_present):
    _, inputs, y, present = _toy(12, seed=0, missing_c=with_present)
    subsets = torch.tensor([[True, False, False], [False, False, True], [True, True, True]])
    if with_present:
        present[3] = torch.tensor([False, True, False])  # only 'b': skipped for subsets 0 and 1
    loss_fn = SubsetAugmentedLoss(3, 16)
    loss_fn.set_prototypes(F.normalize(torch.randn(3, 16), dim=-1))
    loss_fn.set_active(True)

    # without `present`, batch norm in training mode (the same batch statistics for every subset); with it, eval mode,
    # since the reference re-encodes only the kept rows (different batch statistics)
    net = _net().train(not with_present)
    out = subset_augmented_forward(net, inputs, subsets, present if with_present else None)
    # rows are subset-major, restricted to present modalities, empty ones skipped
    expected = subsets[:, None, :] & (present if with_present else torch.ones_like(present))[None]
    keep = expected.reshape(-1, 3).any(1)
    assert out["rows"].tolist() == (torch.arange(36)[keep] % 12).tolist()
    assert out["groups"].tolist() == (torch.arange(36)[keep] // 12).tolist()
    torch.testing.assert_close(out["subset"], expected.reshape(-1, 3)[keep])
    if with_present:
        assert 12 + 3 not in torch.arange(36)[keep].tolist() and 3 not in torch.arange(36)[keep].tolist()
    loss = loss_fn(out["logits"], out["z"], y[out["rows"]], out["groups"])
    grads = torch.autograd.grad(loss, list(net.parameters()))

    net_ref = _net().train(not with_present)
    ref = _manual_loss(net_ref, loss_fn, inputs, y, subsets, present if with_present else None)
    grads_ref = torch.autograd.grad(ref, list(net_ref.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, torch.zeros_like(g) if gr is None else gr, atol=2e-5, rtol=1e-4)


class _Recorder:
    """Records per-iteration loss terms, and what the accumulator holds just before the prototype refresh."""

    def __init__(self) -> None:
        self.iterations: list[tuple[int, float, float]] = []
        self.epoch_means: dict[int, torch.Tensor] = {}
        self.epoch_counts: dict[int, int] = {}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch)

    def iteration(self, engine) -> None:
        out = engine.state.output
        self.iterations.append((engine.state.epoch, float(out["ce_loss"]), float(out["prototype_loss"])))

    def epoch(self, engine) -> None:
        acc = engine.prototype_accumulator
        self.epoch_counts[engine.state.epoch] = int(acc.counts.sum())
        self.epoch_means[engine.state.epoch] = acc.compute(previous=engine.loss_function.prototypes.clone())


def test_trainer_learns_toy_task_and_checkpoints_prototypes(tmp_path: Path):
    train, _, _, _ = _toy(240, seed=1)
    _, x_test, y_test, _ = _toy(150, seed=2)
    net = _net()
    loader = DataLoader(train, batch_size=30, shuffle=True, generator=torch.Generator().manual_seed(0))
    recorder = _Recorder()
    refresh = PrototypeRefreshHandler(warmup_epochs=3)
    saver = CheckpointSaver(
        str(tmp_path), {"network": net, "prototypes": refresh}, save_final=True, final_filename="final.pt"
    )
    max_epochs = 12
    trainer = SubsetAugmentedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 3e-3),
        num_subsets=3,
        seed=0,
        key_train_metric={"train_acc": Accuracy(output_transform=from_engine(["pred", "label"]))},
        train_handlers=[
            recorder,
            refresh,
            StatsHandler(output_transform=from_engine(["loss"]), iteration_log=False),
            saver,
        ],
    )
    assert trainer.loss_function.prototypes.abs().sum() == 0 and not trainer.loss_function.active
    trainer.run()

    # every (subset, sample) row was accumulated, all sampled subsets pooled
    assert recorder.epoch_counts == {e: 3 * 240 for e in range(1, max_epochs + 1)}
    # prototype term: off during the warm-up epochs, on afterwards
    assert all(p == 0.0 for e, _, p in recorder.iterations if e <= 3)
    assert all(p > 0.0 for e, _, p in recorder.iterations if e > 3)
    loss_fn = trainer.loss_function
    assert loss_fn.active
    torch.testing.assert_close(loss_fn.prototypes, recorder.epoch_means[max_epochs])
    assert not torch.allclose(recorder.epoch_means[max_epochs - 1], recorder.epoch_means[max_epochs])
    assert trainer.state.metrics["train_acc"] > 0.8

    # held-out accuracy on every one of the 7 subsets, well above chance (1/3)
    net.eval()
    with torch.no_grad():
        tokens = net.encode(x_test)
        for subset in all_subset_masks(3):
            logits, _ = net.fuse(tokens, subset.expand(150, -1))
            acc = float((logits.argmax(1) == y_test).float().mean())
            assert acc > 0.75, f"subset {subset.tolist()}: accuracy {acc:.3f}"

    # checkpoint round trip into fresh objects (as when resuming)
    ckpt = tmp_path / "final.pt"
    assert ckpt.exists()
    new_loss = SubsetAugmentedLoss(3, 16)
    new_refresh = PrototypeRefreshHandler(3, loss_function=new_loss, accumulator=PrototypeAccumulator(3, 16))
    CheckpointLoader(str(ckpt), {"prototypes": new_refresh, "network": _net(seed=5)})(Engine(lambda e, b: None))
    torch.testing.assert_close(new_loss.prototypes, loss_fn.prototypes)
    assert new_loss.active
    state = torch.load(ckpt, weights_only=False)
    torch.testing.assert_close(state["prototypes"]["prototypes"], loss_fn.prototypes)
    # the loss module itself is checkpointable too (its buffers)
    other = SubsetAugmentedLoss(3, 16)
    other.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(other.prototypes, loss_fn.prototypes)
    assert other.active


def _one_epoch_subsets(seed: int, samples, **kwargs) -> tuple[list[torch.Tensor], list]:
    net = _net()
    loader = DataLoader(samples, batch_size=8, shuffle=False)
    trainer = SubsetAugmentedTrainer(
        "cpu", 1, loader, net, torch.optim.SGD(net.parameters(), 0.01), num_subsets=4, seed=seed, **kwargs
    )
    seen: list[torch.Tensor] = []
    outputs: list = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["subsets"].clone()))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: outputs.append((e.state.batch["present"], e.state.output["rows"], e.state.output["groups"])),
    )
    trainer.run()
    return seen, outputs


def test_trainer_seeded_subsets_and_present_mask():
    samples, _, _, _ = _toy(24, seed=3, missing_c=True)
    a, outputs = _one_epoch_subsets(7, samples)
    b, _ = _one_epoch_subsets(7, samples)
    c, _ = _one_epoch_subsets(8, samples)
    assert len(a) == 3 and all(s.shape == (4, 3) and s.any(1).all() for s in a)
    assert all(len({tuple(r.tolist()) for r in s}) == 4 for s in a)  # distinct subsets
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # rows are exactly the (subset, sample) pairs whose subset meets the sample's present modalities
    for subsets, (present, rows, groups) in zip(a, outputs):
        inter = (subsets[:, None, :] & present[None]).any(-1)  # [K, B]
        assert sorted(zip(groups.tolist(), rows.tolist())) == sorted(map(tuple, inter.nonzero().tolist()))
    # without the present key every pair is used
    _, outputs_all = _one_epoch_subsets(7, samples, present_key=None)
    assert all(rows.numel() == 4 * 8 for _, rows, _ in outputs_all)


def test_trainer_validation():
    samples, _, _, _ = _toy(8, seed=4)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), 0.1)
    loader = DataLoader(samples, batch_size=4)
    with pytest.raises(ValueError, match=r"num_subsets must be in \[1, 7\]"):
        SubsetAugmentedTrainer("cpu", 1, loader, net, opt, num_subsets=8)
    with pytest.raises(ValueError, match="proj_dim"):
        SubsetAugmentedTrainer("cpu", 1, loader, net, opt, loss_function=SubsetAugmentedLoss(3, 8))
    with pytest.raises(ValueError, match=r"batch lacks key\(s\) \['c'\]"):
        PrepareDyMoBatch(MODALITIES)({k: v for k, v in samples[0].items() if k != "c"})


def test_trainer_progress_bar_shows_the_loss(capsys):
    samples, _, _, _ = _toy(16, seed=3)
    net = _net()
    loader = DataLoader(samples, batch_size=8, shuffle=False)
    opt = torch.optim.SGD(net.parameters(), 0.01)
    trainer = SubsetAugmentedTrainer("cpu", 1, loader, net, opt, num_subsets=2, progress=True)
    trainer.run()
    err = capsys.readouterr().err
    assert "DyMo fusion training" in err and "loss=" in err and "[1/2]" in err  # iteration 1 of 2
    assert SubsetAugmentedTrainer("cpu", 1, loader, net, opt, num_subsets=2).progress_bar is None  # not a terminal


def _pooled_accuracy(net, x, y, present=None) -> float:
    """Accuracy over every (non-empty subset, sample) row, subsets restricted to the present modalities."""
    net.eval()
    right = total = 0
    with torch.no_grad():
        for subset in all_subset_masks(3):
            sub = subset.expand(y.shape[0], -1) & (present if present is not None else True)
            rows = sub.any(1).nonzero().flatten()
            logits, _ = net({k: v[rows] for k, v in x.items()}, sub[rows])
            right += int((logits.argmax(1) == y[rows]).sum())
            total += rows.numel()
    return right / total


@pytest.mark.parametrize("missing_c", [False, True])
def test_all_subsets_evaluator_pools_accuracy_over_subsets(missing_c):
    samples, x, y, present = _toy(20, seed=5, missing_c=missing_c)
    net = _net(seed=3)
    evaluator = AllSubsetsEvaluator(
        "cpu",
        DataLoader(samples, batch_size=6),
        net,
        key_val_metric={"val_accuracy": Accuracy(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    expected = _pooled_accuracy(net, x, y, present if missing_c else None)
    assert evaluator.state.metrics["val_accuracy"] == pytest.approx(expected)
    # the last batch (samples 18, 19): 7 subsets each, less subset {c} for sample 18 when it lacks c
    assert evaluator.state.output["pred"].shape == (14 - int(missing_c), 3)
    assert evaluator.state.output["label"].shape == (14 - int(missing_c),)


@pytest.mark.parametrize("scores", ["transformer", "decision"])
def test_all_subsets_evaluator_scores_the_transformer_or_the_decision(scores):
    """With logit_fusion "product", scores "decision" pools the product of experts (the network's decision, as
    ``net(x, subset)`` gives it) and "transformer" the transformer's own logits (as with logit_fusion "transformer")."""
    samples, x, y, present = _toy(20, seed=5, missing_c=True)
    product = _net(seed=3, logit_fusion="product")
    for p in product.parameters():  # away from the zero initialisation, so that the two logits differ
        p.data.add_(0.2 * torch.randn_like(p))
    plain = _net(seed=3)
    plain.load_state_dict(product.state_dict())
    evaluator = AllSubsetsEvaluator(
        "cpu",
        DataLoader(samples, batch_size=20),
        product,
        key_val_metric={"val_accuracy": Accuracy(output_transform=from_engine(["pred", "label"]))},
        scores=scores,
    )
    evaluator.run()
    reference = product if scores == "decision" else plain
    assert evaluator.state.metrics["val_accuracy"] == pytest.approx(_pooled_accuracy(reference, x, y, present))
    with torch.no_grad():
        plain.eval()
        out = plain(x, subsets=all_subset_masks(3), present=present)
        product.eval()
        rows = {"transformer": out["logits"],
                "decision": product.fuse(product.encode(x), out["subset"], index=out["rows"])[0]}
    torch.testing.assert_close(evaluator.state.output["pred"], rows[scores], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rows["decision"].softmax(-1), rows["transformer"].softmax(-1), atol=1e-3)
    with pytest.raises(ValueError, match="scores must be 'transformer' or 'decision', got 'product'"):
        AllSubsetsEvaluator("cpu", DataLoader(samples), product, scores="product")


def test_best_validation_checkpoint_and_early_stopping(tmp_path: Path):
    train, _, _, _ = _toy(60, seed=6)
    val, x_val, y_val, _ = _toy(30, seed=7)
    net = _net(seed=1)
    evaluator = AllSubsetsEvaluator(
        "cpu",
        DataLoader(val, batch_size=15),
        net,
        key_val_metric={"val_accuracy": Accuracy(output_transform=from_engine(["pred", "label"]))},
    )
    scores: list[float] = []
    states: list[dict] = []

    def record(engine):
        scores.append(engine.state.metrics["val_accuracy"])
        states.append({k: v.clone() for k, v in net.state_dict().items()})

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, record)
    CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="best.pt").attach(
        evaluator
    )
    stopper = EarlyStopHandler(patience=2, score_function=lambda e: e.state.metrics["val_accuracy"], epoch_level=True)
    stopper.attach(evaluator)
    # a learning rate so large that validation accuracy soon stops improving
    trainer = SubsetAugmentedTrainer(
        "cpu", 12, DataLoader(train, batch_size=20), net, torch.optim.SGD(net.parameters(), 5.0),
        num_subsets=3, train_handlers=[ValidationHandler(interval=1, validator=evaluator, epoch_level=True)],
    )
    stopper.set_trainer(trainer)
    trainer.run()
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first epoch reaching the best score
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    for k, v in states[best].items():
        torch.testing.assert_close(saved[k], v)
    if trainer.state.epoch < 12:  # stopped early: no improvement in the last `patience` validations
        assert len(scores) - 1 - best >= 2


def test_trainer_loss_follows_the_network_metric():
    samples, _, _, _ = _toy(8, seed=4)
    loader = DataLoader(samples, batch_size=4)
    net = _net(metric="euclidean")
    trainer = SubsetAugmentedTrainer("cpu", 1, loader, net, torch.optim.SGD(net.parameters(), 0.01))
    assert trainer.loss_function.metric == "euclidean"
    with pytest.raises(ValueError, match="metric"):
        SubsetAugmentedTrainer(
            "cpu", 1, loader, net, torch.optim.SGD(net.parameters(), 0.01), loss_function=SubsetAugmentedLoss(3, 16)
        )


def test_unimodal_loss_adds_every_observed_modality_alone():
    """unimodal_weight > 0: the singleton subsets ride along, their cross-entropy (mean within each modality, then
    over modalities) is added, and every encoder gets a gradient even when no sampled subset holds its modality."""
    samples, inputs, y, present = _toy(8, seed=3, missing_c=True)
    seen: dict[str, torch.Tensor] = {}

    def run(weight: float, smoothing: float = 0.0) -> SubsetAugmentedTrainer:
        net = _net(seed=1)
        trainer = SubsetAugmentedTrainer(
            device="cpu", max_epochs=1, train_data_loader=DataLoader(samples, batch_size=8), network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.0), num_subsets=1, seed=5, prototype_warmup_epochs=None,
            unimodal_weight=weight, label_smoothing=smoothing,
        )

        @trainer.on(Events.ITERATION_COMPLETED)
        def _grads(engine):
            seen.update({n: p.grad.abs().sum() for n, p in net.named_parameters() if p.grad is not None})

        trainer.run()
        return trainer

    off = run(0.0)
    assert float(off.state.output["unimodal_loss"]) == 0.0
    on = run(2.0)
    out = on.state.output
    net = _net(seed=1).train()  # as in the trainer: the whole batch encoded once, batch-norm batch statistics
    with torch.no_grad():
        tokens = net.encode(inputs)
    expected = []
    for i in range(3):  # modality i alone, on the patients who have it
        rows = present[:, i].nonzero().flatten()
        alone = torch.zeros(len(rows), 3, dtype=torch.bool)
        alone[:, i] = True
        with torch.no_grad():
            expected.append(F.cross_entropy(net.fuse({m: t[rows] for m, t in tokens.items()}, alone)[0], y[rows]))
    assert float(out["unimodal_loss"]) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(out["ce_loss"]) + 2.0 * float(out["unimodal_loss"]), rel=1e-5)
    # label smoothing reaches the modalities alone as well as the sampled subsets
    smooth = run(2.0, smoothing=0.3).state.output
    smoothed = []
    for i in range(3):
        rows = present[:, i].nonzero().flatten()
        alone = torch.zeros(len(rows), 3, dtype=torch.bool)
        alone[:, i] = True
        with torch.no_grad():
            logits = net.fuse({m: t[rows] for m, t in tokens.items()}, alone)[0]
        smoothed.append(F.cross_entropy(logits, y[rows], label_smoothing=0.3))
    assert float(smooth["unimodal_loss"]) == pytest.approx(float(torch.stack(smoothed).mean()), rel=1e-4)
    assert float(smooth["unimodal_loss"]) != pytest.approx(float(out["unimodal_loss"]), rel=1e-3)
    assert float(smooth["ce_loss"]) != pytest.approx(float(out["ce_loss"]), rel=1e-3)
    assert all(float(seen[f"encoders.{m}.{p}"]) > 0 for m, p in (("a", "features.0.conv.weight"),
                                                                  ("c", "features.0.conv.weight")))
    # the singleton rows are not counted in the prototypes: as many rows as the single sampled subset gives
    assert on.prototype_accumulator.counts.sum() == off.prototype_accumulator.counts.sum()
    with pytest.raises(ValueError, match="unimodal_weight must be >= 0"):
        SubsetAugmentedTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=_net(),
                               optimizer=torch.optim.SGD(_net().parameters(), lr=0.1), unimodal_weight=-1.0)


def test_lr_schedules_by_name():
    from monai_dymo.engines import LR_SCHEDULES, build_lr_scheduler

    assert LR_SCHEDULES == ("cosine", "constant")
    rates = {}
    for name in LR_SCHEDULES:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = build_lr_scheduler(opt, name, max_epochs=4)
        seen = []
        for _ in range(4):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        rates[name] = seen + [opt.param_groups[0]["lr"]]
    assert rates["constant"] == [0.1] * 5
    assert rates["cosine"][0] == 0.1 and rates["cosine"][-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(rates["cosine"], rates["cosine"][1:]))  # falls every epoch
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, constant, got 'step'"):
        build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "step", 4)
    with pytest.raises(ValueError, match="max_epochs must be at least 1"):
        build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "cosine", 0)
