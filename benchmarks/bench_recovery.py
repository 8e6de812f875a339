"""Recovery-network benchmark: throughput (patients/s) and, optionally, PolyMNIST recovery quality.

Throughput (random weights; speed does not depend on them), mixed missing patterns (every patient misses a uniformly
drawn non-empty proper subset of its modalities):

- PolyMNIST-sized MoPoE (``build_polymnist_recovery``: 5 x 3x28x28): recovery and one training step per batch;
- 3D MRI MoPoE (``build_mri_recovery``: 4 x 1x64^3): recovery and one training step per batch;
- ``IterativeImputerRecovery`` on a clinical table (4 groups x 5 fields).

``--quality`` additionally builds PolyMNIST from ``../shared/data`` (MNIST + the five backgrounds), trains the PolyMNIST
MoPoE with :class:`~monai_dymo.engines.recovery_trainer.RecoveryTrainer` for ``--epochs`` epochs, trains a small digit
classifier on the true images, and reports the digit accuracy of recovered modalities (cross-modal coherence) from
one and from four observed modalities, next to the classifier's accuracy on the true images.

Usage::

    python benchmarks/bench_recovery.py                    # CPU throughput table
    python benchmarks/bench_recovery.py --device cuda
    python benchmarks/bench_recovery.py --quality --epochs 3 --skip-mri --threads 1

On a shared CPU, ``--threads 1`` avoids the heavy slow-down torch suffers when its threads are oversubscribed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery  # noqa: E402
from monai_dymo.networks.recovery.mopoe import build_mri_recovery, build_polymnist_recovery  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def mixed_present(batch: int, num_mod: int, g: torch.Generator) -> torch.Tensor:
    """``BoolTensor[B, M]``: each row a uniform draw among the non-empty proper subsets."""
    codes = torch.randint(1, 2**num_mod - 1, (batch,), generator=g)
    return (codes.unsqueeze(1) >> torch.arange(num_mod)) & 1 == 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(median, best) seconds of ``repeats`` calls after one warm-up call (best = least disturbed by other load)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def bench_mopoe(name, net, shape, batch, repeats, device, g, rows):
    net = net.to(device)
    mods = net.modalities
    x = {m: torch.rand(batch, *shape, generator=g).to(device) for m in mods}
    present = mixed_present(batch, len(mods), g).to(device)
    net.eval()

    def recover():
        with torch.no_grad():
            net(x, present)

    t, best = time_it(recover, repeats, device)
    rows.append((f"{name} recovery", batch, f"{t * 1e3:.1f} / {best * 1e3:.1f}", f"{batch / t:.1f}"))

    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    full = torch.ones(batch, len(mods), dtype=torch.bool, device=device)

    def step():
        opt.zero_grad()
        net.elbo(x, full)["loss"].backward()
        opt.step()

    t, best = time_it(step, max(1, repeats // 2), device)
    rows.append((f"{name} train step", batch, f"{t * 1e3:.1f} / {best * 1e3:.1f}", f"{batch / t:.1f}"))
    return t


def bench_imputer(batch, repeats, rows, g):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 4))
    table = np.concatenate([base @ rng.normal(size=(4, 5)) + 0.1 * rng.normal(size=(2000, 5)) for _ in range(4)], 1)
    imp = IterativeImputerRecovery({f"g{k}": 5 for k in range(4)}).fit(table)
    x = {f"g{k}": torch.tensor(table[:batch, 5 * k : 5 * k + 5], dtype=torch.float32) for k in range(4)}
    present = mixed_present(batch, 4, g)
    t, best = time_it(lambda: imp(x, present), repeats, torch.device("cpu"))
    rows.append(("imputer recovery (4x5 fields)", batch, f"{t * 1e3:.1f} / {best * 1e3:.1f}", f"{batch / t:.1f}"))


def print_table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


# ------------------------------------------------------------------------------------------------------ quality
def _digit_classifier():
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(3, 28, 28), classes=10, channels=(16, 32, 64), strides=(2, 2, 2), num_res_units=0)


def _batches(n, bs, g):
    perm = torch.randperm(n, generator=g)
    return [perm[i : i + bs] for i in range(0, n, bs)]


def quality(args, device, rows_out):
    from ignite.engine import Events

    from monai_dymo.data.polymnist import build_polymnist
    from monai_dymo.engines.recovery_trainer import RecoveryTrainer

    mnist, bgs = DATA / "mnist" / "mnist.npz", DATA / "polymnist_backgrounds"
    if not mnist.is_file() or not bgs.is_dir():
        print(f"[quality] skipped: PolyMNIST sources not found at {DATA}")
        return
    t0 = time.perf_counter()
    data = build_polymnist(mnist, bgs, seed=0, splits=("train", "test"))
    tr_img = torch.from_numpy(data["train"]["images"][: args.train_samples])  # uint8 [N, 5, 3, 28, 28]
    te_img = torch.from_numpy(data["test"]["images"][: args.test_samples])
    tr_lab = torch.from_numpy(data["train"]["labels"][: args.train_samples])
    te_lab = torch.from_numpy(data["test"]["labels"][: args.test_samples])
    mods = tuple(str(m) for m in data["train"]["modalities"])
    print(
        f"[quality] PolyMNIST built in {time.perf_counter() - t0:.0f}s: "
        f"train {tuple(tr_img.shape)}, test {tuple(te_img.shape)}"
    )

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build_polymnist_recovery(
        modalities=mods, latent_dim=args.latent_dim, beta=args.beta, expert_parametrization=args.expert_parametrization
    ).to(device)

    class _Loader:
        def __init__(self, n, bs):
            self.n, self.bs = n, bs

        def __len__(self):
            return (self.n + self.bs - 1) // self.bs

        def __iter__(self):
            for idx in _batches(self.n, self.bs, g):
                imgs = tr_img[idx].float() / 255.0
                batch = {m: imgs[:, k] for k, m in enumerate(mods)}
                batch["present"] = torch.ones(len(idx), len(mods), dtype=torch.bool)
                yield batch

    trainer = RecoveryTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=_Loader(len(tr_img), args.train_batch),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), args.lr),
        train_handlers=[],
        seed=0,
    )
    t_epoch = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log(engine):
        t_epoch.append(time.perf_counter())
        o = engine.state.output
        print(
            f"[quality] epoch {engine.state.epoch}: loss {float(o['loss']):.1f} recon {float(o['recon']):.1f} "
            f"kl {float(o['kl']):.1f} ({t_epoch[-1] - (t_epoch[-2] if len(t_epoch) > 1 else t_start):.0f}s)"
        )

    t_start = time.perf_counter()
    trainer.run()
    if args.save:
        net.save(args.save)
        print(f"[quality] saved trained network to {args.save}")

    # digit classifier on true images of all modalities
    clf = _digit_classifier().to(device)
    opt = torch.optim.Adam(clf.parameters(), 1e-3)
    n_clf = min(len(tr_img), 20000)
    for _ in range(2):
        for idx in _batches(n_clf, 256, g):
            x = (tr_img[idx].float() / 255.0).flatten(0, 1).to(device)
            y = tr_lab[idx].repeat_interleave(len(mods)).to(device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(clf(x), y).backward()
            opt.step()
    clf.eval()
    net.eval()

    def acc(images, labels):
        with torch.no_grad():
            return float((clf(images.to(device)).argmax(1).cpu() == labels).float().mean())

    te = te_img.float() / 255.0
    true_acc = np.mean([acc(te[:, k], te_lab) for k in range(len(mods))])
    n = len(te)
    res = {"1 observed": [], "4 observed": []}
    with torch.no_grad():
        for k, target in enumerate(mods):
            # one other modality observed (cycled), and all four others
            one = torch.zeros(n, len(mods), dtype=torch.bool)
            other = torch.tensor([(k + 1 + i % (len(mods) - 1)) % len(mods) for i in range(n)])
            one[torch.arange(n), other] = True
            four = torch.ones(n, len(mods), dtype=torch.bool)
            four[:, k] = False
            for key, pres in (("1 observed", one), ("4 observed", four)):
                inputs = {m: torch.where(pres[:, j, None, None, None], te[:, j], 0.0) for j, m in enumerate(mods)}
                rec = net({m: v.to(device) for m, v in inputs.items()}, pres.to(device))[target].cpu()
                res[key].append(acc(rec, te_lab))
    rows_out.append(("classifier on true images", f"{true_acc:.3f}"))
    for key, vals in res.items():
        per_target = ", ".join(f"{v:.2f}" for v in vals)
        rows_out.append((f"recovered from {key}", f"{np.mean(vals):.3f}  (per target: {per_target})"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--batch", type=int, default=256, help="PolyMNIST batch size")
    p.add_argument("--mri-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-mri", action="store_true")
    p.add_argument("--quality", action="store_true", help="train on PolyMNIST and report recovery coherence")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=60000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-batch", type=int, default=64, help="PolyMNIST training batch size (--quality)")
    p.add_argument("--expert-parametrization", default="natural", choices=("mean_logvar", "natural"))
    p.add_argument("--save", default="", help="optional path to save the trained PolyMNIST network (--quality)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")

    rows: list[tuple] = []
    torch.manual_seed(0)
    poly = build_polymnist_recovery()
    t_step = bench_mopoe("PolyMNIST MoPoE 5x3x28x28", poly, (3, 28, 28), args.batch, args.repeats, device, g, rows)
    if not args.skip_mri:
        mri = build_mri_recovery()
        reps = max(2, args.repeats // 2)
        bench_mopoe("MRI MoPoE 4x1x64^3", mri, (1, 64, 64, 64), args.mri_batch, reps, device, g, rows)
    bench_imputer(args.batch, args.repeats, rows, g)
    header = ("case", "batch", "ms/batch (median / best)", "patients/s (median)")
    print_table("Recovery throughput (mixed missing patterns)", header, rows)
    epoch_min = t_step * 60000 / args.batch / 60
    print(f"\nPolyMNIST: one epoch of 60k samples at batch {args.batch} ~ {epoch_min:.1f} min (train step x batches)")

    if args.quality:
        q_rows: list[tuple] = []
        quality(args, device, q_rows)
        if q_rows:
            print_table(
                f"PolyMNIST recovery coherence (digit accuracy), {args.epochs} epoch(s), latent {args.latent_dim}",
                ("what", "accuracy"),
                q_rows,
            )


if __name__ == "__main__":
    main()
