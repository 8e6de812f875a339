"""Benchmark: batched DyMo selection vs a reference-cost implementation vs one plain forward pass.

What is timed (same ``DynamicFusionTransformer`` in eval mode, same batch, ``torch.no_grad``; inputs are taken as
already recovered, so recovery is not timed):

- ``dymo``: ``network.encode`` once + :func:`monai_dymo.selection.select_modalities` (one batched ``fuse`` call per
  greedy round, candidate rows given as patient indices; the final logits come from the last accepted candidate, no
  extra pass).
- ``reference``: the cost profile of the straightforward implementation: at every step, for every candidate modality
  ``u``, two whole forward passes (encoders included) of the patients that have ``u`` as a candidate,
  ``network(inputs, S u {u})`` and ``network(inputs, S)``, then the quality / Gaussian scores and rewards computed
  patient by patient in a Python loop; and a final forward pass on the selected subsets.
- ``plain``: one forward pass ``network(inputs, present)`` (no selection).

Cases (targets printed as PASS/FAIL):

- ``2d``: PolyMNIST-size, B=256, M=5 modalities of 3x28x28 (``build_polymnist_fusion``), 80% of the modalities missing
  (at least one observed per patient). Target: ``reference / dymo >= 4``.
- ``3d``: B=32, four 1x32^3 modalities (``build_image_fusion``, 3D), 60% missing. Target: ``dymo / plain <= 1.3``.

The networks are untrained (random weights); the calibration is *fitted* with :func:`fit_calibration` on a few batches
of random inputs with balanced random labels, so that subset prototypes and spreads are consistent with the network.
With random weights the number of greedy rounds / candidate evaluations is whatever the selection decides; it is printed
(``rounds``, ``rows``) so figures can be compared. The table also reports how often the reference and DyMo selected the
same subset (they implement the same rule; differences can only come from float rounding at near-ties).

Each figure is the best (minimum) wall time over the repeats, after ``--warmup`` untimed runs: on a shared machine the
minimum is the most reproducible estimate of the cost (other processes only ever add time).

Usage::

    python benchmarks/bench_selection.py                      # both cases on CPU
    python benchmarks/bench_selection.py --device cuda --repeats 10
    python benchmarks/bench_selection.py --cases 3d --batch-3d 16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai_dymo.calibration import SubsetCalibration, fit_calibration  # noqa: E402
from monai_dymo.networks.fusion import build_image_fusion, build_polymnist_fusion  # noqa: E402
from monai_dymo.selection import select_modalities  # noqa: E402
from monai_dymo.subsets import mask_to_code  # noqa: E402

TAU = 0.1


def random_present(batch: int, modalities: int, missing: float, generator: torch.Generator) -> torch.Tensor:
    present = torch.rand(batch, modalities, generator=generator) >= missing
    present[torch.arange(batch), torch.randint(0, modalities, (batch,), generator=generator)] = True
    return present


def random_inputs(names, shape, batch, generator, device):
    return {n: torch.randn(batch, *shape, generator=generator).to(device) for n in names}


def fit_random_calibration(net, names, shape, num_classes, device, batches, batch_size, generator):
    data = []
    for _ in range(batches):
        x = random_inputs(names, shape, batch_size, generator, device)
        x["label"] = (torch.arange(batch_size) % num_classes).to(device)
        data.append(x)
    return fit_calibration(net.encode, net.fuse, data, modalities=names, num_classes=num_classes, device=device,
                           progress=False)


def _score_one(logits: torch.Tensor, z: torch.Tensor, code: int, calib: SubsetCalibration) -> tuple[float, float]:
    """Quality and log ICS of one patient, the reference way (Python scalars)."""
    z = z.double()
    q = torch.softmax(z @ calib.overall.T / TAU, -1).max().item()
    c = int(logits.argmax())
    mu = calib.prototypes[code, c]
    sigma = calib.sigma[code, c].item()
    d = (1 - z @ mu).item() if calib.metric == "cosine" else (z - mu).norm().item()
    return q, math.log(2) + torch.special.log_ndtr(torch.tensor(-d / sigma, dtype=torch.float64)).item()


def reference_cost(net, inputs, present, calib):
    """Greedy selection with the straightforward cost: 2 whole forwards per (step, candidate modality)."""
    B, M = present.shape
    S = present.clone()
    bad = torch.zeros_like(present)
    active = (~present).any(1)
    for _step in range(M):
        cand = active[:, None] & ~S & ~bad
        if not bool(cand.any()):
            break
        best_r = [0.0] * B
        best_u = [-1] * B
        for u in range(M):
            rows = cand[:, u].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            x = {m: v.index_select(0, rows) for m, v in inputs.items()}
            sub_s = S.index_select(0, rows)
            sub_u = sub_s.clone()
            sub_u[:, u] = True
            logits_u, z_u = net(x, sub_u)
            logits_s, z_s = net(x, sub_s)
            codes_s = mask_to_code(sub_s).tolist()
            codes_u = mask_to_code(sub_u).tolist()
            for i, b in enumerate(rows.tolist()):
                q_s, lp_s = _score_one(logits_s[i], z_s[i], codes_s[i], calib)
                q_u, lp_u = _score_one(logits_u[i], z_u[i], codes_u[i], calib)
                if lp_u < lp_s:
                    g = lp_s / lp_u if calib.metric == "cosine" else math.exp(lp_u - lp_s)
                else:
                    g = 1.0
                r = q_u * g - q_s
                if r < 0:
                    bad[b, u] = True
                if r > best_r[b]:
                    best_r[b], best_u[b] = r, u
        for b in range(B):
            if best_u[b] >= 0:
                S[b, best_u[b]] = True
            else:
                active[b] = False
    logits, _ = net(inputs, S)
    return S, logits


def timeit(fn, device, repeats, warmup):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run_case(name, args, device):
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if name == "2d":
        names = tuple(f"m{i}" for i in range(5))
        net = build_polymnist_fusion(num_modalities=5, num_classes=10)
        shape, num_classes, batch, missing = (3, 28, 28), 10, args.batch_2d, 0.8
    else:
        names = ("t1", "t1ce", "t2", "flair")
        net = build_image_fusion(names, spatial_dims=3, num_classes=2, in_channels=1)
        shape, num_classes, batch, missing = (1, 32, 32, 32), 2, args.batch_3d, 0.6
    net = net.to(device).eval()
    with torch.no_grad():
        calib = fit_random_calibration(net, names, shape, num_classes, device, args.calib_batches,
                                       min(batch, 64), g).to(device)
        inputs = random_inputs(names, shape, batch, g, device)
        present = random_present(batch, len(names), missing, g).to(device)

        rows = {"n": 0}
        fuse = net.fuse

        def counting_fuse(tokens, subset, index=None):  # forwards the row -> patient index like net.fuse takes it
            rows["n"] += subset.shape[0]
            return fuse(tokens, subset, index=index)

        def dymo():
            return select_modalities(counting_fuse, net.encode(inputs), present, calib, temperature=TAU)

        t_dymo, res = timeit(dymo, device, args.repeats, args.warmup)
        fused_rows = rows["n"] // (args.repeats + args.warmup)
        t_plain, _ = timeit(lambda: net(inputs, present), device, args.repeats, args.warmup)
        t_ref, (S_ref, _) = timeit(lambda: reference_cost(net, inputs, present, calib), device,
                                   args.ref_repeats, min(args.warmup, 1))
    agree = (S_ref == res.selected).all(1).float().mean().item()
    return {
        "case": name, "B": batch, "M": len(names), "missing": missing, "dymo_ms": 1e3 * t_dymo,
        "plain_ms": 1e3 * t_plain, "ref_ms": 1e3 * t_ref, "rounds": res.rewards.shape[0], "rows": fused_rows,
        "accepted": int(res.accepted.sum()), "rejected": int(res.rejected.sum()), "agree": agree,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--cases", nargs="+", default=["2d", "3d"], choices=["2d", "3d"])
    parser.add_argument("--batch-2d", type=int, default=256)
    parser.add_argument("--batch-3d", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of dymo / plain (best reported)")
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed repeats of the (slow) reference")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--calib-batches", type=int, default=2, help="random batches used to fit the calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    results = [run_case(c, args, device) for c in args.cases]
    header = (
        f"{'case':<4} {'B':>4} {'M':>2} {'miss':>5} {'plain ms':>9} {'dymo ms':>9} {'ref ms':>10} "
        f"{'dymo/plain':>10} {'ref/dymo':>9} {'rounds':>6} {'rows':>6} {'acc':>4} {'rej':>4} {'agree':>6}  target"
    )
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"))
    print(header)
    print("-" * len(header))
    for r in results:
        ratio_plain = r["dymo_ms"] / r["plain_ms"]
        speedup = r["ref_ms"] / r["dymo_ms"]
        if r["case"] == "2d":
            target = f"ref/dymo >= 4: {'PASS' if speedup >= 4 else 'FAIL'}"
        else:
            target = f"dymo/plain <= 1.3: {'PASS' if ratio_plain <= 1.3 else 'FAIL'}"
        print(f"{r['case']:<4} {r['B']:>4} {r['M']:>2} {r['missing']:>5.0%} {r['plain_ms']:>9.1f} {r['dymo_ms']:>9.1f} "
              f"{r['ref_ms']:>10.1f} {ratio_plain:>10.2f} {speedup:>9.1f} {r['rounds']:>6} {r['rows']:>6} "
              f"{r['accepted']:>4} {r['rejected']:>4} {r['agree']:>6.1%}  {target}")
    return results


if __name__ == "__main__":
    main()
