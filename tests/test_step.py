"""The one DyMo step (run_dymo): same decision as select_modalities, the comparison fields against direct fuse
calls, patients with nothing observed, hiding, recovery, refer and the result's expand / to."""

from __future__ import annotations

import math

import pytest
import torch

from monai_dymo.selection import SelectionResult, select_modalities
from monai_dymo.step import NO_MODALITY_ERROR, class_or_missing, run_dymo, zero_missing
from tests.toy_fusion import ConstantRecovery


def _batch(names, B=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, 4, generator=g) for n in names}
    present = torch.rand(B, len(names), generator=g) >= 0.5
    present[torch.arange(B), torch.randint(0, len(names), (B,), generator=g)] = True
    return x, present


def _one_hot(i, rows, M):
    subset = torch.zeros(rows, M, dtype=torch.bool)
    subset[:, i] = True
    return subset


def test_same_decision_as_select_modalities(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities)
    for margin in (0.0, 0.02):
        res = run_dymo(net, calib, x, present, margin=margin)
        with torch.no_grad():
            ref = select_modalities(net.fuse, net.encode(x), present, calib, margin=margin)
        for field in ("selected", "logits", "accepted", "rejected", "accept_step", "steps", "quality", "log_ics"):
            assert torch.equal(getattr(res, field), getattr(ref, field)), field
        assert res.errors is None and res.discard_logits is None and res.alone_logits is None
    assert res.accepted.any() or res.rejected.any()  # the case exercises candidates


def test_compare_alone_and_prefix_fields_match_direct_fuse_calls(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, seed=2)
    res = run_dymo(net, calib, x, present, compare=True, alone=True, prefixes=True)
    B, M = present.shape
    with torch.no_grad():
        tokens = net.encode(x)
        torch.testing.assert_close(res.discard_logits, net.fuse(tokens, present)[0])
        torch.testing.assert_close(res.all_recovered_logits, net.fuse(tokens, torch.ones_like(present))[0])
        for i in range(M):
            alone = net.fuse(tokens, _one_hot(i, B, M))[0]
            seen = present[:, i]
            torch.testing.assert_close(res.alone_logits[seen, i], alone[seen])
            assert torch.isnan(res.alone_logits[~seen, i]).all()  # a recovery is never judged alone
        for b in range(B):
            order = sorted((int(res.accept_step[b, m]), m) for m in range(M) if res.accepted[b, m])
            subset = present[b].clone()
            for k in range(M + 1):
                row = res.prefix_logits[b, k]
                if k > int(res.steps[b]):
                    assert torch.isnan(row).all()
                    continue
                if k:
                    subset[order[k - 1][1]] = True
                one = {n: t[b : b + 1] for n, t in tokens.items()}
                torch.testing.assert_close(row, net.fuse(one, subset[None])[0][0])
            torch.testing.assert_close(res.prefix_logits[b, int(res.steps[b])], res.logits[b])  # last prefix: final
    assert class_or_missing(res.alone_logits).tolist() == [
        [int(res.alone_logits[b, i].argmax()) if present[b, i] else -1 for i in range(M)] for b in range(B)
    ]


def test_fuse_with_index_keyword_gives_the_same_fields(toy_fusion):
    """A ``fuse`` taking ``index`` gets the extra rows as patient indices instead of token copies."""
    net, calib = toy_fusion
    x, present = _batch(net.modalities, seed=3)
    calls = []

    class Indexed(torch.nn.Module):
        modalities, num_classes, proj_dim = net.modalities, net.num_classes, net.proj_dim

        def encode(self, inputs):
            return net.encode(inputs)

        def fuse(self, tokens, subset, index=None):
            calls.append(index is not None)
            return net.fuse(tokens if index is None else {n: t[index] for n, t in tokens.items()}, subset)

    a = run_dymo(Indexed(), calib, x, present, compare=True, alone=True, prefixes=True)
    b = run_dymo(net, calib, x, present, compare=True, alone=True, prefixes=True)
    assert any(calls)
    for field in ("logits", "discard_logits", "all_recovered_logits", "alone_logits", "prefix_logits"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), equal_nan=True)


def test_patients_with_nothing_observed_get_nan_rows_and_an_error(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, B=8, seed=4)
    present[[2, 5]] = False
    res = run_dymo(net, calib, x, present, compare=True, alone=True, prefixes=True, keep_inputs=True)
    keep = [0, 1, 3, 4, 6, 7]
    ref = run_dymo(net, calib, {n: t[keep] for n, t in x.items()}, present[keep], compare=True, alone=True,
                   prefixes=True)
    assert res.errors == [None, None, NO_MODALITY_ERROR, None, None, NO_MODALITY_ERROR, None, None]
    for field in ("logits", "discard_logits", "all_recovered_logits", "alone_logits", "prefix_logits"):
        full = getattr(res, field)
        assert full.shape[0] == 8 and torch.isnan(full[[2, 5]]).all(), field
        torch.testing.assert_close(full[keep], getattr(ref, field), equal_nan=True)
    assert torch.equal(res.present, present) and not res.selected[[2, 5]].any()
    assert torch.equal(res.inputs["ct"], x["ct"])  # as given for everybody (nothing recovered here)
    # a batch where nobody has anything observed
    none = run_dymo(net, calib, x, torch.zeros_like(present), compare=True, alone=True, prefixes=True)
    assert none.errors == [NO_MODALITY_ERROR] * 8 and torch.isnan(none.logits).all()
    assert none.alone_logits.shape == (8, 3, 3) and torch.isnan(none.prefix_logits).all()
    assert class_or_missing(none.discard_logits).tolist() == [-1] * 8


def test_hide_missing_zeroes_the_missing_modalities_before_recovery_and_encoding(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, seed=5)
    rec = ConstantRecovery()
    run_dymo(net, calib, x, present, recovery=rec, hide_missing=True)
    for i, n in enumerate(net.modalities):
        assert (rec.seen[-1][n][~present[:, i]] == 0).all()
        assert torch.equal(rec.seen[-1][n][present[:, i]], x[n][present[:, i]])
    net.encoded.clear()
    hidden = run_dymo(net, calib, x, present, hide_missing=True)  # no recovery: the zeros are encoded
    assert torch.equal(net.encoded[0]["pet"], zero_missing(x, present)["pet"])
    with torch.no_grad():
        ref = select_modalities(net.fuse, net.encode(zero_missing(x, present)), present, calib)
    assert torch.equal(hidden.logits, ref.logits)


def test_recovery_fills_only_missing_and_is_checked(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, seed=6)
    rec = ConstantRecovery(0.25)
    net.encoded.clear()
    res = run_dymo(net, calib, x, present, recovery=rec, keep_inputs=True)
    assert len(net.encoded) == 1  # encoders run once
    for i, n in enumerate(net.modalities):
        seen = net.encoded[0][n]
        assert torch.equal(seen[present[:, i]], x[n][present[:, i]])  # observed kept bit for bit
        assert (seen[~present[:, i]] == 0.25).all()
        assert torch.equal(res.inputs[n], seen)
    calls = len(rec.seen)
    run_dymo(net, calib, x, torch.ones_like(present), recovery=rec)
    assert len(rec.seen) == calls  # nothing missing: no recovery
    with pytest.raises(ValueError, match="shape"):
        run_dymo(net, calib, x, present, recovery=lambda inp, p: {k: v[:, :2] for k, v in inp.items()})
    with pytest.raises(ValueError, match="did not return"):
        run_dymo(net, calib, x, present, recovery=lambda inp, p: {"ct": inp["ct"]})
    with pytest.raises(ValueError, match="recovery modalities"):
        run_dymo(net, calib, x, present, recovery=ConstantRecovery(names=("pet", "ct", "clin")))


def test_input_checks(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities)
    with pytest.raises(ValueError, match="lack modalities"):
        run_dymo(net, calib, {k: v for k, v in x.items() if k != "pet"}, present)
    with pytest.raises(ValueError, match="batch size"):
        run_dymo(net, calib, {**x, "pet": x["pet"][:3]}, present)
    with pytest.raises(ValueError, match="present must be"):
        run_dymo(net, calib, x, present[:, :2])
    with pytest.raises(ValueError, match="present must be"):
        run_dymo(net, calib, x, present.float())
    assert torch.equal(run_dymo(net, calib, x, present.long()).logits, run_dymo(net, calib, x, present).logits)


def test_refer_fields_follow_the_rule(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, B=10, seed=7)
    present[4] = False
    res = run_dymo(net, calib, x, present)
    assert res.refer is None and res.refer_reasons is None
    prob = res.probabilities().amax(-1)
    threshold = float(prob[torch.isfinite(prob)].median())
    rule = {"threshold": threshold, "alpha": 0.1, "delta": 0.1}
    res = run_dymo(net, calib, x, present, refer_rule=rule)
    for b in range(10):
        expected = not (math.isfinite(float(prob[b])) and float(prob[b]) >= threshold)
        assert bool(res.refer[b]) == expected
    assert res.refer_reasons[4] == "not processed" and all(res.refer_reasons)


def test_expand_and_to_carry_the_new_fields(toy_fusion):
    net, calib = toy_fusion
    x, present = _batch(net.modalities, B=4, seed=8)
    rule = {"threshold": 0.0, "alpha": 0.1, "delta": 0.1}
    res = run_dymo(net, calib, x, present, compare=True, alone=True, prefixes=True, keep_inputs=True,
                   refer_rule=rule)
    rows = torch.tensor([0, 2, 3, 5])
    full = torch.zeros(6, 3, dtype=torch.bool)
    full[rows] = present
    big = res.expand(rows, 6, full, "left out")
    assert big.errors == [None, "left out", None, None, "left out", None]
    assert torch.isnan(big.alone_logits[[1, 4]]).all()
    torch.testing.assert_close(big.prefix_logits[rows], res.prefix_logits, equal_nan=True)
    assert big.refer.tolist() == [False, True, False, False, True, False]
    assert big.refer_reasons[1] == "not processed" and big.refer_reasons[0] == res.refer_reasons[0]
    assert big.inputs["ct"].shape == (6, 4) and torch.equal(big.inputs["ct"][[0, 2, 3, 5]], res.inputs["ct"])
    moved = big.to("cpu")
    assert isinstance(moved, SelectionResult) and moved.inputs["pet"].device.type == "cpu"
    torch.testing.assert_close(moved.discard_logits, big.discard_logits, equal_nan=True)
