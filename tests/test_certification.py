"""Held-out guarantees: exact binomial tests, the margin certification (fallback and fixed sequence), the refer
threshold, the outcome vectors against the selection itself, persistence with the calibration, and the inferer's use of
them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_dymo.calibration import SubsetCalibration, fit_calibration
from monai_dymo.certification import (
    DEFAULT_MARGINS,
    binomial_cdf,
    binomial_sf,
    certify,
    certify_margin,
    clopper_pearson_upper,
    collect_outcomes,
    fixes_breaks_pvalue,
    min_sample_size,
    outcomes_at_margin,
    refer_decisions,
    refer_for_margin,
    refer_threshold,
    resolve_margin,
    risk_pvalue,
)
from monai_dymo.inferers import DyMoInferer
from monai_dymo.selection import select_modalities


# ---------------------------------------------------------------------------------------------------- binomial tails
def test_binomial_tails_match_hand_computed_values():
    # Bin(4, 1/2): P(X >= 3) = (4 + 1) / 16, P(X <= 1) = (1 + 4) / 16
    assert binomial_sf(3, 4, 0.5) == pytest.approx(5 / 16, abs=1e-15)
    assert binomial_cdf(1, 4, 0.5) == pytest.approx(5 / 16, abs=1e-15)
    assert binomial_sf(0, 4, 0.5) == 1.0 and binomial_sf(5, 4, 0.5) == 0.0
    # Bin(10, 0.1): P(X <= 0) = 0.9^10, P(X <= 1) = 0.9^10 + 10 * 0.1 * 0.9^9
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10, rel=1e-12)
    assert binomial_cdf(1, 10, 0.1) == pytest.approx(0.9**10 + 0.9**9, rel=1e-12)
    # Bin(3, 0.2): P(X >= 2) = 3 * 0.04 * 0.8 + 0.008
    assert binomial_sf(2, 3, 0.2) == pytest.approx(0.104, rel=1e-12)


def test_sign_test_p_values():
    assert fixes_breaks_pvalue(5, 0) == pytest.approx(1 / 32)  # all 5 discordant patients fixed
    assert fixes_breaks_pvalue(4, 1) == pytest.approx(6 / 32)  # P(Bin(5, 1/2) >= 4)
    assert fixes_breaks_pvalue(6, 1) == pytest.approx(8 / 128)
    assert fixes_breaks_pvalue(0, 0) == 1.0  # no evidence
    assert fixes_breaks_pvalue(2, 5) > 0.5  # breaks more than it fixes: never significant
    assert min_sample_size(0.1, 0.5) == 4  # 0.5**4 = 0.0625 <= 0.1 < 0.5**3
    assert min_sample_size(0.1, 0.01) == 230  # 0.99**230 <= 0.1 < 0.99**229


def test_risk_p_value_and_clopper_pearson_bound():
    assert risk_pvalue(0, 230, 0.01) <= 0.1 < risk_pvalue(0, 229, 0.01)
    assert risk_pvalue(1, 2, 0.5) == pytest.approx(0.75)
    assert risk_pvalue(3, 0, 0.1) == 1.0
    ub = clopper_pearson_upper(0, 230, 0.1)  # (1 - ub)^230 = 0.1
    assert ub == pytest.approx(1 - 0.1 ** (1 / 230), rel=1e-6)
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0


# ---------------------------------------------------------------------------------------------------- margin LTT
def _outcomes(fixed: int, broken: int, same_right: int = 10, same_wrong: int = 2):
    """Correctness vectors: ``fixed`` wrong -> right, ``broken`` right -> wrong, and concordant patients."""
    base = [False] * fixed + [True] * broken + [True] * same_right + [False] * same_wrong
    dymo = [True] * fixed + [False] * broken + [True] * same_right + [False] * same_wrong
    return np.array(base), np.array(dymo)


def _stack(*pairs, n=None):
    n = max(len(b) for b, _ in pairs)
    base = np.ones((len(pairs), n), dtype=bool)
    dymo = np.ones((len(pairs), n), dtype=bool)
    for k, (b, d) in enumerate(pairs):
        base[k, : len(b)], dymo[k, : len(d)] = b, d
    return base, dymo


def _hand_case() -> tuple[np.ndarray, list[np.ndarray]]:
    """22 patients: 6 wrong and 16 right without recoveries; at the margins 0.3, 0.2, 0.1, 0.0 accepting fixes / breaks
    5/0, 6/1, 6/6, 6/0 of them."""
    base = np.array([False] * 6 + [True] * 6 + [True] * 10)
    at = []
    for fixed, broken in ((5, 0), (6, 1), (6, 6), (6, 0)):
        d = base.copy()
        d[:fixed] = True
        d[6 : 6 + broken] = False
        at.append(d)
    return base, at


def test_certify_margin_hand_case_stops_at_first_failure():
    # one set of patients; the margins accept more and more: 5/0, 6/1, 6/6 (fixed / broken), then a lenient margin
    # that would look fine again is never tested
    base, at = _hand_case()
    out = certify_margin(base, np.stack(at), [0.3, 0.2, 0.1, 0.0], delta=0.1, procedure="fixed_sequence")
    statuses = [t["status"] for t in out["tests"]]
    assert statuses == ["certified", "certified", "not certified", "not tested"]
    assert [(t["fixed"], t["broken"]) for t in out["tests"]] == [(5, 0), (6, 1), (6, 6), (6, 0)]
    assert out["tests"][0]["p_value"] == pytest.approx(1 / 32)
    assert out["tests"][1]["p_value"] == pytest.approx(8 / 128)
    assert out["margin"] == 0.2  # the most lenient certified before the stop, not 0.0
    # a stricter level certifies only the first
    assert certify_margin(base, np.stack(at), [0.3, 0.2, 0.1, 0.0], 0.05, procedure="fixed_sequence")["margin"] == 0.3


def test_certify_margin_fallback_hand_case_passes_level_on_only_after_a_certification():
    """Fallback at delta 0.1, weights 1/4: 0.3 (5/0, p 1/32) at 0.025 is not certified and passes nothing on; 0.2
    (6/1, p 1/16) at 0.025 not; 0.1 (6/6) not; 0.0 (6/0, p 1/64) at 0.025 certified. With weights (0.5, 0.5, 0, 0):
    0.3 at 0.05 certified, 0.2 at 0.05 + 0.05 = 0.1 certified (p 1/16), 0.1 at 0.1 not, 0.0 at 0 not."""
    base, at = _hand_case()
    out = certify_margin(base, np.stack(at), [0.3, 0.2, 0.1, 0.0], delta=0.1)
    assert out["procedure"] == "fallback" and out["weights"] == [0.25] * 4
    assert [t["level"] for t in out["tests"]] == pytest.approx([0.025] * 4)
    assert [t["status"] for t in out["tests"]] == ["not certified"] * 3 + ["certified"]
    assert out["margin"] == 0.0
    out = certify_margin(base, np.stack(at), [0.3, 0.2, 0.1, 0.0], 0.1, weights=[0.5, 0.5, 0, 0])
    assert [t["level"] for t in out["tests"]] == pytest.approx([0.05, 0.1, 0.1, 0.0])
    assert [t["status"] for t in out["tests"]] == ["certified", "certified", "not certified", "not certified"]
    assert out["margin"] == 0.2


def test_no_certified_margin_when_accepting_breaks_more_than_it_fixes():
    base, dymo = _outcomes(fixed=3, broken=8)
    out = certify_margin(base, np.stack([dymo, dymo]), [0.2, 0.0], delta=0.1)
    assert math.isinf(out["margin"])  # recoveries are never accepted
    assert [t["status"] for t in out["tests"]] == ["not certified", "not certified"]
    out = certify_margin(base, np.stack([dymo, dymo]), [0.2, 0.0], delta=0.1, procedure="fixed_sequence")
    assert math.isinf(out["margin"])
    assert out["tests"][0]["status"] == "not certified" and out["tests"][1]["status"] == "not tested"
    # equal fixes and breaks are not enough either
    base, dymo = _outcomes(fixed=7, broken=7)
    assert math.isinf(certify_margin(base, dymo[None], [0.0])["margin"])


def test_margins_without_power_are_not_certified_and_pass_nothing_on():
    """A margin with too few discordant patients to reject at its level is simply not certified: the fallback goes on
    with the next margin's own level; the fixed sequence stops there. Margins >= 1 (no reward exceeds them) are left
    out before the data."""
    base = np.array([False] * 8 + [True] * 10)
    strict = base.copy()
    strict[:2] = True  # 2 discordant patients: p >= 1/4 whatever they are
    lenient = base.copy()
    lenient[:8] = True  # 8 fixed, 0 broken: p = 1/256
    at = np.stack([base, base, strict, lenient])
    out = certify_margin(base, at, [1.0, 0.5, 0.2, 0.0], delta=0.1)
    assert [t["status"] for t in out["tests"]] == ["not certified", "not certified", "not certified", "certified"]
    assert out["weights"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3]) and out["tests"][0]["level"] == 0
    assert out["tests"][2]["min_n"] == 5  # 2**-5 <= 0.1 / 3 < 2**-4
    assert out["margin"] == 0.0
    fs = certify_margin(base, at, [1.0, 0.5, 0.2, 0.0], delta=0.1, procedure="fixed_sequence")
    assert [t["status"] for t in fs["tests"]] == ["skipped", "not certified", "not tested", "not tested"]
    assert math.isinf(fs["margin"])
    with pytest.raises(ValueError, match="decreasing"):
        certify_margin(base, np.stack([base, base]), [0.0, 0.2])
    with pytest.raises(ValueError, match="weights"):
        certify_margin(base, np.stack([base, base]), [0.2, 0.0], weights=[0.7, 0.7])


# ---------------------------------------------------------------------------------------------------- refer threshold
def test_refer_threshold_controls_the_error_among_patients_not_referred():
    """Synthetic: confidence c ~ U(0.2, 1), correct with probability c; the true error among c >= t is (1 - t) / 2.
    Over repeated held-out draws the certified threshold violates alpha at most about delta of the time."""
    alpha, delta, trials = 0.1, 0.1, 120
    rng = np.random.default_rng(0)
    violations, coverages, none = 0, [], 0
    for _ in range(trials):
        c = rng.uniform(0.2, 1.0, 1500)
        ok = rng.random(1500) < c
        out = refer_threshold(c, ok, alpha, delta)
        t = out["threshold"]
        none += math.isinf(t)  # nothing certified (everybody referred) is safe, just useless
        violations += math.isfinite(t) and (1 - t) / 2 > alpha
        coverages.append(out["coverage"])
    assert violations / trials <= delta + 0.05
    assert none / trials <= 0.05
    # and it is not vacuous: the exact best threshold is 0.8 (coverage 25 %), the certified one close to it
    assert 0.15 < np.mean(coverages) <= 0.26


def test_refer_threshold_none_certified_refers_everybody():
    c = np.linspace(0.5, 1.0, 500)
    out = refer_threshold(c, np.zeros(500, dtype=bool), alpha=0.1, delta=0.1)
    assert math.isinf(out["threshold"]) and out["coverage"] == 0.0 and out["error_not_referred"] is None
    decisions = refer_decisions([0.99, None], {"threshold": out["threshold"], "alpha": 0.1, "delta": 0.1})
    assert decisions[0][0] is True and "no confidence threshold" in decisions[0][1]
    assert decisions[1] == (True, "not processed")
    rule = {"threshold": 0.9, "alpha": 0.1, "delta": 0.1}
    assert [r for r, _ in refer_decisions([0.95, 0.9, 0.5], rule)] == [False, False, True]


# ---------------------------------------------------------------------------------------------------- outcomes
NAMES = ("a", "b", "c", "d")
C = 3


class ToyNet(nn.Module):
    def __init__(self, in_dim=4, d=8, proj_dim=5):
        super().__init__()
        self.modalities = NAMES
        self.num_classes = C
        self.proj_dim = proj_dim
        self.enc = nn.ModuleDict({n: nn.Linear(in_dim, d) for n in NAMES})
        self.head = nn.Linear(d, C)
        self.proj = nn.Linear(d, proj_dim)

    def encode(self, inputs):
        return {n: self.enc[n](inputs[n]).unsqueeze(1) for n in self.modalities}

    def fuse(self, tokens, subset):
        w = subset.float()
        h = torch.tanh(sum(tokens[n][:, 0] * w[:, i : i + 1] for i, n in enumerate(self.modalities)))
        return self.head(h), F.normalize(self.proj(h), dim=-1)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    net = ToyNet().eval()
    g = torch.Generator().manual_seed(1)
    train = [{**{n: torch.randn(24, 4, generator=g) for n in NAMES}, "label": torch.arange(24) % C} for _ in range(2)]
    calib = fit_calibration(net.encode, net.fuse, train, modalities=NAMES, num_classes=C, progress=False)
    held = []
    for _ in range(4):
        present = torch.rand(32, len(NAMES), generator=g) > 0.6
        present[~present.any(1), 0] = True
        held.append({**{n: torch.randn(32, 4, generator=g) for n in NAMES}, "present": present,
                     "label": torch.randint(0, C, (32,), generator=g)})
    return net, calib, held


def test_outcomes_give_the_selection_at_every_margin(toy):
    """One margin-0 run per patient gives DyMo's prediction at any margin: equal to running the selection with it."""
    net, calib, held = toy
    out = collect_outcomes(net, calib, held, progress=False)
    assert out["prefix_prediction"].shape == (128, len(NAMES) + 1)
    accepted_any = 0
    for margin in (0.0, 0.01, 0.05, 0.1, 0.3, math.inf):
        pred, prob, k = outcomes_at_margin(out, margin)
        ref_pred, ref_prob, ref_steps = [], [], []
        for batch in held:
            x = {n: batch[n] * batch["present"][:, i, None] for i, n in enumerate(NAMES)}
            res = select_modalities(net.fuse, net.encode(x), batch["present"], calib, margin=margin)
            ref_pred.append(res.logits.argmax(-1))
            ref_prob.append(res.probabilities().amax(-1))
            ref_steps.append(res.steps)
        assert np.array_equal(pred, torch.cat(ref_pred).numpy()), margin
        np.testing.assert_allclose(prob, torch.cat(ref_prob).numpy(), rtol=1e-5)
        assert np.array_equal(k, torch.cat(ref_steps).numpy()), margin
        accepted_any += int((k > 0).sum())
    assert accepted_any > 0  # the case exercises acceptances
    # prefix 0 is discarding the missing modalities
    base = torch.cat([net.fuse(net.encode({n: b[n] * b["present"][:, i, None] for i, n in enumerate(NAMES)}),
                               b["present"])[0].argmax(-1) for b in held])
    assert np.array_equal(out["prefix_prediction"][:, 0], base.numpy())


def test_certification_is_saved_with_the_calibration_and_old_files_still_load(toy, tmp_path):
    net, calib, held = toy
    cert = certify(collect_outcomes(net, calib, held, progress=False), DEFAULT_MARGINS, 0.1, source="toy")
    assert cert["num_patients"] == 128 and len(cert["tests"]) == len(DEFAULT_MARGINS)
    for t in cert["tests"]:
        assert {"margin", "fixed", "broken", "n", "p_value", "status"} <= set(t)
    old = tmp_path / "old.pt"
    calib.save(old)  # no certification
    assert SubsetCalibration.load(old).certification is None
    calib.certification = cert
    new = tmp_path / "new.pt"
    calib.save(new)
    back = SubsetCalibration.load(new)
    calib.certification = None
    assert back.certification["margin"] == cert["margin"]
    assert back.certification["tests"] == cert["tests"]
    assert torch.equal(back.certification["outcomes"]["prefix_prediction"],
                       torch.as_tensor(cert["outcomes"]["prefix_prediction"]))
    assert back.to("cpu").certification is back.certification


def test_inferer_margin_options_and_refer_fields(toy):
    net, calib, held = toy
    with pytest.raises(ValueError, match="certif"):
        DyMoInferer(calib, margin="certified")  # the file has no certification
    assert resolve_margin(0, None) == (0.0, "method rule")
    assert resolve_margin("0.2", None) == (0.2, "fixed")
    cert = certify(collect_outcomes(net, calib, held, progress=False), DEFAULT_MARGINS, 0.1)
    cert["margin"] = math.inf  # as when nothing is certified
    c2 = SubsetCalibration.from_state_dict({**calib.state_dict(), "certification": cert})
    inferer = DyMoInferer(c2, margin="certified", refer_alpha=0.5, refer_delta=0.2, refer_guarantee="pac",
                          refer_per_class=False)
    assert inferer.margin == math.inf and inferer.margin_source == "certified"
    batch = held[0]
    x = {n: batch[n] for n in NAMES}
    inferer(x, net, present=batch["present"])
    assert not inferer.last_result.accepted.any()  # an infinite margin never accepts
    records = inferer.last_records()
    rule = inferer.refer_rule
    # union bound over the margins that could be in force, shares fixed before the data: inf 1/2, each tested one 1/(2K)
    assert rule["test_level"] == pytest.approx(0.2 * 0.5)
    for rec in records:
        assert rec["margin"] == "inf" and rec["margin_source"] == "certified"
        assert rec["refer"] == (not rec["probability"] >= rule["threshold"])
        assert rec["refer_alpha"] == 0.5 and rec["refer_delta"] == 0.2 and rec["refer_reason"]
    # a typed margin that the certification tested on these patients may have been read off its table: the refer
    # rule pays for the choice as for the certified one, unless the margin is declared independent of them
    fixed = DyMoInferer(c2, margin=0.0, refer_alpha=0.5, refer_delta=0.2, refer_guarantee="pac",
                        refer_per_class=False)
    assert fixed.margin_source == "method rule" and fixed.refer_rule["margin_on_holdout"]
    assert fixed.refer_rule["test_level"] == pytest.approx(0.2 * 0.5 / len(DEFAULT_MARGINS))
    assert resolve_margin(0.0, cert, margin_source="independent") == (0.0, "independent")
    independent = refer_for_margin(cert, 0.0, "independent", 0.5, 0.2)
    assert independent["test_level"] == 0.2 and not independent["margin_on_holdout"]
    assert refer_for_margin(cert, 0.12, "fixed", 0.5, 0.2)["test_level"] == 0.2  # not a tested margin
    assert refer_for_margin(None, 0.0, "fixed") is None
    # without refer_alpha no refer fields, but the margin is always reported
    rec = DyMoInferer(c2, margin=0.1)
    rec(x, net, present=batch["present"])
    r0 = rec.last_records()[0]
    assert r0["margin_source"] == "fixed" and "refer" not in r0


def test_report_writer_shows_margin_and_refer(toy, tmp_path):
    """CSV columns, the trust summary JSON and the cohort page's guarantees section with the risk-coverage figure."""
    import json

    import pandas as pd

    from monai_dymo.handlers import SelectionReportWriter

    net, calib, held = toy
    cert = certify(collect_outcomes(net, calib, held, progress=False), DEFAULT_MARGINS, 0.1)
    c2 = SubsetCalibration.from_state_dict({**calib.state_dict(), "certification": cert})
    inferer = DyMoInferer(c2, margin=0.0, refer_alpha=0.6, refer_delta=0.2)
    records = []
    for batch in held:
        inferer({n: batch[n] for n in NAMES}, net, present=batch["present"])
        for rec, y in zip(inferer.last_records(), batch["label"].tolist()):
            records.append({**rec, "label": y})
    writer = SelectionReportWriter(output_dir=str(tmp_path), modalities=NAMES, pictures=False)
    paths = writer.write(records)
    df = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(df["refer"]) <= {"yes", "no"} and set(df["margin_source"]) == {"method rule"}
    assert list(df["refer"] == "yes") == [bool(r["refer"]) for r in records]
    trust = json.loads(open(paths["trust"]).read())
    assert trust["margin"] == "0" and trust["margin_source"] == "method rule"
    kept = [r for r in records if not r["refer"]]
    assert trust["refer"]["coverage"] == pytest.approx(len(kept) / len(records))
    if kept:
        err = sum(r["prediction"] != r["label"] for r in kept) / len(kept)
        assert trust["refer"]["error_not_referred"] == pytest.approx(err)
    assert trust["refer"]["alpha"] == 0.6 and trust["refer"]["delta"] == 0.2
    html = open(paths["html"]).read()
    assert 'id="trust"' in html and "risk_coverage.png" in html
    assert (tmp_path / "dymo_report_files" / "risk_coverage.png").stat().st_size > 0
    pages = list((tmp_path / "dymo_report_files" / "patients").glob("*.html"))
    assert pages and all("<b>Refer:</b>" in p.read_text() for p in pages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_outcomes_and_refer_on_cuda_equal_cpu(toy):
    net, calib, held = toy
    cpu = collect_outcomes(net, calib, held, progress=False, drop_observed=0.3, seed=5)
    gpu_net = ToyNet().cuda().eval()
    gpu_net.load_state_dict(net.state_dict())
    gpu = collect_outcomes(gpu_net, calib, held, progress=False, drop_observed=0.3, seed=5)
    assert np.array_equal(cpu["label"], gpu["label"]) and np.array_equal(cpu["missing"], gpu["missing"])
    for margin in (0.0, 0.05, math.inf):
        assert np.array_equal(outcomes_at_margin(cpu, margin)[0], outcomes_at_margin(gpu, margin)[0])
    c2 = SubsetCalibration.from_state_dict({**calib.state_dict(), "certification": certify(gpu)})
    inferer = DyMoInferer(c2, margin="certified", refer_alpha=0.5)
    batch = held[0]
    inferer({n: batch[n].cuda() for n in NAMES}, gpu_net, present=batch["present"].cuda())
    assert all(r["refer"] is not None for r in inferer.last_records())


def test_holdout_part_splits_the_validation_split_in_two():
    from monai_dymo.certification import holdout_indices, holdout_part

    data = list(range(40))
    assert holdout_part(data, None) is data and holdout_part(data, 1.0) is data
    held = list(holdout_part(data, 0.25, seed=3))
    rest = list(holdout_part(data, 0.25, seed=3, part="rest"))
    assert len(held) == 10 and len(rest) == 30 and sorted(held + rest) == data
    assert held == holdout_indices(40, 0.25, 3).tolist()  # the same patients every time
    with pytest.raises(ValueError, match="part"):
        holdout_part(data, 0.5, part="other")
