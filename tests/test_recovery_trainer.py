"""Training a MoPoE recovery network through MONAI engines (RecoveryTrainer / RecoveryEvaluator)."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset

from monai_dymo.engines.recovery_trainer import (
    KEPT,
    MODALITIES,
    PrepareRecoveryBatch,
    RecoveryEvaluator,
    RecoveryMSE,
    RecoveryTrainer,
    simulate_missing,
)
from monai_dymo.keys import DyMoKeys
from monai_dymo.networks.recovery.mopoe import MoPoERecovery


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Modality a: a Gaussian blob at a random position on 8x8; modality b = a transposed (deterministic in a)."""
    uv = torch.rand(n, 2, generator=g) * 5 + 1.5
    ii = torch.arange(8.0).view(1, 8, 1)
    jj = torch.arange(8.0).view(1, 1, 8)
    a = torch.exp(-((ii - uv[:, 0, None, None]) ** 2 + (jj - uv[:, 1, None, None]) ** 2) / 2.0).unsqueeze(1)
    return a, a.transpose(-1, -2).contiguous()


def _records(a: torch.Tensor, b: torch.Tensor, present: torch.Tensor) -> list[dict]:
    return [{"a": a[i], "b": b[i], DyMoKeys.PRESENT: present[i]} for i in range(len(a))]


def test_simulate_missing_properties():
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]] * 50, dtype=torch.bool)
    kept = simulate_missing(present, torch.Generator().manual_seed(0))
    assert not bool((kept & ~present).any())
    assert bool(kept.any(1).all())
    multi = present.sum(1) >= 2
    assert bool((kept.sum(1)[multi] < present.sum(1)[multi]).all())
    assert torch.equal(kept[~multi], present[~multi])
    assert torch.equal(kept, simulate_missing(present, torch.Generator().manual_seed(0)))
    # all 6 non-empty proper subsets of a full 3-modality set occur
    assert len({tuple(r.tolist()) for r in kept[0::4]}) == 6


def test_recovery_mse_metric():
    metric = RecoveryMSE()
    pred = {"a": torch.tensor([[1.0, 1.0], [0.0, 0.0]]), "b": torch.tensor([[2.0], [0.0]])}
    label = {"a": torch.tensor([[0.0, 0.0], [5.0, 5.0]]), "b": torch.tensor([[0.0], [float("nan")]])}
    present = torch.tensor([[1, 1], [1, 1]], dtype=torch.bool)
    kept = torch.tensor([[0, 1], [1, 0]], dtype=torch.bool)
    metric.reset()
    metric.update({"pred": pred, "label": label, DyMoKeys.PRESENT: present, KEPT: kept, MODALITIES: ("a", "b")})
    # held out: (0, a) with mse 1.0; (1, b) has only a NaN target -> skipped
    assert metric.compute() == 1.0
    only_b = RecoveryMSE(modality="b")
    only_b.reset()
    assert only_b.compute() != only_b.compute()  # NaN when nothing was held out


def test_prepare_batch():
    prep = PrepareRecoveryBatch(("a", "b"))
    batch = {"a": torch.zeros(2, 3), "b": torch.ones(2, 1), "label": torch.zeros(2)}
    inputs, present = prep(batch, torch.device("cpu"))
    assert set(inputs) == {"a", "b"} and present.dtype == torch.bool and bool(present.all())
    try:
        prep({"a": torch.zeros(2, 3)})
    except ValueError as e:
        assert "lacks modality" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_training_through_engines_recovers_missing_modality(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    a, b = _blobs(1024, g)
    r = torch.rand(1024, generator=g)
    present = torch.stack([r > 0.15, r < 0.85], 1)  # incomplete training data: 15% only b, 15% only a
    va, vb = _blobs(128, g)
    train_loader = DataLoader(Dataset(_records(a, b, present)), batch_size=64, shuffle=True, num_workers=0)
    val_loader = DataLoader(
        Dataset(_records(va, vb, torch.ones(128, 2, dtype=torch.bool))), batch_size=128, num_workers=0
    )

    spec = {
        "shape": [1, 8, 8],
        "likelihood": "gaussian",
        "scale": 0.1,
        "channels": [16, 32],
        "strides": [2, 2],
        "output_activation": "sigmoid",
    }
    net = MoPoERecovery(["a", "b"], {"a": spec, "b": spec}, latent_dim=8)
    evaluator = RecoveryEvaluator("cpu", val_loader, net, log_dir=str(tmp_path))
    trainer = RecoveryTrainer(
        device="cpu",
        max_epochs=20,
        train_data_loader=train_loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 3e-3),
        log_dir=str(tmp_path),
        validator=evaluator,
        val_interval=10,
        seed=0,
    )
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast and immune to oversubscription on shared CPUs
    try:
        trainer.run()
    finally:
        torch.set_num_threads(threads)

    out = trainer.state.output
    assert {"loss", "recon", "kl", "recon_a", "recon_b"} <= set(out)
    assert sum(losses[-16:]) < sum(losses[:16])
    assert "recovery_mse" in evaluator.state.metrics and "recovery_mse_b" in evaluator.state.metrics
    assert evaluator.state.best_metric_epoch in (10, 20)
    assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard logging by default

    # recover b from a only (the caller passes no b at all) vs predicting the training mean of b
    net.eval()
    with torch.no_grad():
        rec = net({"a": va}, torch.tensor([[True, False]]).expand(128, 2))
    mse = float(((rec["b"] - vb) ** 2).mean())
    baseline = float(((vb - b.mean(0)) ** 2).mean())
    assert mse < 0.5 * baseline, (mse, baseline)
    assert torch.equal(rec["a"], va)


def test_evaluator_scores_the_imputer_through_the_same_interface(tmp_path):
    from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, generator=g, dtype=torch.float64)
    y = 2 * x + 1 + 0.05 * torch.randn(300, 1, generator=g, dtype=torch.float64)
    imp = IterativeImputerRecovery({"x": 1, "y": 1}).fit({"x": x[:200], "y": y[:200]})
    records = [{"x": x[i], "y": y[i]} for i in range(200, 300)]  # no "present" key: complete validation data
    evaluator = RecoveryEvaluator("cpu", DataLoader(Dataset(records), batch_size=50), imp, log_dir=None)
    evaluator.run()
    mse = evaluator.state.metrics["recovery_mse"]
    assert mse < 0.05 * float(torch.cat([x, y], 1)[200:].var(0).mean())
    assert evaluator.state.metrics["recovery_mse_x"] < evaluator.state.metrics["recovery_mse_y"]  # y = 2x + 1


class _TwoInputs(torch.nn.Module):
    modalities = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)


def test_progress_bars(capsys):
    from monai_dymo.handlers import loss_progress, progress_enabled

    data = [{"a": torch.randn(1), "b": torch.randn(1), "present": torch.ones(2, dtype=torch.bool)} for _ in range(12)]
    net = _TwoInputs()
    trainer = RecoveryTrainer(
        "cpu", 2, DataLoader(Dataset(data), batch_size=4), net, torch.optim.SGD(net.parameters(), 0.1),
        loss_function=lambda n, x, p: {"loss": n.w(torch.cat([x["a"], x["b"]], 1)).pow(2).mean()},
        train_handlers=[], progress=True,
    )
    trainer.run()
    err = capsys.readouterr().err
    assert "Recovery training [2/2]" in err and "loss=" in err and "[2/3]" in err  # epoch 2 of 2, iterations

    from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery

    x = torch.randn(40, 1, dtype=torch.float64)
    imp = IterativeImputerRecovery({"x": 1, "y": 1}).fit({"x": x, "y": 2 * x})
    records = [{"x": x[i], "y": 2 * x[i]} for i in range(40)]
    loader = DataLoader(Dataset(records), batch_size=10)
    RecoveryEvaluator("cpu", loader, imp, log_dir=None, progress=True).run()
    assert "Recovery validation" in capsys.readouterr().err
    assert RecoveryEvaluator("cpu", loader, imp, log_dir=None).progress_bar is None  # stderr is not a terminal

    class _Terminal:
        def isatty(self) -> bool:
            return True

    assert progress_enabled(None, _Terminal()) and not progress_enabled(False, _Terminal())
    assert progress_enabled(True) and not progress_enabled(None)  # pytest captures stderr
    assert loss_progress({"loss": torch.tensor(0.5)}) == {"loss": 0.5} and loss_progress([{"loss": 1.0}]) == {}
