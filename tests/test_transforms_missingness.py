"""Simulated missingness: rate and mask-CSV pattern modes, keep-at-least-one, reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from monai.utils import set_determinism
from monai_dymo.transforms import (
    LoadModalitiesd,
    RandSimulateMissingModalities,
    RandSimulateMissingModalitiesd,
    is_placeholder,
    read_missing_patterns,
    write_missing_patterns,
)

NAMES = ["m0", "m1", "m2", "m3"]
LOAD = LoadModalitiesd(keys=NAMES, spatial_size=(2, 3), spatial_dims=2)


def _sample(i: int, missing: tuple[str, ...] = ()) -> dict:
    rng = np.random.default_rng(i)
    d = {"patient_id": f"p{i}", "index": i}
    for n in NAMES:
        d[n] = None if n in missing else rng.random((1, 2, 3)).astype(np.float32)
    return LOAD(d)


def _present_matrix(transform, samples) -> np.ndarray:
    return np.stack([transform(s)["present"].numpy() for s in samples])


def test_rate_mode_rate_reproducibility_and_placeholders():
    samples = [_sample(i) for i in range(600)]
    t = RandSimulateMissingModalitiesd(NAMES, rate=0.5)
    a = _present_matrix(t.set_random_state(seed=3), samples)
    b = _present_matrix(t.set_random_state(seed=3), samples)
    c = _present_matrix(t.set_random_state(seed=4), samples)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.any(axis=1).all()
    # drop rate with the keep-one rule: rate - rate**M / M, within ~4 standard errors
    assert abs((1 - a.mean()) - (0.5 - 0.5**4 / 4)) < 0.045

    out = t.set_random_state(seed=3)(samples[0])
    for k, name in enumerate(NAMES):
        if out["present"][k]:
            assert out["modality_reasons"][name] == "observed"
            torch.testing.assert_close(out[name], samples[0][name])
        else:
            assert out["modality_reasons"][name] == "simulated missing: rate 0.5"
            assert is_placeholder(out[name]) and out[name].shape == (1, 2, 3) and float(out[name].abs().max()) == 0.0
    assert samples[0]["present"].all() and samples[0]["modality_reasons"]["m0"] == "observed"  # input untouched


def test_keep_at_least_one_is_uniform_and_can_be_disabled():
    samples = [_sample(i) for i in range(400)]
    kept = _present_matrix(RandSimulateMissingModalitiesd(NAMES, rate=1.0).set_random_state(seed=0), samples)
    assert (kept.sum(axis=1) == 1).all()
    counts = kept.sum(axis=0)
    assert counts.min() >= 60, counts  # 100 expected per modality

    none = RandSimulateMissingModalitiesd(NAMES, rate=1.0, keep_at_least_one=False)(samples[0])
    assert not none["present"].any() and none["error"].startswith("no modality observed: m0=simulated missing")

    # only observed modalities can be dropped and re-kept; already missing ones keep their reason
    partial = _sample(1, missing=("m0", "m1", "m2"))
    out = RandSimulateMissingModalitiesd(NAMES, rate=1.0).set_random_state(seed=0)(partial)
    assert out["present"].tolist() == [False, False, False, True]
    assert out["modality_reasons"]["m0"].startswith("absent")


def test_keep_data_prob_and_array_form():
    s = _sample(0)
    out = RandSimulateMissingModalitiesd(NAMES, rate=1.0, keep_data=True).set_random_state(seed=1)(s)
    dropped = [n for k, n in enumerate(NAMES) if not out["present"][k]]
    assert len(dropped) == 3
    for n in dropped:
        torch.testing.assert_close(out[n], s[n])
        assert out[n].meta["dymo_reason"].startswith("simulated missing") and not is_placeholder(out[n])

    never = RandSimulateMissingModalitiesd(NAMES, rate=1.0, prob=0.0).set_random_state(seed=1)
    assert all(never(_sample(i))["present"].all() for i in range(20))

    arr = RandSimulateMissingModalities(rate=0.5).set_random_state(seed=5)
    present = torch.tensor([True, False, True, True])
    outs = torch.stack([arr(present) for _ in range(200)])
    assert not outs[:, 1].any() and outs.any(dim=1).all() and not outs.all()
    with pytest.raises(ValueError, match=r"rate 1.5 is out of \[0, 1\]"):
        RandSimulateMissingModalities(rate=1.5)


def test_pattern_csv_with_and_without_index_column(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((6, 4)) > 0.4
    masks[~masks.any(axis=1), 0] = True
    with_index = tmp_path / "with_index.csv"
    write_missing_patterns(with_index, masks[::-1], NAMES, indices=list(range(5, -1, -1)))  # rows in reverse order
    no_index = tmp_path / "no_index.csv"
    pd.DataFrame(masks.astype(int), columns=NAMES).to_csv(no_index, index=False)
    for path in (with_index, no_index):
        table = read_missing_patterns(path, NAMES)
        assert sorted(table) == list(range(6))
        for i in range(6):
            np.testing.assert_array_equal(table[i], masks[i])
        t = RandSimulateMissingModalitiesd(NAMES, pattern_csv=path)
        for i in range(6):
            out = t(_sample(i))
            assert out["present"].numpy().tolist() == masks[i].tolist()
            for k, n in enumerate(NAMES):
                expected = "observed" if masks[i, k] else f"simulated missing: pattern {path.name} index {i}"
                assert out["modality_reasons"][n] == expected

    # a pattern never makes a missing modality observed; keep-one still applies
    only_m0 = _sample(2, missing=("m1", "m2", "m3"))
    t = RandSimulateMissingModalitiesd(NAMES, pattern_csv=no_index)
    out = t(dict(only_m0, index=int(np.flatnonzero(~masks[:, 0])[0])))
    assert out["present"].tolist() == [True, False, False, False]


def test_pattern_written_by_the_polymnist_helper(tmp_path):
    patterns = pytest.importorskip("monai_dymo.data.missing_patterns")
    present = patterns.generate_missing_pattern(10, 4, 0.5, seed=0)
    path = tmp_path / "helper.csv"
    patterns.write_pattern_csv(path, present, NAMES)
    t = RandSimulateMissingModalitiesd(NAMES, pattern_csv=path)
    got = np.stack([t(_sample(i))["present"].numpy() for i in range(10)])
    np.testing.assert_array_equal(got, present)


def test_pattern_and_rate_errors(tmp_path):
    bad_value = tmp_path / "bad_value.csv"
    table = pd.DataFrame({"index": [0, 1], "m0": [1, 2], "m1": [1, 1], "m2": [0, 1], "m3": [1, 1]})
    table.to_csv(bad_value, index=False)
    with pytest.raises(ValueError, match=r"row 1 \(line 3\), modality m0: value '2'"):
        RandSimulateMissingModalitiesd(NAMES, pattern_csv=bad_value)
    no_col = tmp_path / "no_col.csv"
    pd.DataFrame({"m0": [1], "m1": [1]}).to_csv(no_col, index=False)
    with pytest.raises(ValueError, match=r"no column for modality \['m2', 'm3'\]"):
        RandSimulateMissingModalitiesd(NAMES, pattern_csv=no_col)
    with pytest.raises(ValueError, match="not found"):
        RandSimulateMissingModalitiesd(NAMES, pattern_csv=tmp_path / "nope.csv")
    ok = tmp_path / "ok.csv"
    write_missing_patterns(ok, np.ones((2, 4), bool), NAMES)
    t = RandSimulateMissingModalitiesd(NAMES, pattern_csv=ok)
    with pytest.raises(ValueError, match=r"index 7 \(patient 'p7'\) is not in"):
        t(_sample(7))
    s = _sample(0)
    s.pop("index")
    with pytest.raises(ValueError, match=r"patient 'p0' has no 'index' key"):
        t(s)
    with pytest.raises(ValueError, match="either rate or pattern_csv"):
        RandSimulateMissingModalitiesd(NAMES, rate=0.2, pattern_csv=ok)
    with pytest.raises(ValueError, match="unknown modality key"):
        RandSimulateMissingModalitiesd(["m0", "m9"], rate=0.2, modalities=NAMES)


def test_reproducible_under_set_determinism_with_dataloader():
    data = [{"patient_id": f"p{i}", "index": i, **{n: np.full((1, 2, 2), i + k + 1.0) for k, n in enumerate(NAMES)}}
            for i in range(6)]
    data = [dict(d, **{n: d[n] + np.arange(4).reshape(1, 2, 2) for n in NAMES}) for d in data]
    transform = Compose([LoadModalitiesd(NAMES), RandSimulateMissingModalitiesd(NAMES, rate=0.5)])

    def run(seed: int) -> torch.Tensor:
        set_determinism(seed)
        loader = DataLoader(Dataset(data, transform), batch_size=3, num_workers=0)
        return torch.cat([torch.cat([b["present"] for b in loader]) for _ in range(3)])

    try:
        first, again, other = run(0), run(0), run(1)
    finally:
        set_determinism(None)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.any(dim=1).all()


def test_rand_prefix_old_names_are_aliases_and_recipes_use_the_new_names():
    from pathlib import Path

    import monai_dymo.transforms as T
    from monai.transforms import RandomizableTransform

    assert issubclass(T.RandSimulateMissingModalitiesd, RandomizableTransform)
    assert T.RandSimulateMissingModalitiesd.__name__ == "RandSimulateMissingModalitiesd"
    assert T.RandSimulateMissingModalities.__name__ == "RandSimulateMissingModalities"
    for old in ("SimulateMissingModalitiesd", "SimulateMissingModalitiesD", "SimulateMissingModalitiesDict"):
        assert getattr(T, old) is T.RandSimulateMissingModalitiesd and old in T.__all__
    assert T.RandSimulateMissingModalitiesD is T.RandSimulateMissingModalitiesDict is T.RandSimulateMissingModalitiesd
    assert T.SimulateMissingModalities is T.RandSimulateMissingModalities
    # the shipped recipes, bundles and notebooks use the Rand names
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("transforms/*.yaml"), *root.glob("bundles/*/configs/*"), *root.glob("notebooks/*.ipynb")]
    assert any("RandSimulateMissingModalitiesd" in f.read_text() for f in files)
    stale = [str(f) for f in files if "SimulateMissingModalities" in f.read_text().replace("RandSimulateMissing", "")]
    assert stale == []
