"""Seeded missing-modality patterns: rates, keep-one rule, determinism, CSV round trip and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_dymo.data.__main__ import main as cli_main
from monai_dymo.data.missing_patterns import (
    expected_missing_rate,
    generate_missing_pattern,
    pattern_filename,
    read_pattern_csv,
    write_pattern_csv,
)
from monai_dymo.transforms import read_missing_patterns, write_missing_patterns

NAMES = ("m0", "m1", "m2", "m3", "m4")


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6, 0.8])
def test_rates_close_to_target(rate):
    n = 40_000
    present = generate_missing_pattern(n, 5, rate, seed=11)
    assert present.dtype == bool and present.shape == (n, 5)
    assert present.any(axis=1).all(), "a row has every modality missing"
    realised = 1.0 - present.mean()
    # keep-one rule: rate - rate**M / M (4 standard errors of a Bernoulli mean over n*M draws ~ 0.005)
    assert abs(realised - expected_missing_rate(rate, 5)) < 0.006
    assert abs(realised - rate) < rate**5 / 5 + 0.006
    # every modality is missing at about the same rate (independent of the modality)
    per_mod = 1.0 - present.mean(axis=0)
    assert np.all(np.abs(per_mod - expected_missing_rate(rate, 5)) < 0.012)
    # independence between modalities away from the keep-one correction: pairwise joint missing ~ rate**2
    if rate <= 0.4:
        assert abs((~present[:, 0] & ~present[:, 1]).mean() - rate**2) < 0.01


def test_keep_one_is_uniform_and_exact_at_rate_one():
    present = generate_missing_pattern(20_000, 5, 1.0, seed=3)
    assert (present.sum(axis=1) == 1).all()
    share = present.mean(axis=0)
    assert np.all(np.abs(share - 0.2) < 0.015), share
    assert generate_missing_pattern(100, 5, 0.0, seed=3).all()


def test_determinism_nesting_and_prefix():
    a = generate_missing_pattern(7000, 5, 0.6, seed=1)
    np.testing.assert_array_equal(a, generate_missing_pattern(7000, 5, 0.6, seed=1))
    assert (a != generate_missing_pattern(7000, 5, 0.6, seed=2)).any()
    # same seed, higher rate: whatever is missing at 0.4 is missing at 0.6
    low = generate_missing_pattern(7000, 5, 0.4, seed=1)
    assert np.all(a <= low), "patterns of one seed must be nested across rates"
    assert (a != low).any()
    # the first rows do not depend on the number of samples
    np.testing.assert_array_equal(generate_missing_pattern(300, 5, 0.6, seed=1), a[:300])


def test_bad_generation_arguments():
    with pytest.raises(ValueError, match="rate"):
        generate_missing_pattern(10, 5, 1.5, seed=0)
    with pytest.raises(ValueError, match="positive"):
        generate_missing_pattern(0, 5, 0.5, seed=0)


def test_csv_round_trip_and_format(tmp_path):
    present = generate_missing_pattern(500, 5, 0.8, seed=0)
    path = write_pattern_csv(tmp_path / pattern_filename(0.8, 0), present, NAMES)
    assert path.name == "missing_rate0.8_seed0.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "index,m0,m1,m2,m3,m4" and len(lines) == 501
    assert lines[1] == "0," + ",".join(str(int(v)) for v in present[0])
    back = read_pattern_csv(path, NAMES)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, present)
    np.testing.assert_array_equal(read_pattern_csv(path), present)
    np.testing.assert_array_equal(read_pattern_csv(path, ["m3", "m0"]), present[:, [3, 0]])


def test_data_and_transforms_share_one_pattern_file_format(tmp_path):
    present = generate_missing_pattern(30, 5, 0.6, seed=2)
    a = write_pattern_csv(tmp_path / "a.csv", present, NAMES)
    b = tmp_path / "b.csv"
    write_missing_patterns(b, present, NAMES)
    assert a.read_text() == b.read_text()
    table = read_missing_patterns(a, NAMES)
    np.testing.assert_array_equal(np.stack([table[i] for i in range(30)]), read_pattern_csv(b))


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.csv", "", "empty"),
        ("header.csv", "index\n0\n", "names no modality"),
        ("dup.csv", "index,m0,m0\n0,1,0\n", "duplicate"),
        ("norows.csv", "index,m0,m1\n", "no sample rows"),
        ("fields.csv", "index,m0,m1\n0,1,0\n1,1\n", r"row 1 \(line 3\): 2 fields, expected 3"),
        ("order.csv", "index,m0,m1\n0,1,0\n2,1,1\n", r"row 1 \(line 3\): index '2', expected 1"),
        ("intindex.csv", "index,m0,m1\n0,1,0\nx,1,1\n", r"row 1 \(line 3\): index 'x' is not an integer"),
        ("repeat.csv", "index,m0,m1\n0,1,0\n0,1,1\n", r"row 1 \(line 3\): index 0 repeats row 0"),
        ("value.csv", "index,m0,m1\n0,1,0\n1,1,yes\n", r"row 1 \(line 3\), modality m1: value 'yes'"),
        ("allmissing.csv", "index,m0,m1\n0,1,0\n1,0,0\n", r"row 1 \(line 3\): every modality is missing"),
    ],
)
def test_read_rejects_malformed_files(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        read_pattern_csv(path, ["m0", "m1"] if name not in ("dup.csv", "header.csv") else None)
    if name != "order.csv":  # rows 0..N-1 in order is read_pattern_csv's own requirement (row i = sample i)
        with pytest.raises(ValueError, match=f"{name}.*{message}"):  # one reader: the transforms validate alike
            read_missing_patterns(path, ["m0", "m1"] if name not in ("dup.csv", "header.csv") else [])


def test_read_missing_file_or_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_pattern_csv(tmp_path / "nothere.csv", NAMES)
    # a seeded pattern asked for at a rate outside [0, 1]: say so, not "file not found"
    for rate in ("1.5", "-0.2"):
        with pytest.raises(ValueError, match=rf"missing rate {rate} is out of \[0, 1\].*missing_rate{rate}_seed0\.csv"):
            read_pattern_csv(tmp_path / f"missing_rate{rate}_seed0.csv", NAMES)
    with pytest.raises(ValueError, match=r"missing rate 1\.5 is out of \[0, 1\]"):
        pattern_filename(1.5, 0)
    with pytest.raises(FileNotFoundError, match="missing_rate0.3_seed0.csv"):  # an in-range rate: truly not found
        read_pattern_csv(tmp_path / "missing_rate0.3_seed0.csv", NAMES)
    path = _write(tmp_path, "two.csv", "index,m0,m1\n0,1,0\n")
    with pytest.raises(ValueError, match=r"two.csv: no column for modality \['m4'\]"):
        read_pattern_csv(path, ["m0", "m4"])


def test_cli_writes_documented_files(tmp_path, capsys):
    out = tmp_path / "patterns"
    rc = cli_main(["patterns", "--num-samples", "400", "--modalities", *NAMES, "--rates", "0.2", "0.8",
                   "--seeds", "0", "1", "--out", str(out)])
    assert rc == 0
    files = sorted(p.name for p in out.glob("*.csv"))
    assert files == ["missing_rate0.2_seed0.csv", "missing_rate0.2_seed1.csv",
                     "missing_rate0.8_seed0.csv", "missing_rate0.8_seed1.csv"]
    np.testing.assert_array_equal(read_pattern_csv(out / "missing_rate0.8_seed1.csv", NAMES),
                                  generate_missing_pattern(400, 5, 0.8, seed=1))
    summary = json.loads((out / "summary.json").read_text())
    entry = next(e for e in summary["files"] if e["file"] == "missing_rate0.8_seed1.csv")
    realised = 1.0 - read_pattern_csv(out / entry["file"]).mean()
    assert entry["missing_rate"] == pytest.approx(realised)
    assert "missing_rate0.2_seed0.csv" in (out / "summary.md").read_text()
    assert "realised missing rate" in capsys.readouterr().out
