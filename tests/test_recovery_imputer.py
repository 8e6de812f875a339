"""IterativeImputerRecovery: fitting, linear relation recovery, categorical fields, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery


def _table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    z = rng.normal(size=n)  # an unrelated field in the same group as x
    y = 2.0 * x + 1.0 + 0.1 * rng.normal(size=n)
    return x, z, y


def test_recovers_linear_relation_from_incomplete_training_table():
    x, z, y = _table(400, 0)
    table = {"demo": np.stack([x, z], 1), "lab": y[:, None]}
    # incomplete training data: 20% of rows lack the lab group, 10% lack the demo group, some NaN fields
    rng = np.random.default_rng(1)
    r = rng.random(400)
    present = np.stack([r >= 0.1, r < 0.8], 1)
    table["demo"][rng.random(400) < 0.05, 1] = np.nan
    imp = IterativeImputerRecovery({"demo": ["x", "z"], "lab": ["y"]}).fit(table, present)

    xt, zt, yt = _table(200, 2)
    inputs = {"demo": torch.tensor(np.stack([xt, zt], 1), dtype=torch.float32), "lab": torch.zeros(200, 1)}
    pres = torch.zeros(200, 2, dtype=torch.bool)
    pres[:, 0] = True
    out = imp(inputs, pres)
    assert out["demo"] is inputs["demo"]  # observed everywhere -> same object
    assert out["lab"].shape == (200, 1) and out["lab"].dtype == torch.float32
    pred = out["lab"][:, 0].double().numpy()
    r2 = 1.0 - np.sum((pred - yt) ** 2) / np.sum((yt - yt.mean()) ** 2)
    assert r2 > 0.95
    # the other direction: x from y (z is unrelated and is imputed near its mean)
    back = imp({"lab": torch.tensor(yt[:, None])}, torch.tensor([[False, True]] * 200))
    x_hat = back["demo"][:, 0].numpy()
    assert back["demo"].dtype == torch.float32  # group absent from inputs -> default float32
    assert 1.0 - np.sum((x_hat - xt) ** 2) / np.sum((xt - xt.mean()) ** 2) > 0.9


def test_mixed_patterns_pass_through_and_dataframe_fit(tmp_path):
    x, z, y = _table(300, 3)
    df = pd.DataFrame({"x": x, "z": z, "y": y, "grade": (x > 0).astype(float)})
    imp = IterativeImputerRecovery(
        {"demo": ["x", "z"], "lab": ["y", "grade"]}, categorical={"lab": {1: 2}}, max_iter=5
    ).fit(df)
    inputs = {
        "demo": torch.tensor([[0.5, 0.1], [0.0, 0.0], [-1.0, 2.0]], dtype=torch.float64),
        "lab": torch.tensor([[0.0, 0.0], [3.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
    }
    present = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    out = imp(inputs, present)
    assert torch.equal(out["demo"][[0, 2]], inputs["demo"][[0, 2]])
    assert torch.equal(out["lab"][1], inputs["lab"][1])
    assert out["lab"].dtype == torch.float64
    grade = out["lab"][[0, 2], 1]
    assert torch.equal(grade, grade.round()) and bool(((grade == 0) | (grade == 1)).all())
    # x = -1 -> grade 0, x = 0.5 -> grade 1 (the relation grade = [x > 0] is learnt)
    assert grade.tolist() == [1.0, 0.0]
    # batched call == row by row
    rows = [imp({k: v[i : i + 1] for k, v in inputs.items()}, present[i : i + 1]) for i in range(3)]
    for k in out:
        torch.testing.assert_close(out[k], torch.cat([r[k] for r in rows]))

    # save / load round trip (joblib, with a format + version tag)
    path = tmp_path / "imputer.joblib"
    imp.save(path)
    loaded = IterativeImputerRecovery.load(path)
    assert loaded.get_config() == imp.get_config()
    again = loaded(inputs, present)
    assert all(torch.equal(again[k], out[k]) for k in out)
    import joblib

    joblib.dump({"imputer": None}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="is not a monai_dymo.IterativeImputerRecovery file"):
        IterativeImputerRecovery.load(tmp_path / "other.joblib")


def test_fill_observed_fields_and_errors():
    x, z, y = _table(200, 4)
    imp = IterativeImputerRecovery({"demo": 2, "lab": 1}).fit(np.stack([x, z, y], 1))
    inp = {"demo": torch.tensor([[1.0, float("nan")]]), "lab": torch.tensor([[float("nan")]])}
    present = torch.tensor([[True, True]])
    kept = imp(inp, present)
    assert torch.isnan(kept["demo"][0, 1]) and torch.isnan(kept["lab"][0, 0])  # observed: unchanged, NaN kept
    filler = IterativeImputerRecovery({"demo": 2, "lab": 1}, fill_observed_fields=True)
    filler.imputer = imp.imputer
    filled = filler(inp, present)
    assert filled["demo"][0, 0] == 1.0 and torch.isfinite(filled["demo"]).all()
    assert abs(float(filled["lab"][0, 0]) - 3.0) < 0.3
    assert torch.isnan(inp["demo"][0, 1])  # caller's tensor untouched

    with pytest.raises(RuntimeError, match="not fitted"):
        IterativeImputerRecovery({"a": 1, "b": 1})({"a": torch.zeros(1, 1)}, torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match=r"group 'lab': expected shape \[N, 1\]"):
        IterativeImputerRecovery({"demo": 2, "lab": 1}).fit({"demo": np.zeros((5, 2)), "lab": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="unknown group"):
        IterativeImputerRecovery({"demo": 2, "lab": 1}).fit({"demographics": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="categorical fields given for unknown group"):
        IterativeImputerRecovery({"demo": 2}, categorical={"lab": [0]})
