"""Clinical classification metrics: agreement with scikit-learn / scipy, known cases, bootstrap, paired tests."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from monai_dymo.metrics import (
    classification_metrics,
    mcnemar_exact,
    method_metrics,
    metrics_markdown,
    weighted_auroc,
)


def _random_case(n: int = 400, c: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c))
    z[np.arange(n), y] += 1.0
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return y, prob.argmax(1), prob


def test_matches_sklearn_on_random_data():
    y, p, prob = _random_case()
    r = classification_metrics(y, p, prob, [f"c{k}" for k in range(5)], bootstrap=0)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert r["auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert r["confusion_matrix"] == confusion_matrix(y, p).tolist()
    rec, prec = recall_score(y, p, average=None), precision_score(y, p, average=None)
    for k in range(5):
        assert r["per_class"][f"c{k}"]["sensitivity"] == pytest.approx(rec[k])
        assert r["per_class"][f"c{k}"]["precision"] == pytest.approx(prec[k])
        assert r["per_class"][f"c{k}"]["support"] == int((y == k).sum())
    assert r["ci95"] is None
    json.dumps(r)


def test_binary_auroc_uses_the_positive_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.clip(0.3 * y + rng.uniform(size=200) * 0.7, 0, 1)
    prob = np.stack([1 - s, s], 1)
    r = classification_metrics(y, (s > 0.5).astype(int), prob, ["no", "yes"], bootstrap=0)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert r["auroc_classes"] == ["yes"]
    r0 = classification_metrics(y, (s > 0.5).astype(int), prob, ["no", "yes"], bootstrap=0, positive_class=0)
    assert r0["auroc"] == pytest.approx(roc_auc_score(y == 0, 1 - s))


def test_majority_classifier_known_numbers():
    y = np.array([0] * 84 + [1] * 16)
    p = np.zeros(100, dtype=int)
    r = classification_metrics(y, p, None, ["common", "rare"], bootstrap=200)
    assert r["accuracy"] == pytest.approx(0.84)
    assert r["balanced_accuracy"] == pytest.approx(0.5)
    assert r["chance"] == pytest.approx(0.84)
    assert r["majority_class"] == "common"
    assert r["per_class"]["rare"]["sensitivity"] == 0.0
    assert r["per_class"]["rare"]["precision"] is None  # never predicted
    assert r["per_class"]["common"]["sensitivity"] == 1.0
    assert r["confusion_matrix"] == [[84, 0], [16, 0]]
    assert r["auroc"] is None and r["auroc_note"] == "no class probabilities" and r["ci95"]["auroc"] is None


def test_absent_class_macro_over_present_classes():
    y, p, prob = _random_case(300, 4, seed=5)
    keep = y != 2  # class 2 absent from the evaluated split
    y, p, prob = y[keep], p[keep], prob[keep]
    r = classification_metrics(y, p, prob, ["a", "b", "c", "d"], bootstrap=100)
    present = [0, 1, 3]
    assert r["auroc_classes"] == ["a", "b", "d"] and "c" in r["auroc_note"]
    assert r["auroc"] == pytest.approx(np.mean([roc_auc_score(y == k, prob[:, k]) for k in present]))
    assert r["balanced_accuracy"] == pytest.approx(recall_score(y, p, labels=present, average="macro"))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro"))
    assert r["per_class"]["c"]["support"] == 0 and r["per_class"]["c"]["sensitivity"] is None
    assert len(r["confusion_matrix"]) == 4 and all(len(row) == 4 for row in r["confusion_matrix"])
    json.dumps(r)


def test_weighted_auroc_equals_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(7)
    for _ in range(5):
        s = np.round(rng.uniform(size=150), 1)  # many ties
        pos = rng.uniform(size=150) < 0.3
        assert weighted_auroc(s, pos)[0] == pytest.approx(roc_auc_score(pos, s))
        idx = rng.integers(0, 150, 150)
        w = np.bincount(idx, minlength=150)[None]
        assert weighted_auroc(s, pos, w)[0] == pytest.approx(roc_auc_score(pos[idx], s[idx]))
    assert np.isnan(weighted_auroc([0.1, 0.2], [True, True])[0])


def test_bootstrap_seeded_contains_estimate_and_fast():
    y, p, prob = _random_case()
    t = time.perf_counter()
    a = classification_metrics(y, p, prob, bootstrap=1000, seed=0)
    elapsed = time.perf_counter() - t
    b = classification_metrics(y, p, prob, bootstrap=1000, seed=0)
    c = classification_metrics(y, p, prob, bootstrap=1000, seed=1)
    assert a["ci95"] == b["ci95"] and a["ci95"] != c["ci95"]
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        lo, hi = a["ci95"][key]
        assert lo < a[key] < hi and hi - lo < 0.2
    assert a["bootstrap"]["replicates"] == 1000 and a["bootstrap"]["auroc_replicates"] == 1000
    assert elapsed < 2.0


def test_bootstrap_skips_replicates_without_a_class():
    y = np.array([0] * 38 + [1] * 2)
    prob = np.stack([np.linspace(1, 0, 40), np.linspace(0, 1, 40)], 1)
    r = classification_metrics(y, prob.argmax(1), prob, bootstrap=500, seed=0)
    used = r["bootstrap"]["auroc_replicates"]
    assert 0 < used < 500  # about (38/40)^40 = 13 % of replicates draw no positive
    assert r["ci95"]["auroc"] is not None


def test_mcnemar_matches_binomtest():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=120) < 0.8
    b = rng.uniform(size=120) < 0.7
    r = mcnemar_exact(a, b)
    nb, nc = int((a & ~b).sum()), int((~a & b).sum())
    assert (r["b"], r["c"]) == (nb, nc)
    assert r["p_value"] == pytest.approx(binomtest(nb, nb + nc, 0.5).pvalue)
    assert r["difference"] == pytest.approx(a.mean() - b.mean())
    lo, hi = r["difference_ci95"]
    assert lo < r["difference"] < hi
    same = mcnemar_exact(a, a)
    assert same["p_value"] == 1.0 and same["b"] == same["c"] == 0


def test_newcombe_interval_published_example():
    # Cavo et al. 2012 (Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8):
    # both right 59, a only 6, b only 16, both wrong 80 -> -0.0621 (95 % CI -0.1186 to -0.0046)
    a = np.array([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, dtype=bool)
    b = np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, dtype=bool)
    r = mcnemar_exact(a, b)
    assert r["difference"] == pytest.approx(-0.0621, abs=5e-5)
    assert r["difference_ci95"] == pytest.approx([-0.1186, -0.0046], abs=5e-5)


def test_newcombe_interval_coverage():
    rng = np.random.default_rng(11)
    hits, sims = 0, 400
    for _ in range(sims):  # true accuracies 0.80 and 0.5 * 0.8 + 0.5 * 0.64 = 0.72, b copies a half of the time
        a = rng.uniform(size=80) < 0.8
        b = np.where(rng.uniform(size=80) < 0.5, a, rng.uniform(size=80) < 0.64)
        lo, hi = mcnemar_exact(a, b)["difference_ci95"]
        hits += lo <= 0.08 <= hi
    assert hits / sims > 0.9


def _frame() -> pd.DataFrame:
    y, p, prob = _random_case(200, 3, seed=9)
    rng = np.random.default_rng(9)
    other = np.where(rng.uniform(size=200) < 0.3, rng.integers(0, 3, 200), p)
    df = pd.DataFrame({"label": y, "pred_dymo": p, "pred_observed_only": other, "pred_all_recovered": other})
    for k in range(3):
        df[f"prob_dymo_{k}"] = prob[:, k]
    df.loc[:4, ["pred_dymo", "pred_observed_only", "pred_all_recovered"]] = -1
    df.loc[:4, [f"prob_dymo_{k}" for k in range(3)]] = np.nan
    return df


def test_method_metrics_excludes_unprocessed_rows():
    df = _frame()
    names = ["low", "mid", "high"]
    m = method_metrics(df, names, bootstrap=100)
    kept = df.iloc[5:]
    for method in ("dymo", "observed_only", "all_recovered"):
        assert m[method]["num_patients"] == 195 and m[method]["not_processed"] == 5
        assert m[method]["accuracy"] == pytest.approx(accuracy_score(kept["label"], kept[f"pred_{method}"]))
    assert m["dymo"]["auroc"] is not None and m["observed_only"]["auroc"] is None
    pair = m["paired"]["dymo_vs_observed_only"]
    assert pair["n"] == 195
    assert pair["b"] == int(((kept.pred_dymo == kept.label) & (kept.pred_observed_only != kept.label)).sum())
    json.dumps(m)
    text = metrics_markdown(m, names)
    assert "| DyMo | 195 (5 not processed) |" in text and "McNemar exact p" in text
    assert "Chance (always answering the majority class" in text and "| true \\ predicted | low | mid | high |" in text


def test_method_metrics_nothing_processed():
    df = _frame()
    df["pred_all_recovered"] = -1
    m = method_metrics(df, ["low", "mid", "high"], bootstrap=0)
    assert m["all_recovered"] == {"num_patients": 0, "not_processed": 200}
    assert "dymo_vs_all_recovered" not in m["paired"]
    assert "| all recovered | 0 | n/a |" in metrics_markdown(m, ["low", "mid", "high"])
