"""K-fold cross-validation of a cohort: the fold assignment (stratified, seeded, patient-disjoint), folds.json, and
the fold parts of the pooled training + validation patients (the testing split never in a fold)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_dymo.cohort import CohortSpec, load_split
from monai_dymo.cohort.folds import (
    check_fold,
    cohort_folds,
    fold_assignments,
    fold_entries,
    pooled_entries,
    read_folds,
    write_folds,
)
from tests.cohort_fixtures import make_tiny_cohort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds_cohort")
    spec = CohortSpec.from_config(make_tiny_cohort(root / "data", n_train=18, n_val=9, n_test=6))
    return spec, root


def test_fold_assignments_are_stratified_seeded_and_cover_everybody():
    labels = np.array([0] * 20 + [1] * 13 + [2] * 7)
    folds = fold_assignments(labels, 5, seed=3)
    assert folds.shape == labels.shape and set(folds.tolist()) == set(range(5))
    for c, n in ((0, 20), (1, 13), (2, 7)):  # every class spread evenly over the folds
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    assert np.array_equal(folds, fold_assignments(labels, 5, seed=3))  # seeded
    assert not np.array_equal(folds, fold_assignments(labels, 5, seed=4))


def test_repeated_patient_ids_stay_in_one_fold():
    ids = [f"p{i // 2}" for i in range(24)]  # every patient twice
    labels = [(i // 2) % 3 for i in range(24)]
    folds = fold_assignments(labels, 3, seed=0, groups=ids)
    by_patient: dict[str, set] = {}
    for pid, f in zip(ids, folds.tolist()):
        by_patient.setdefault(pid, set()).add(f)
    assert all(len(v) == 1 for v in by_patient.values())
    assert set(folds.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("k, message", [(1, "integer >= 2"), (2.5, "integer >= 2"), (4, r"class\(es\) \[2\]")])
def test_fold_assignment_errors(k, message):
    with pytest.raises(ValueError, match=message):
        fold_assignments([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2], k)


def test_check_fold():
    assert check_fold(1, None) is None and check_fold(3, 2) == 2 and check_fold(3, None) is None
    with pytest.raises(ValueError, match="--fold 0 .. --fold 2"):
        check_fold(3, None, required=True)
    with pytest.raises(ValueError, match="one of 0..2"):
        check_fold(3, 3)
    with pytest.raises(ValueError, match="folds is 1"):
        check_fold(1, 0)


def test_folds_file_and_fold_parts(tiny, tmp_path):
    spec, _ = tiny
    path = tmp_path / "folds.json"
    record = write_folds(spec, path, 3, seed=0)
    assignment = read_folds(path, 3)
    assert assignment == record["patients"] == cohort_folds(spec, 3, seed=0)
    train = load_split(spec, "training")
    val = load_split(spec, "validation")
    test_ids = {e["patient_id"] for e in load_split(spec, "testing")}
    pooled_ids = [e["patient_id"] for e in train + val]
    assert sorted(assignment) == sorted(pooled_ids) and not test_ids & set(assignment)  # testing never in a fold
    assert sum(sum(c.values()) for c in record["counts"].values()) == 27
    assert json.loads(path.read_text())["folds"] == 3

    pooled = pooled_entries(spec)
    assert [e["index"] for e in pooled] == list(range(27))  # one index per patient across the folds
    assert pooled[:18] == train  # training entries exactly as their split gives them (same cache entries)
    assert fold_entries(spec, "training", path) == pooled  # every pooled patient (the ensemble's calibration)
    seen = []
    for f in range(3):
        held = fold_entries(spec, "validation", path, fold=f)
        rest = fold_entries(spec, "training", path, fold=f)
        held_ids = {e["patient_id"] for e in held}
        assert held_ids == {p for p, g in assignment.items() if g == f}
        assert held_ids.isdisjoint(e["patient_id"] for e in rest) and len(held) + len(rest) == 27
        assert {e["label"] for e in held} == {0, 1, 2}
        seen += sorted(held_ids)
    assert sorted(seen) == sorted(pooled_ids)  # every patient held out exactly once


def test_fold_errors_name_the_file(tiny, tmp_path):
    spec, _ = tiny
    path = tmp_path / "folds.json"
    write_folds(spec, path, 3)
    with pytest.raises(ValueError, match="testing split is never in a fold"):
        fold_entries(spec, "testing", path, fold=0)
    with pytest.raises(ValueError, match="give the fold"):
        fold_entries(spec, "validation", path)
    with pytest.raises(ValueError, match=r"one of 0..2"):
        fold_entries(spec, "training", path, fold=3)
    with pytest.raises(ValueError, match="holds 3 folds, the run asks for 5"):
        read_folds(path, 5)
    with pytest.raises(FileNotFoundError, match="prepare stage writes it"):
        read_folds(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a folds file"):
        read_folds(tmp_path / "bad.json")
    record = json.loads(path.read_text())
    dropped = sorted(record["patients"])[0]
    del record["patients"][dropped]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"does not hold patient.*{dropped}.*rerun prepare"):
        fold_entries(spec, "training", path, fold=0)


def test_cohort_dataset_of_a_fold_part(tiny, tmp_path):
    from monai_dymo.cohort import cohort_dataset, prepare_cohort

    spec, root = tiny
    stats = prepare_cohort(spec, tmp_path / "prepared", stats_file=tmp_path / "clinical_stats.json")["stats_file"]
    path = tmp_path / "folds.json"
    assignment = write_folds(spec, path, 3)["patients"]
    held = cohort_dataset(spec, "validation", stats_file=stats, cache=None, folds_file=path, fold=1)
    rest = cohort_dataset(spec, "training", stats_file=stats, cache=None, folds_file=path, fold=1)
    assert {e["patient_id"] for e in held.data} == {p for p, f in assignment.items() if f == 1}
    assert len(held) + len(rest) == 27 and len(cohort_dataset(spec, "training", stats_file=stats, cache=None,
                                                              folds_file=path)) == 27
    assert held[0]["label"] in (0, 1, 2) and "present" in held[0]  # preprocessed as any split
    with pytest.raises(ValueError, match="never in a fold"):
        cohort_dataset(spec, "testing", stats_file=stats, cache=None, folds_file=path, fold=0)
    with pytest.raises(ValueError, match="without the folds file"):
        cohort_dataset(spec, "training", stats_file=stats, cache=None, fold=0)


def test_held_out_part_of_the_validation_split_is_in_no_fold(tiny, tmp_path):
    """With a holdout_fraction the patients the single-split run certifies on (the same seeded draw over the validation
    split) are in no fold part, so they can certify the ensemble of the fold networks."""
    import torch

    from monai_dymo.certification import holdout_part
    from monai_dymo.cohort.folds import held_out_ids

    spec, _ = tiny
    path = tmp_path / "folds.json"
    record = write_folds(spec, path, 3, seed=0, holdout_fraction=0.5, holdout_seed=7)
    val = load_split(spec, "validation")
    same_draw = holdout_part(val, 0.5, 7, "holdout")
    expected = sorted(str(e["patient_id"]) for e in same_draw)
    assert sorted(record["held_out"]) == expected == sorted(held_out_ids(spec, 0.5, 7)) and len(expected) == 4
    assert not set(expected) & set(record["patients"]) and len(record["patients"]) == 27 - 4
    parts = [fold_entries(spec, part, path, f) for f in range(3) for part in ("training", "validation")]
    parts.append(fold_entries(spec, "training", path))
    assert all(not {e["patient_id"] for e in p} & set(expected) for p in parts)
    assert sorted(e["patient_id"] for e in parts[-1]) == sorted(record["patients"])
    assert isinstance(same_draw, torch.utils.data.Subset)
    assert held_out_ids(spec, None) == [] and "held_out" in write_folds(spec, path, 3)


def test_a_changed_holdout_after_prepare_stops_the_run(tiny, tmp_path):
    """calibrate / train refuse a folds file written with another held-out part: its patients could be in a fold."""
    from monai_dymo.cohort.folds import check_holdout

    spec, _ = tiny
    path = tmp_path / "folds.json"
    write_folds(spec, path, 3, holdout_fraction=0.5, holdout_seed=7)
    check_holdout(path, 0.5, 7)  # the same part: fine
    for fraction, seed in ((0.3, 7), (0.5, 8), (None, 7)):
        with pytest.raises(ValueError, match="rerun prepare and train the folds again"):
            check_holdout(path, fraction, seed)
    write_folds(spec, path, 3)  # every validation patient in a fold
    check_holdout(path, None, 123)
    with pytest.raises(ValueError, match="written with holdout_fraction None"):
        check_holdout(path, 0.5, 1000)
