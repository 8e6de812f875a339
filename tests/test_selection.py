"""Tests of the batched greedy DyMo selection (method section 4)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from monai_dymo.calibration import SubsetCalibration
from monai_dymo.report import selection_records
from monai_dymo.selection import (
    SelectionResult,
    calibration_factor,
    log_ics_score,
    quality_score,
    select_modalities,
)

TAU = 0.1


# ---------------------------------------------------------------------------------------------------- helpers
def _code(subset) -> int:
    return sum(2**m for m in subset)


class TableCase:
    """One patient whose fusion output for each subset is hand-built to give a chosen ``(q, p)``.

    Two classes, ``D = 2``, overall prototypes = identity, the classifier always predicts class 0 and
    ``mu_{S,0} = (1, 0)``. ``z(S) = (cos t, sin t)`` with ``cos t - sin t = tau * logit(q)`` (cosine; half that for
    the Euclidean quality) gives ``q(S) = q``;
    ``sigma_S`` is chosen so that ``2 * (1 - Phi(d / sigma_S)) = p``. The fuse raises on a subset missing from the
    table and logs every subset code it is asked for.
    """

    def __init__(self, num_modalities: int, table: dict, metric: str = "cosine") -> None:
        self.M = num_modalities
        self.names = [f"m{i}" for i in range(num_modalities)]
        rows = 2**num_modalities
        self.z = {}
        protos = torch.zeros(rows, 2, 2, dtype=torch.float64)
        protos[:, 0, 0] = 1.0
        protos[:, 1, 1] = 1.0
        sigma = torch.ones(rows, 2, dtype=torch.float64)
        for subset, (q, p) in table.items():
            code = _code(subset)
            # cosine: q = sigmoid((z0 - z1) / tau); Euclidean, with |z| = 1: -|z - e_c|^2 = 2 z_c - 2, so twice that
            v = TAU * math.log(q / (1 - q)) / math.sqrt(2) / (1 if metric == "cosine" else 2)
            t = -math.pi / 4 - math.acos(v)
            z = torch.tensor([math.cos(t), math.sin(t)], dtype=torch.float64)
            self.z[code] = z
            mu = protos[code, 0]
            d = float(1 - z @ mu) if metric == "cosine" else float((z - mu).norm())
            x = -float(torch.special.ndtri(torch.tensor(p / 2, dtype=torch.float64)))  # d / sigma
            sigma[code, 0] = d / x
        self.calibration = SubsetCalibration(protos, sigma, overall=torch.eye(2, dtype=torch.float64), metric=metric)
        self.metric = metric
        self.seen: list[int] = []
        self.calls = 0

    def fuse(self, tokens, subset):
        self.calls += 1
        codes = (subset.long() * 2 ** torch.arange(self.M)).sum(1).tolist()
        self.seen.extend(codes)
        z = torch.stack([self.z[c] for c in codes])  # KeyError if a subset outside the table is evaluated
        logits = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(len(codes), 2).clone()
        logits[:, 0] += torch.tensor(codes, dtype=torch.float64) * 1e-3  # distinct logits per subset
        return logits, z

    def tokens(self):
        return {n: torch.zeros(1, 1, 1) for n in self.names}

    def run(self, observed):
        present = torch.zeros(1, self.M, dtype=torch.bool)
        present[0, list(observed)] = True
        return select_modalities(self.fuse, self.tokens(), present, self.calibration, temperature=TAU)


def _expected_reward(q_s, p_s, q_u, p_u, metric="cosine"):
    if p_u < p_s:
        g = math.log(p_s) / math.log(p_u) if metric == "cosine" else p_u / p_s
    else:
        g = 1.0
    return q_u * g - q_s


class MLPFuse:
    """Small random MLP-like fusion with row-independent outputs, float64; counts rows and calls."""

    def __init__(self, names, num_classes, proj_dim, token_dim=4, hidden=16, seed=0, normalize=True):
        g = torch.Generator().manual_seed(seed)
        self.names = list(names)
        self.w = {n: torch.randn(token_dim, hidden, generator=g, dtype=torch.float64) for n in names}
        self.bias = torch.randn(hidden, generator=g, dtype=torch.float64) * 0.1
        self.head = torch.randn(hidden, num_classes, generator=g, dtype=torch.float64)
        self.proj = torch.randn(hidden, proj_dim, generator=g, dtype=torch.float64)
        self.normalize = normalize
        self.rows = 0
        self.calls = 0

    def __call__(self, tokens, subset):
        self.rows += subset.shape[0]
        self.calls += 1
        h = self.bias.expand(subset.shape[0], -1)
        for i, n in enumerate(self.names):
            h = h + (tokens[n].mean(1) @ self.w[n]) * subset[:, i : i + 1].to(torch.float64)
        h = torch.tanh(h)
        z = h @ self.proj
        return h @ self.head, F.normalize(z, dim=-1) if self.normalize else z  # Euclidean: z not normalised


def _random_problem(M, seed, B=24, C=3, D=6, missing=0.6, metric="cosine"):
    g = torch.Generator().manual_seed(1000 + seed)
    names = [f"mod{i}" for i in range(M)]
    tokens = {n: torch.randn(B, 2, 4, generator=g, dtype=torch.float64) for n in names}
    present = torch.rand(B, M, generator=g) >= missing
    present[torch.arange(B), torch.randint(0, M, (B,), generator=g)] = True  # at least one observed
    protos = F.normalize(torch.randn(2**M, C, D, generator=g, dtype=torch.float64), dim=-1) * 0.9
    sigma = 0.05 + 0.4 * torch.rand(2**M, C, generator=g, dtype=torch.float64)
    calib = SubsetCalibration(protos, sigma, metric=metric, modalities=names)
    fuse = MLPFuse(names, C, D, seed=seed, normalize=metric == "cosine")
    return names, tokens, present, calib, fuse


def reference_selection(fuse, tokens, present, calib, temperature=TAU, margin=0.0):
    """Straightforward per-patient implementation of method section 4 and of "The Euclidean variant, end to end"
    (scores recomputed from scratch); ``margin``: accept only rewards ``> margin`` (0: docs/method.md §4.5)."""
    names = list(calib.modalities)
    M = len(names)

    def score(b, subset):
        mask = torch.zeros(1, M, dtype=torch.bool)
        mask[0, sorted(subset)] = True
        logits, z = fuse({n: tokens[n][b : b + 1] for n in names}, mask)
        logits, z = logits[0], z[0].double()
        if calib.metric == "cosine":  # q(S) = max_c softmax_c(z . P_c / tau)
            q = torch.softmax(z @ calib.overall.T / temperature, -1).max().item()
        else:  # q(S) = max_c softmax_c(-||z - P_c||^2 / tau), squared distances
            sq = torch.stack([((z - p) ** 2).sum() for p in calib.overall.double()])
            q = torch.softmax(-sq / temperature, -1).max().item()
        c = int(logits.argmax())
        code = _code(subset)
        mu, sigma = calib.prototypes[code, c], calib.sigma[code, c]
        d = 1 - z @ mu if calib.metric == "cosine" else (z - mu).norm()  # ICS: plain (not squared) distance
        log_p = math.log(2) + torch.special.log_ndtr(-d / sigma).item()
        return q, log_p, logits

    out = []
    for b in range(present.shape[0]):
        observed = {m for m in range(M) if present[b, m]}
        missing = [m for m in range(M) if not present[b, m]]
        S, bad = set(observed), set()
        accepted, rejected, rewards = [], [], {}
        for step in range(len(missing)):
            cands = [u for u in missing if u not in S and u not in bad]
            if not cands:
                break
            q_s, lp_s, _ = score(b, S)
            best, best_r = None, 0.0
            for u in cands:
                q_u, lp_u, _ = score(b, S | {u})
                if lp_u < lp_s:
                    g = lp_s / lp_u if calib.metric == "cosine" else math.exp(lp_u - lp_s)
                else:
                    g = 1.0
                r = q_u * g - q_s
                rewards[(step, u)] = r
                if r < 0:
                    bad.add(u)
                    rejected.append((u, step))
                if r > margin and (best is None or r > best_r):
                    best, best_r = u, r
            if best is None:
                break
            S.add(best)
            accepted.append((best, step))
        q, lp, logits = score(b, S)
        out.append(dict(S=S, accepted=accepted, rejected=rejected, rewards=rewards, q=q, log_p=lp, logits=logits))
    return out


# ---------------------------------------------------------------------------------------------------- rules
def test_negative_reward_rejected_for_good_and_never_reevaluated():
    case = TableCase(3, {
        (0,): (0.7, 0.5),
        (0, 1): (0.6, 0.5),  # r = -0.1 -> Bad
        (0, 2): (0.8, 0.6),  # p up -> G = 1, r = +0.1 -> accepted
        (0, 1, 2): (0.99, 0.9),  # would be great, but 1 is in Bad: must never be evaluated
    })
    res = case.run([0])
    assert _code((0, 1, 2)) not in case.seen
    assert case.seen.count(_code((0, 1))) == 1
    assert res.rejected[0].tolist() == [False, True, False]
    assert res.accepted[0].tolist() == [False, False, True]
    assert res.reject_step[0, 1] == 0 and res.accept_step[0, 2] == 0
    assert res.selected[0].tolist() == [True, False, True]
    assert res.steps.tolist() == [1]
    assert res.rewards[0, 0, 1].item() == pytest.approx(-0.1, abs=1e-9)
    assert res.rewards[0, 0, 2].item() == pytest.approx(0.1, abs=1e-9)
    assert res.quality.item() == pytest.approx(0.8, abs=1e-9)
    assert res.log_ics.item() == pytest.approx(math.log(0.6), abs=1e-9)
    assert torch.equal(res.logits[0], case.fuse(None, torch.tensor([[True, False, True]]))[0][0])
    assert case.calls == 3  # O, one step of 2 candidates, a probe call by the test itself


def test_argmax_acceptance_among_positive_then_rejection_at_later_step():
    case = TableCase(3, {
        (0,): (0.7, 0.5),
        (0, 1): (0.8, 0.6),  # r = 0.1
        (0, 2): (0.9, 0.6),  # r = 0.2 -> accepted
        (0, 1, 2): (0.85, 0.7),  # r = -0.05 -> rejected at step 1
    })
    res = case.run([0])
    assert res.accepted[0].tolist() == [False, False, True]
    assert res.rejected[0].tolist() == [False, True, False]
    assert res.accept_step[0].tolist() == [-1, -1, 0]
    assert res.reject_step[0].tolist() == [-1, 1, -1]
    assert res.rewards.shape == (2, 1, 3)
    assert res.rewards[1, 0, 1].item() == pytest.approx(-0.05, abs=1e-9)
    assert math.isnan(res.rewards[1, 0, 2].item()) and math.isnan(res.rewards[0, 0, 0].item())
    assert res.quality.item() == pytest.approx(0.9, abs=1e-9)
    rec = selection_records(res, case.names)[0]
    assert [a["modality"] for a in rec["accepted"]] == ["m2"]
    assert rec["rejected"] == [{"modality": "m1", "step": 1, "reward": pytest.approx(-0.05, abs=1e-9)}]


def test_stop_when_no_positive_reward_zero_reward_is_not_rejected():
    case = TableCase(3, {
        (0,): (0.7, 0.5),
        (0, 1): (0.7, 0.5),  # identical scores -> r = 0 exactly: neither accepted nor rejected
        (0, 2): (0.65, 0.9),  # r < 0
    })
    res = case.run([0])
    assert res.rewards[0, 0, 1].item() == 0.0
    assert res.steps.tolist() == [0]
    assert res.selected[0].tolist() == [True, False, False]
    assert res.rejected[0].tolist() == [False, False, True]
    assert res.unused[0].tolist() == [False, True, False]
    assert torch.equal(res.logits, case.fuse(None, torch.tensor([[True, False, False]]))[0])
    assert case.seen.count(_code((0,))) == 2  # O once by the selection, once by the probe above: no final pass


@pytest.mark.parametrize(
    "p_u, accepted",
    [
        (0.45, True),  # p decreases: G = log .5 / log .45 = 0.868 -> r = 0.9 * 0.868 - 0.7 > 0
        (0.10, False),  # p decreases a lot: G = 0.301 -> r < 0
        (0.80, True),  # p increases: G = 1 -> r = 0.2
    ],
)
def test_calibration_factor_cosine(p_u, accepted):
    case = TableCase(2, {(0,): (0.7, 0.5), (0, 1): (0.9, p_u)})
    res = case.run([0])
    expected = _expected_reward(0.7, 0.5, 0.9, p_u, "cosine")
    assert res.rewards[0, 0, 1].item() == pytest.approx(expected, abs=1e-9)
    assert res.accepted[0, 1].item() is accepted
    assert res.rejected[0, 1].item() is (not accepted)


def test_calibration_factor_euclidean_differs_from_cosine():
    # p: 0.5 -> 0.4. cosine G = log .5 / log .4 = 0.756 -> r = -0.019; Euclidean G = 0.8 -> r = +0.02
    table = {(0,): (0.7, 0.5), (0, 1): (0.9, 0.4)}
    cos = TableCase(2, table, metric="cosine").run([0])
    euc = TableCase(2, table, metric="euclidean").run([0])
    assert cos.rewards[0, 0, 1].item() == pytest.approx(_expected_reward(0.7, 0.5, 0.9, 0.4, "cosine"), abs=1e-9)
    assert euc.rewards[0, 0, 1].item() == pytest.approx(_expected_reward(0.7, 0.5, 0.9, 0.4, "euclidean"), abs=1e-9)
    assert cos.rejected[0, 1] and not cos.accepted[0, 1]
    assert euc.accepted[0, 1] and not euc.rejected[0, 1]


def test_calibration_factor_function():
    lp_s = torch.tensor([-1.0, -1.0, -2.0], dtype=torch.float64)
    lp_u = torch.tensor([-2.0, -0.5, -2.0], dtype=torch.float64)
    assert calibration_factor(lp_s, lp_u, "cosine").tolist() == [0.5, 1.0, 1.0]
    euc = calibration_factor(lp_s, lp_u, "euclidean")
    assert euc[0].item() == pytest.approx(math.exp(-1.0)) and euc[1:].tolist() == [1.0, 1.0]


def test_multi_step_with_several_missing():
    case = TableCase(4, {
        (1,): (0.6, 0.5),
        (0, 1): (0.7, 0.5), (1, 2): (0.65, 0.5), (1, 3): (0.5, 0.5),  # accept 0, reject 3
        (0, 1, 2): (0.75, 0.5),  # accept 2 at step 1
    })
    res = case.run([1])
    assert res.selected[0].tolist() == [True, True, True, False]
    assert res.accept_step[0].tolist() == [0, -1, 1, -1]
    assert res.reject_step[0].tolist() == [-1, -1, -1, 0]
    assert res.steps.tolist() == [2]
    assert res.rewards.shape[0] == 2  # round 2 has no candidate left (3 is in Bad)
    assert res.quality.item() == pytest.approx(0.75, abs=1e-9)
    rec = selection_records(res, case.names)[0]
    assert [a["modality"] for a in rec["accepted"]] == ["m0", "m2"]
    assert rec["selected"] == ["m0", "m1", "m2"] and rec["observed"] == ["m1"]
    assert rec["recovered"] == ["m0", "m2", "m3"] and rec["unused"] == []
    # every candidate's reward at each round it took part in, and the scores after each acceptance
    assert rec["rewards"]["m0"] == [pytest.approx(0.1, abs=1e-9)]
    assert rec["rewards"]["m2"] == [pytest.approx(0.05, abs=1e-9), pytest.approx(0.05, abs=1e-9)]
    assert rec["rewards"]["m3"] == [pytest.approx(-0.1, abs=1e-9)]
    assert [s["added"] for s in rec["trajectory"]] == [None, "m0", "m2"]
    assert [s["quality"] for s in rec["trajectory"]] == [pytest.approx(q, abs=1e-9) for q in (0.6, 0.7, 0.75)]
    assert all(s["ics"] == pytest.approx(math.exp(s["log_ics"])) for s in rec["trajectory"])


def test_log_ics_finite_beyond_six_sigma():
    for ratio in (6.5, 10.0, 30.0):
        protos = torch.zeros(2, 1, 2, dtype=torch.float64)
        protos[1, 0, 0] = 1.0
        t = 0.5
        z = torch.tensor([[math.cos(t), math.sin(t)]], dtype=torch.float64)
        d = 1 - math.cos(t)
        sigma = torch.tensor([[1.0], [d / ratio]], dtype=torch.float64)
        calib = SubsetCalibration(protos, sigma)
        log_p = log_ics_score(torch.zeros(1, 1), z, torch.tensor([1]), calib)
        expected = math.log(2) + math.log(0.5 * math.erfc(ratio / math.sqrt(2)))
        assert torch.isfinite(log_p).all()
        assert log_p.dtype == torch.float64
        assert log_p.item() == pytest.approx(expected, rel=1e-9)
        # the float32 form of the reference collapses to p = 0 here
        assert 2 * (1 - torch.special.ndtr(torch.tensor(ratio, dtype=torch.float32))).item() == 0.0


def test_quality_score_matches_definition():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    overall = torch.randn(3, 4, generator=g, dtype=torch.float64)
    q = quality_score(z, overall, 0.1)
    expected = torch.softmax(z.double() @ overall.T / 0.1, dim=-1).max(-1).values
    assert torch.allclose(q, expected)
    assert torch.equal(quality_score(z, overall, 0.1, "cosine"), q)


def test_quality_score_euclidean_uses_squared_distances():
    g = torch.Generator().manual_seed(4)
    z = 2.0 * torch.randn(5, 4, generator=g)  # not normalised
    overall = torch.randn(3, 4, generator=g, dtype=torch.float64)
    q = quality_score(z, overall, 0.1, "euclidean")
    sq = torch.tensor([[float(((z[r].double() - overall[c]) ** 2).sum()) for c in range(3)] for r in range(5)])
    expected = torch.softmax(-sq.double() / 0.1, dim=-1).max(-1).values
    assert torch.allclose(q, expected)
    # neither the dot product nor the plain distance
    assert not torch.allclose(q, quality_score(z, overall, 0.1, "cosine"))
    plain = torch.softmax(-sq.double().sqrt() / 0.1, dim=-1).max(-1).values
    assert not torch.allclose(q, plain)
    with pytest.raises(ValueError, match="metric"):
        quality_score(z, overall, 0.1, "manhattan")


def test_euclidean_quality_enters_the_reward():
    # with |z| = 1 and P = I, the Euclidean logits are twice the cosine ones: the same z gives different rewards
    table = {(0,): (0.7, 0.5), (0, 1): (0.9, 0.8)}
    euc = TableCase(2, table, metric="euclidean")
    res = euc.run([0])
    assert res.rewards[0, 0, 1].item() == pytest.approx(0.9 - 0.7, abs=1e-9)
    assert res.accepted[0, 1] and res.quality[0].item() == pytest.approx(0.9, abs=1e-9)
    z = torch.stack([euc.z[1], euc.z[3]])
    cos_q = quality_score(z, euc.calibration.overall, TAU, "cosine")
    assert cos_q[0].item() != pytest.approx(0.7, abs=1e-3)  # the dot-product quality would score these z otherwise


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_margin_accepts_only_rewards_above_it(metric):
    # q: .7 -> .9 (r = .2 with G = 1); rejected rule unchanged: r < 0 still joins Bad
    table = {(0,): (0.7, 0.5), (0, 1): (0.9, 0.8), (0, 2): (0.6, 0.8)}
    case = TableCase(3, table, metric=metric)
    present = torch.tensor([[True, False, False]])
    for margin, accepted in ((0.0, True), (0.19, True), (0.21, False)):
        res = select_modalities(case.fuse, case.tokens(), present, case.calibration, temperature=TAU, margin=margin)
        assert res.accepted[0, 1].item() is accepted, margin
        assert res.rejected[0, 2] and not res.rejected[0, 1]  # 0 < r <= margin: neither accepted nor rejected
        assert res.unused[0, 1].item() is (not accepted)
    with pytest.raises(ValueError, match="margin"):
        select_modalities(case.fuse, case.tokens(), present, case.calibration, margin=-0.1)


# ---------------------------------------------------------------------------------------------------- batched
@pytest.mark.parametrize(
    "M, seed, metric, margin",
    [
        (3, 0, "cosine", 0.0),
        (3, 1, "euclidean", 0.0),
        (4, 2, "cosine", 0.0),
        (4, 3, "cosine", 0.0),
        (5, 4, "cosine", 0.0),
        (5, 5, "euclidean", 0.0),
        (4, 6, "euclidean", 0.0),
        (5, 7, "euclidean", 0.0),
        (5, 4, "cosine", 0.05),
        (5, 5, "euclidean", 0.05),
    ],
)
def test_batched_equals_per_patient_reference(M, seed, metric, margin):
    names, tokens, present, calib, fuse = _random_problem(M, seed, metric=metric)
    res = select_modalities(fuse, tokens, present, calib, temperature=TAU, margin=margin)
    ref = reference_selection(fuse, tokens, present, calib, margin=margin)
    for b, r in enumerate(ref):
        assert res.selected[b].nonzero().squeeze(1).tolist() == sorted(r["S"]), f"patient {b}"
        assert res.steps[b].item() == len(r["accepted"])
        for u, step in r["accepted"]:
            assert res.accepted[b, u] and res.accept_step[b, u] == step
        for u, step in r["rejected"]:
            assert res.rejected[b, u] and res.reject_step[b, u] == step
        assert int(res.accepted[b].sum()) == len(r["accepted"]) and int(res.rejected[b].sum()) == len(r["rejected"])
        evaluated = {(int(t), int(m)) for t, m in (~torch.isnan(res.rewards[:, b])).nonzero().tolist()}
        assert evaluated == set(r["rewards"])
        for (t, m), value in r["rewards"].items():
            assert res.rewards[t, b, m].item() == pytest.approx(value, abs=1e-9)
        assert torch.allclose(res.logits[b], r["logits"], atol=1e-12)
        assert res.quality[b].item() == pytest.approx(r["q"], abs=1e-12)
        assert res.log_ics[b].item() == pytest.approx(r["log_p"], rel=1e-9)
    # the random problem must actually exercise the rules
    assert res.accepted.any() and res.rejected.any()
    assert (res.present.all(1)).any() or M > 3


def test_random_cases_exercise_multi_step_acceptance():
    steps = []
    for seed, M in enumerate((3, 4, 5, 5)):
        names, tokens, present, calib, fuse = _random_problem(M, seed + 10, B=32)
        steps.append(select_modalities(fuse, tokens, present, calib).steps)
    assert int(torch.cat(steps).max()) >= 2


def test_fuse_row_count_is_batch_plus_candidate_evaluations():
    names, tokens, present, calib, fuse = _random_problem(5, 7, B=40, missing=0.7)
    res = select_modalities(fuse, tokens, present, calib)
    ref = reference_selection(MLPFuse(names, 3, 6, seed=7), tokens, present, calib)
    n_evals = sum(len(r["rewards"]) for r in ref)
    B = present.shape[0]
    assert fuse.rows == B + n_evals
    assert fuse.rows == B + int((~torch.isnan(res.rewards)).sum())
    assert fuse.calls == 1 + res.rewards.shape[0]  # one call for O, then one per round


def test_observed_never_dropped_and_candidates_are_the_missing():
    for seed in range(3):
        names, tokens, present, calib, fuse = _random_problem(4, 20 + seed)
        res = select_modalities(fuse, tokens, present, calib)
        assert torch.equal(res.selected & present, present)
        assert not (res.accepted & present).any() and not (res.rejected & present).any()
        assert torch.equal(res.accepted | res.rejected | res.unused | present, torch.ones_like(present))
        assert torch.equal(res.selected, present | res.accepted)
        assert (res.steps <= (~present).sum(1)).all()


def test_nothing_missing_is_plain_prediction():
    names, tokens, present, calib, fuse = _random_problem(4, 3)
    full = torch.ones_like(present)
    res = select_modalities(fuse, tokens, full, calib)
    plain_logits, plain_z = fuse(tokens, full)
    assert torch.equal(res.logits, plain_logits) and torch.equal(res.projection, plain_z)
    assert res.steps.sum() == 0 and res.rewards.shape == (0, present.shape[0], 4)
    assert fuse.calls == 2  # the selection's single call + ours


def test_complete_patients_in_mixed_batch_keep_plain_prediction():
    names, tokens, present, calib, fuse = _random_problem(4, 5)
    present[:5] = True
    res = select_modalities(fuse, tokens, present, calib)
    plain_logits, _ = fuse(tokens, present)
    assert torch.equal(res.logits[:5], plain_logits[:5])
    assert (res.steps[:5] == 0).all() and torch.isnan(res.rewards[:, :5]).all()


def test_no_label_is_used():
    params = inspect.signature(select_modalities).parameters
    assert not any("label" in p or p in ("y", "target") for p in params)
    # the same inputs give the same result whatever else happens (pure function of inputs)
    names, tokens, present, calib, fuse = _random_problem(3, 8)
    a = select_modalities(fuse, tokens, present, calib)
    b = select_modalities(fuse, tokens, present, calib)
    assert torch.equal(a.selected, b.selected) and torch.equal(a.logits, b.logits)


def test_calibration_modalities_order_used_for_tokens():
    names, tokens, present, calib, fuse = _random_problem(3, 9)
    shuffled = {n: tokens[n] for n in reversed(names)}
    a = select_modalities(fuse, tokens, present, calib)
    b = select_modalities(fuse, shuffled, present, calib)
    assert torch.equal(a.selected, b.selected)


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise():
    names, tokens, present, calib, fuse = _random_problem(3, 0, B=6)
    with pytest.raises(ValueError, match="bool"):
        select_modalities(fuse, tokens, present.float(), calib)
    with pytest.raises(ValueError, match="shape"):
        select_modalities(fuse, tokens, present[:, :2], calib)
    empty = present.clone()
    empty[4] = False
    with pytest.raises(ValueError, match=r"\[4\]"):
        select_modalities(fuse, tokens, empty, calib)
    with pytest.raises(ValueError, match="missing"):
        select_modalities(fuse, {n: tokens[n] for n in names[:2]}, present, calib)
    with pytest.raises(ValueError, match="unexpected"):
        select_modalities(fuse, {**tokens, "extra": tokens[names[0]]}, present, calib)
    wrong_classes = SubsetCalibration(calib.prototypes[:, :2], calib.sigma[:, :2], modalities=names)
    with pytest.raises(ValueError, match="classes"):
        select_modalities(fuse, tokens, present, wrong_classes)
    with pytest.raises(ValueError, match="modalities"):
        select_modalities(fuse, tokens, present, calib, modalities=["x", "y", "z"])
    four = SubsetCalibration(torch.zeros(16, 3, 6), torch.ones(16, 3))
    with pytest.raises(ValueError, match="4 modalities"):
        select_modalities(fuse, tokens, present, four)
    with pytest.raises(ValueError, match="batch size"):
        select_modalities(fuse, {**tokens, names[0]: tokens[names[0]][:3]}, present, calib)


def test_non_finite_fuse_output_raises():
    names, tokens, present, calib, fuse = _random_problem(3, 0, B=6)

    def nan_fuse(tok, subset):
        logits, z = fuse(tok, subset)
        return logits * float("nan"), z

    with pytest.raises(ValueError, match="non-finite"):
        select_modalities(nan_fuse, tokens, present, calib)


# ---------------------------------------------------------------------------------------------------- records
def test_calibration_fallback_flags_exactly_patients_scored_on_fallback_pairs():
    names, tokens, present, calib, fuse = _random_problem(3, 4, B=32)
    plain = select_modalities(fuse, tokens, present, calib)
    assert not plain.calibration_fallback.any()
    fallback = torch.zeros_like(calib.fallback)
    fallback[7] = True  # the all-modality subset fell back for every class
    flagged_calib = SubsetCalibration(calib.prototypes, calib.sigma, calib.overall, modalities=names,
                                      fallback=fallback)
    res = select_modalities(fuse, tokens, present, flagged_calib)
    assert torch.equal(res.selected, plain.selected)  # the flag never changes a decision
    # flagged iff the full set was scored: all observed, or a candidate evaluated at a round t with |O| + t = 2
    scored_full = present.all(1).clone()
    for t in range(plain.rewards.shape[0]):
        evaluated = torch.isfinite(plain.rewards[t]).any(1)
        scored_full |= evaluated & (present.sum(1) + t == 2)
    assert 0 < int(scored_full.sum()) < len(scored_full)
    assert torch.equal(res.calibration_fallback, scored_full)
    records = selection_records(res, names)
    assert [r["calibration_fallback"] for r in records] == scored_full.tolist()
    from monai_dymo.report import report_rows

    _, rows = report_rows(records, names)
    assert [r["calibration_fallback"] for r in rows] == scored_full.long().tolist()  # a report column too


def test_records_format_and_reasons():
    names, tokens, present, calib, fuse = _random_problem(4, 2, B=8)
    res = select_modalities(fuse, tokens, present, calib)
    reasons = {n: ["observed" if present[b, i] else "file not found: x" for b in range(8)] for i, n in enumerate(names)}
    ids = [f"p{b}" for b in range(8)]
    records = selection_records(res, names, patient_ids=ids, reasons=reasons)
    keys = {"patient_id", "observed", "recovered", "selected", "accepted", "rejected", "unused", "quality",
            "log_ics", "ics", "prediction", "probability", "probabilities", "steps", "reasons", "error",
            "calibration_fallback", "rewards", "trajectory"}
    probs = torch.softmax(res.logits, -1)
    for b, rec in enumerate(records):
        assert set(rec) == keys and rec["patient_id"] == ids[b] and rec["error"] is None
        assert rec["observed"] == [n for i, n in enumerate(names) if present[b, i]]
        assert rec["recovered"] == [n for i, n in enumerate(names) if not present[b, i]]
        assert rec["steps"] == len(rec["accepted"]) == int(res.steps[b])
        assert [a["step"] for a in rec["accepted"]] == list(range(rec["steps"]))
        assert rec["prediction"] == int(res.logits[b].argmax())
        assert rec["probability"] == pytest.approx(float(probs[b].max()), rel=1e-6)
        assert rec["probabilities"] == pytest.approx(probs[b].tolist(), rel=1e-6)
        assert rec["ics"] == pytest.approx(math.exp(rec["log_ics"]))
        assert rec["reasons"] == {n: reasons[n][b] for n in names}
        assert sorted(rec["unused"] + [a["modality"] for a in rec["accepted"] + rec["rejected"]]) == sorted(
            rec["recovered"]
        )
    import json

    json.dumps(records, allow_nan=False)  # JSON-serialisable
    with pytest.raises(ValueError):
        selection_records(res, names[:3])


def test_expand_marks_excluded_patients():
    names, tokens, present, calib, fuse = _random_problem(3, 1, B=4)
    res = select_modalities(fuse, tokens, present, calib)
    full_present = torch.zeros(6, 3, dtype=torch.bool)
    index = torch.tensor([0, 2, 3, 5])
    full_present[index] = present
    big = res.expand(index, 6, full_present, "no modality observed")
    assert isinstance(big, SelectionResult) and big.batch_size == 6
    assert torch.isnan(big.logits[[1, 4]]).all() and torch.equal(big.logits[index], res.logits)
    records = selection_records(big, names)
    assert records[1]["error"] == "no modality observed" and records[1]["prediction"] is None
    assert records[1]["observed"] == [] and records[1]["recovered"] == [] and records[1]["unused"] == []
    assert records[2]["error"] is None and records[2]["prediction"] == int(res.logits[1].argmax())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    names, tokens, present, calib, fuse = _random_problem(4, 6)
    cpu = select_modalities(fuse, tokens, present, calib)
    fuse.w = {k: v.cuda() for k, v in fuse.w.items()}
    fuse.bias, fuse.head, fuse.proj = fuse.bias.cuda(), fuse.head.cuda(), fuse.proj.cuda()
    gpu = select_modalities(fuse, {k: v.cuda() for k, v in tokens.items()}, present.cuda(), calib)
    assert torch.equal(gpu.selected.cpu(), cpu.selected)
    assert torch.allclose(gpu.logits.cpu(), cpu.logits, atol=1e-9)
