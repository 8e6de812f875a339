"""A tiny on-disk cohort for the cohort bundle tests: 3D NIfTI + 2D PNG/JPEG + a clinical CSV, with natural gaps.

Classes show in every modality (a bright blob's position in the volume, the picture's stripe, age), so a few epochs of
training learn something, and nothing here runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

CLASSES = ["a", "b", "c"]


def _volume(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    vol = rng.normal(100, 10, (size, size, size)).astype(np.float32)
    c = [size // 4 + label * size // 4, size // 2, size // 2]
    zz, yy, xx = np.mgrid[:size, :size, :size]
    vol += 200 * (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < (size // 6) ** 2)
    return vol


def _picture(rng: np.random.Generator, label: int, size: int, mode: str) -> Image.Image:
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[:, label * size // 3 : (label + 1) * size // 3] += 150
    pic = Image.fromarray(img, "RGB")
    return pic.convert(mode) if mode != "RGB" else pic


def make_tiny_cohort(root: str | Path, n_train: int = 24, n_val: int = 9, n_test: int = 9, size: int = 16,
                     seed: int = 0) -> dict:
    """Write the cohort under ``root`` and return its ``cohort`` mapping (as a user's YAML would hold it)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"training": n_train, "validation": n_val, "testing": n_test}
    datalist: dict[str, list] = {}
    rows = []
    k = 0
    for split, n in splits.items():
        entries = []
        for i in range(n):
            pid = f"p{k:03d}"
            label = k % 3
            folder = root / "images" / pid
            folder.mkdir(exist_ok=True)
            entry = {"patient_id": pid, "label": CLASSES[label] if k % 2 else label}
            ct = folder / "ct.nii.gz"
            nib.save(nib.Nifti1Image(_volume(rng, label, size), np.diag([2.0, 2.0, 2.0, 1.0])), str(ct))
            entry["ct"] = f"images/{pid}/ct.nii.gz"
            mode = ("RGB", "RGBA", "L")[k % 3]
            ext = ".jpg" if mode == "L" else ".png"
            pic = folder / f"xray{ext}"
            _picture(rng, label, 2 * size, mode).save(pic)
            entry["xray"] = f"images/{pid}/xray{ext}"
            # natural gaps: no CT for every 4th patient, no picture for every 5th (never both)
            if k % 4 == 1:
                entry["ct"] = None
            elif k % 5 == 2:
                entry["xray"] = None
            entries.append(entry)
            if k % 7 != 3:  # every 7th patient has no clinical row
                age = 40 + 15 * label + rng.normal(0, 5)
                rows.append({"patient_id": pid, "age": "" if k % 6 == 5 else round(float(age), 1),
                             "sex": "unknown" if k % 9 == 5 else ["F", "M"][k % 2]})  # blank / missing-value code
            k += 1
        datalist[split] = entries
    # injected faults in the test split: a missing file and a zero-byte file
    datalist["testing"][0]["ct"] = "images/does_not_exist/ct.nii.gz"
    bad = root / "images" / datalist["testing"][2]["patient_id"] / "empty.nii.gz"
    bad.write_bytes(b"")
    datalist["testing"][2]["ct"] = str(bad)
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    import csv

    with open(root / "clinical.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "age", "sex"])
        writer.writeheader()
        writer.writerows(rows)
    return {
        "name": "tiny",
        "datalist": str(root / "datalist.json"),
        "clinical_csv": str(root / "clinical.csv"),
        "patient_id": "patient_id",
        "label": "label",
        "classes": CLASSES,
        "modalities": [
            {"name": "ct", "kind": "image3d", "spatial_size": [size] * 3},
            {"name": "xray", "kind": "image2d", "spatial_size": [size, size]},
            {"name": "clinical", "kind": "clinical", "continuous": ["age"], "categorical": ["sex"]},
        ],
    }


def two_sequence_spec(root: str | Path, size: int = 24):
    """A cohort spec of two 3D sequences (t1, flair) at ``size^3`` and three classes, for network-building tests."""
    from monai_dymo.cohort import CohortSpec

    return CohortSpec.from_config({
        "name": "c", "datalist": str(Path(root) / "d.json"), "classes": ["a", "b", "c"],
        "modalities": [{"name": "t1", "kind": "image3d", "spatial_size": [size] * 3},
                       {"name": "flair", "kind": "image3d", "spatial_size": [size] * 3}],
    })
