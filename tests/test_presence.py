"""The presence rules shared by every layer: keep at least one observed modality when simulating missingness."""

from __future__ import annotations

import numpy as np
import torch

from monai_dymo.presence import keep_one_observed


def test_keep_one_observed_keeps_the_observed_modality_of_largest_priority():
    observed = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 1, 1]], dtype=bool)
    drop = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1]], dtype=bool)
    priority = np.array([[0.2, 0.1, 0.9], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.9, 0.3, 0.4]])
    out = keep_one_observed(observed, drop, priority)
    # row 0 keeps m0 (m2 scores higher but is not observed); row 1 still has m1, row 2 has nothing to keep
    assert out.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert drop.tolist()[0] == [1, 1, 0]  # the input is not changed
    t = keep_one_observed(torch.as_tensor(observed), torch.as_tensor(drop), torch.as_tensor(priority))
    assert isinstance(t, torch.Tensor) and t.tolist() == out.tolist()
    one = keep_one_observed(np.array([1, 0, 1], bool), np.array([1, 0, 1], bool), np.array([0.1, 0.9, 0.3]))
    assert one.tolist() == [True, False, False]  # a single row [M]


def test_keep_one_observed_draws_priorities_only_for_the_rows_that_need_one():
    asked = []

    def draw(rows):
        asked.append(rows.copy())
        return rows[:, ::-1].astype(float)  # row [1, 1, 0] -> scores [0, 1, 1]: keeps m1

    observed = np.array([[1, 1, 0], [1, 1, 1]], dtype=bool)
    out = keep_one_observed(observed, np.array([[1, 1, 0], [1, 0, 0]], dtype=bool), draw)
    assert len(asked) == 1 and asked[0].tolist() == [[True, True, False]]
    assert out.tolist() == [[True, False, False], [True, False, False]]
    keep_one_observed(observed, np.zeros_like(observed), draw)
    assert len(asked) == 1  # nothing to keep: no draw
