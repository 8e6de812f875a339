"""The files a public-dataset converter writes for the cohort DyMo bundle (``python -m monai_dymo.data derm7pt``,
``busbra``): the datalist, the clinical table, the cohort file and the manifest, in one output folder.

Images are referenced in the release's folder (``data_root``), never copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_dymo.errors import DyMoFileNotFoundError

__all__ = ["image_size", "require_paths", "write_cohort_files", "write_manifest"]


def image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(rows, columns)`` of the preprocessed images from one integer (a square) or a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def require_paths(paths: Iterable[Path], dataset: str, source_hint: str) -> None:
    """Raise ``FileNotFoundError`` naming the first of ``paths`` that does not exist (``dataset: <path> not found;
    <source_hint>.``)."""
    for p in paths:
        if not p.exists():
            raise DyMoFileNotFoundError(f"{dataset}: {p} not found; {source_hint}.")


def write_cohort_files(
    out: str | os.PathLike,
    name: str,
    datalist: Mapping[str, list[dict[str, Any]]],
    clinical: Sequence[Mapping[str, Any]],
    input_fields: Sequence[str],
    data_root: Path,
    classes: Sequence[str],
    pictures: Sequence[str],
    channels: int,
    spatial_size: tuple[int, int],
    clinical_group: str,
    header: str,
    work_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write ``datalist.json``, ``clinical.csv`` (``patient_id`` and ``input_fields``) and ``<name>.yaml`` into ``out``
    (created); returns their paths ``{"datalist", "clinical_csv", "cohort_file"}``.

    Args:
        out: output folder.
        name: cohort name (the cohort file is ``<name>.yaml``).
        datalist: ``{split: [entry, ...]}`` (MONAI datalist).
        clinical: one row per patient: ``patient_id`` and the ``input_fields``.
        input_fields: the clinical columns, in order.
        data_root: the folder the datalist's image paths are relative to.
        classes: class names (class index = position).
        pictures: the ``image2d`` modalities (datalist keys), in the networks' order, each with ``channels`` (1:
            grayscale, 3: RGB) and ``spatial_size`` (rows, columns) after preprocessing.
        clinical_group: name of the clinical modality: the ``input_fields``, all categorical, after the pictures.
        header: comment lines written above the cohort file's YAML.
        work_dir, model_dir: the bundle's run and weight folders written into the cohort file (default
            ``<out>/runs`` and ``<out>/models``).
    """
    import pandas as pd
    import yaml

    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    datalist_file = out_dir / "datalist.json"
    datalist_file.write_text(json.dumps(datalist, indent=1))
    clinical_file = out_dir / "clinical.csv"
    pd.DataFrame(list(clinical), columns=["patient_id", *input_fields]).to_csv(clinical_file, index=False)
    cohort = {
        "name": name,
        "datalist": str(datalist_file),
        "data_root": str(data_root),
        "clinical_csv": str(clinical_file),
        "patient_id": "patient_id",
        "label": "label",
        "classes": list(classes),
        "modalities": [
            *({"name": m, "kind": "image2d", "spatial_size": [*spatial_size], "channels": channels} for m in pictures),
            {"name": clinical_group, "kind": "clinical", "categorical": list(input_fields)},
        ],
    }
    cohort_file = out_dir / f"{name}.yaml"
    body = {
        "cohort": cohort,
        "work_dir": str(Path(work_dir).expanduser().resolve() if work_dir else out_dir / "runs"),
        "model_dir": str(Path(model_dir).expanduser().resolve() if model_dir else out_dir / "models"),
    }
    cohort_file.write_text(header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120))
    return {"datalist": datalist_file, "clinical_csv": clinical_file, "cohort_file": cohort_file}


def write_manifest(
    files: Mapping[str, Path], record: Mapping[str, Any], summary: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``record`` as ``manifest.json`` beside the cohort ``files`` (of :func:`write_cohort_files`); returns the
    converter's result: the paths of ``files`` and of the manifest, plus ``"summary"``."""
    manifest = files["datalist"].parent / "manifest.json"
    manifest.write_text(json.dumps(dict(record), indent=2))
    return {**files, "manifest": manifest, "summary": summary}
