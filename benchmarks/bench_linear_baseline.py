"""Reference baseline for any cohort file: a class-weighted logistic regression on 32 x 32 thumbnails + clinical fields.

Reads the cohort's datalist and clinical CSV (through :class:`~monai_dymo.cohort.CohortSpec` and
:func:`~monai_dymo.cohort.load_split`, as the bundle does) and builds one feature row per patient:

- each image modality: a ``--size`` x ``--size`` thumbnail (``--color gray``: one channel, the default; ``rgb``: three),
  intensities in [0, 1], the whole picture resized without cropping; ``image3d``: the central slice along the last
  axis, min-max scaled. An absent or unreadable image gives zeros and a missing indicator of 1;
- each clinical field: continuous fields median-imputed with a missing indicator and standardised, categorical fields
  one-hot encoded with "missing" as a category (sklearn ``SimpleImputer`` / ``OneHotEncoder`` / ``StandardScaler`` in a
  ``ColumnTransformer``); the declared sentinels count as missing. Pixels are standardised too.

``LogisticRegression(class_weight="balanced")`` is fitted on the training split for each ``--C``; the C with the best
validation balanced accuracy (ties: the smaller C) is kept, and accuracy and balanced accuracy are printed on validation
and test for all inputs together and for each modality alone ("alone": the model given that modality's features only,
scored on every patient, and on the patients who have it). All inputs are fitted twice: as they are, and with "equal
blocks" (each picture's standardised pixels divided by the square root of their count, so that a picture weighs as
much as one clinical field under the L2 penalty); the reference is the variant with the better validation balanced
accuracy. The test split must carry labels.

    python benchmarks/bench_linear_baseline.py --cohort /data/derm7pt_cohort/derm7pt.yaml
    python benchmarks/bench_linear_baseline.py --cohort /data/busbra_cohort/busbra.yaml --color gray --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPLITS = ("training", "validation", "testing")
RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def load_cohort(path: str | Path):
    """The :class:`CohortSpec` of a cohort file (a mapping with the key ``cohort``, or the mapping itself)."""
    import yaml

    from monai_dymo.cohort import CohortSpec

    path = Path(path).expanduser().resolve()
    doc = yaml.safe_load(path.read_text())
    cfg = doc.get("cohort", doc) if isinstance(doc, dict) else doc
    return CohortSpec.from_config(cfg, base_dir=path.parent)


def _to_unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    """Resize a float (H, W) or (H, W, C) array in [0, 1] to (size, size[, C]) with PIL's antialiased bilinear."""
    from PIL import Image

    planes = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[-1])]
    out = [np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
           for p in planes]
    return out[0] if a.ndim == 2 else np.stack(out, -1)


def thumbnail(value: Any, kind: str, size: int = 32, color: str = "gray") -> np.ndarray:
    """(size, size) (gray) or (size, size, 3) (rgb) float32 thumbnail in [0, 1] of one image file (or file list)."""
    from PIL import Image

    first = value[0] if isinstance(value, (list, tuple)) else value
    if kind == "image2d" and not isinstance(value, (list, tuple)) and str(first).lower().endswith(RASTER):
        with Image.open(first) as im:
            if im.mode in ("I", "I;16", "I;16B", "F"):
                a = _to_unit(np.asarray(im, dtype=np.float32))
                a = a if color == "gray" else np.repeat(a[..., None], 3, -1)
                return _resize(a, size)
            im.draft("RGB" if color == "rgb" else "L", (4 * size, 4 * size))  # JPEG: decode at a reduced scale
            im = im.convert("RGB" if color == "rgb" else "L").resize((size, size), Image.BILINEAR, reducing_gap=2.0)
            return np.asarray(im, dtype=np.float32) / 255.0
    from monai.transforms import LoadImage

    a = np.asarray(LoadImage(image_only=True)(value), dtype=np.float32)
    a = np.squeeze(a)
    if kind == "image3d" or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        a = a[..., a.shape[-1] // 2] if a.ndim == 3 else a
    elif a.ndim == 3:
        a = a[..., :3]
    a = np.swapaxes(a, 0, 1)  # MONAI's arrays are (x, y): rows first, as viewed
    a = _to_unit(a)
    if color == "gray" and a.ndim == 3:
        a = a.mean(-1)
    elif color == "rgb" and a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return _resize(a, size)


def build_features(spec, entries: dict[str, list[dict[str, Any]]], size: int, color: str
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
    """Per split: the feature frame, the labels; the columns of each modality; counts of absent / unreadable images."""
    channels = 3 if color == "rgb" else 1
    npx = size * size * channels
    groups: dict[str, list[str]] = {}
    for m in spec.image_modalities:
        groups[m.name] = [f"{m.name}__p{i}" for i in range(npx)] + [f"{m.name}__missing"]
    for m in spec.clinical_modalities:
        groups[m.name] = list(m.fields)
    frames, labels, counts = {}, {}, {}
    for split, items in entries.items():
        cols: dict[str, np.ndarray] = {}
        counts[split] = {}
        for m in spec.image_modalities:
            x = np.zeros((len(items), npx), np.float32)
            miss = np.ones(len(items), np.float32)
            absent = unreadable = 0
            for i, e in enumerate(items):
                if e.get(m.name) is None:
                    absent += 1
                    continue
                try:
                    x[i] = thumbnail(e[m.name], m.kind, size, color).reshape(-1)
                    miss[i] = 0.0
                except Exception as err:  # noqa: BLE001 - an unreadable file is a missing image here
                    unreadable += 1
                    print(f"  {split} {e['patient_id']} {m.name}: unreadable ({type(err).__name__}: {err})")
            counts[split][m.name] = {"absent": absent, "unreadable": unreadable}
            cols.update(dict(zip(groups[m.name][:-1], x.T)))
            cols[f"{m.name}__missing"] = miss
        for m in spec.clinical_modalities:
            sentinels = {str(s) for s in m.sentinels}
            numeric = set(pd.to_numeric(pd.Series(list(m.sentinels), dtype=object), errors="coerce").dropna())
            for f in m.continuous:
                v = pd.to_numeric(pd.Series([e.get(f) for e in items], dtype=object), errors="coerce")
                cols[f] = v.where(~v.isin(numeric)).to_numpy(dtype=float)
            for f in m.categorical:
                vals = [e.get(f) for e in items]
                cols[f] = np.array([np.nan if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) in sentinels
                                    else str(v) for v in vals], dtype=object)
            counts[split][m.name] = {"all_fields_missing": int(pd.DataFrame({f: cols[f] for f in m.fields})
                                                               .isna().all(axis=1).sum())}
        frames[split] = pd.DataFrame(cols)
        labels[split] = np.array([e["label"] for e in items], dtype=int)
    return frames, labels, groups, counts


def _times(x: Any, w: float) -> Any:
    return x * w


def make_model(spec, columns: list[str], c: float, max_iter: int, equal_blocks: bool = False):
    """Pipeline: per-kind preprocessing of ``columns`` then the class-weighted logistic regression.

    ``equal_blocks``: the standardised pixels of each image modality are divided by the square root of their count,
    so that each picture weighs as much as one standardised field under the L2 penalty (otherwise the thousands of
    pixels outweigh a few clinical fields).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    cont = [f for m in spec.clinical_modalities for f in m.continuous if f in columns]
    cat = [f for m in spec.clinical_modalities for f in m.categorical if f in columns]
    flags = [col for col in columns if col.endswith("__missing")]
    parts = []
    for m in spec.image_modalities:
        pixels = [col for col in columns if col.startswith(f"{m.name}__p")]
        if pixels:
            w = 1.0 / np.sqrt(len(pixels)) if equal_blocks else 1.0
            parts.append((f"{m.name}_pixels", Pipeline([
                ("scale", StandardScaler()), ("weight", FunctionTransformer(_times, kw_args={"w": w}))]), pixels))
    if flags:
        parts.append(("image_missing", "passthrough", flags))
    if cont:
        parts.append(("continuous", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)),
                                              ("scale", StandardScaler())]), cont))
    if cat:
        parts.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="missing", missing_values=np.nan)),
            ("onehot", OneHotEncoder(handle_unknown="ignore"))]), cat))
    return Pipeline([("features", ColumnTransformer(parts)),
                     ("lr", LogisticRegression(class_weight="balanced", C=c, max_iter=max_iter))])


def evaluate(spec, frames, labels, columns: list[str], grid: list[float], max_iter: int,
             observed: dict[str, np.ndarray] | None = None, equal_blocks: bool = False) -> dict[str, Any]:
    """Fit on training for each C, keep the best validation balanced accuracy, score validation and test."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    best = None
    for c in sorted(grid):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = make_model(spec, columns, c, max_iter, equal_blocks)
            model.fit(frames["training"][columns], labels["training"])
        warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        ba = balanced_accuracy_score(labels["validation"], model.predict(frames["validation"][columns]))
        if best is None or ba > best[0] + 1e-12:
            best = (ba, c, model, warned)
    _, c, model, warned = best
    out: dict[str, Any] = {"C": c, "not_converged": warned}
    for split, key in (("validation", "val"), ("testing", "test")):
        pred = model.predict(frames[split][columns])
        out[f"{key}_acc"] = 100 * accuracy_score(labels[split], pred)
        out[f"{key}_bacc"] = 100 * balanced_accuracy_score(labels[split], pred)
        if observed is not None:
            keep = observed[split]
            out[f"{key}_n_observed"] = int(keep.sum())
            out[f"{key}_bacc_observed"] = (100 * balanced_accuracy_score(labels[split][keep], pred[keep])
                                           if keep.any() and len(set(labels[split][keep])) > 1 else float("nan"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", required=True, help="cohort YAML file (as given to the bundle)")
    p.add_argument("--size", type=int, default=32, help="thumbnail side in pixels (default 32)")
    p.add_argument("--color", choices=("gray", "rgb"), default="gray", help="thumbnail channels (default gray)")
    p.add_argument("--C", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
                   help="inverse regularisation strengths tried on validation (default 1e-4 ... 10)")
    p.add_argument("--max-iter", type=int, default=10000, help="LogisticRegression max_iter (default 10000)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from monai_dymo.cohort import load_split

    start = time.perf_counter()
    spec = load_cohort(args.cohort)
    entries = {s: load_split(spec, s, require_labels=True) for s in SPLITS}
    frames, labels, groups, counts = build_features(spec, entries, args.size, args.color)
    load_s = time.perf_counter() - start
    every = [c for g in groups.values() for c in g]
    rows: dict[str, Any] = {"all inputs": evaluate(spec, frames, labels, every, args.C, args.max_iter)}
    if spec.image_modalities:
        rows["all inputs, equal blocks"] = evaluate(spec, frames, labels, every, args.C, args.max_iter,
                                                    equal_blocks=True)
    for m in spec.modalities:
        if m.is_image:
            observed = {s: frames[s][f"{m.name}__missing"].to_numpy() == 0 for s in ("validation", "testing")}
        else:
            observed = {s: ~frames[s][list(m.fields)].isna().all(axis=1).to_numpy() for s in ("validation", "testing")}
        rows[f"{m.name} alone"] = evaluate(spec, frames, labels, groups[m.name], args.C, args.max_iter, observed)
    candidates = [k for k in ("all inputs", "all inputs, equal blocks") if k in rows]
    reference = max(candidates, key=lambda k: (rows[k]["val_bacc"], -candidates.index(k)))
    majority = int(np.bincount(labels["training"], minlength=spec.num_classes).argmax())
    result = {
        "cohort": str(Path(args.cohort).resolve()), "name": spec.name, "classes": list(spec.classes),
        "thumbnail": f"{args.size}x{args.size} {args.color}", "C_grid": args.C,
        "patients": {s: len(v) for s, v in entries.items()},
        "class_counts": {s: np.bincount(labels[s], minlength=spec.num_classes).tolist() for s in SPLITS},
        "missing": counts,
        "majority_test_acc": 100 * float(np.mean(labels["testing"] == majority)),
        "rows": rows, "reference": reference, "seconds": round(time.perf_counter() - start, 1),
        "load_seconds": round(load_s, 1),
    }

    print(f"cohort {spec.name} ({result['cohort']}); classes {list(spec.classes)}")
    print("patients " + ", ".join(f"{s} {n} {result['class_counts'][s]}" for s, n in result["patients"].items()))
    for s in SPLITS:
        print(f"  missing in {s}: " + "; ".join(f"{k} {v}" for k, v in counts[s].items()))
    print(f"features: {result['thumbnail']} thumbnails per image modality (zeros + indicator when absent), clinical "
          f"fields imputed / one-hot / standardised; LogisticRegression(class_weight='balanced'), C from "
          f"{args.C} by validation balanced accuracy")
    print(f"always the training majority class ({spec.classes[majority]}): test accuracy "
          f"{result['majority_test_acc']:.2f} %, balanced accuracy {100 / spec.num_classes:.2f} %\n")
    print("| inputs | C | val acc | val bal. acc | test acc | test bal. acc | test bal. acc, patients with it (n) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        obs = f"{r['test_bacc_observed']:.2f} ({r['test_n_observed']})" if "test_n_observed" in r else ""
        flag = " (not converged)" if r["not_converged"] else ""
        print(f"| {name} | {r['C']:g}{flag} | {r['val_acc']:.2f} | {r['val_bacc']:.2f} | {r['test_acc']:.2f} | "
              f"{r['test_bacc']:.2f} | {obs} |")
    r = rows[reference]
    print(f"\nreference (the 'all inputs' variant with the better validation balanced accuracy): {reference}: "
          f"test balanced accuracy {r['test_bacc']:.2f} %, accuracy {r['test_acc']:.2f} %")
    print(f"{result['seconds']} s (images {result['load_seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
