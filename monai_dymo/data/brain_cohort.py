"""Synthetic brain MRI + clinical cohort with natural missingness, generated offline from four real brains.

Every patient is made from one of the real skull-stripped, co-registered brains in
``../shared/data/brain_mri_samples/<case>/{t1,t1c,t2,flair}.nii.gz`` (240x240x155, 1 mm):

1. **Source preparation** (once per process, cached): each sequence is reoriented to RAS, block-averaged to 2 mm
   (then to ``2 f`` mm, ``f = max(1, floor(spacing / 2))``) and divided by its brain median. The real tumour of the
   source (found as the largest FLAIR-hyperintense component, grown by the left-right asymmetry of all four
   sequences) is replaced by the mirrored contralateral hemisphere, so that the only lesion a patient shows is the
   synthetic one. Sources are assigned so that every class uses all sources equally often; the source never carries
   the class.
2. **Anatomy**: a random left-right flip, rotation (up to 8 degrees per axis), anisotropic scaling (0.9-1.1), shift
   (up to 5 mm) and a smooth elastic displacement (5^3 control grid, about 3 mm), applied to the four sequences, the
   brain mask and the depth map (distance to the brain surface) in one trilinear resampling onto the stored grid
   (``size``^3 voxels over a ``fov_mm`` cube centred on the brain; 96^3 at 2.25 mm by default).
3. **Lesion**: one or more irregular blobs with a core, a rim and an oedema shell; the class (see :data:`CLASSES`)
   sets, independently given the class, one attribute per sequence with overlapping class-conditional probabilities
   (:data:`ATTRIBUTE_TABLES`): T1c enhancement (none / ring / solid), FLAIR oedema extent (small / medium / large),
   T2 lesion signal (hypo / iso / hyper), T1 lesion signal (hypo / iso / haemorrhagic bright spots), plus weakly
   informative shared geometry (number of blobs, radius, depth below the brain surface) and clinical fields (age, sex,
   KPS, LDH) drawn from overlapping class-conditional distributions. No single sequence nor the clinical table
   identifies the class; together they do (see ``benchmarks/bench_brain_cohort_signal.py``).
4. **Re-contrasting** per sequence: gamma (0.8-1.25), a smooth multiplicative bias field (about +-12 %), a scanner
   scale factor, Gaussian noise (1-3 % of the brain median); stored as int16 NIfTI with a RAS affine whose origin is
   the brain centre.
5. **Natural missingness** (independent of the class): each sequence absent (``null`` in the datalist) for 20-26 % of
   patients, never all four sequences and the clinical row together; a few corrupt files (zero bytes, random bytes,
   truncated gzip); a few sequences stored as DICOM series folders (axial slices, LPS geometry tags, readable by
   MONAI's ``PydicomReader``); blank clinical cells, sentinel values (``ldh = -999``, ``sex = "unknown"``), a few
   all-blank clinical rows and a few patients missing from ``clinical.csv`` entirely.

Outputs in ``output_dir``: ``images/<pid>/<seq>.nii.gz`` (or ``images/<pid>/<seq>/`` DICOM folders),
``datalist.json`` (MONAI's ``training`` / ``validation`` / ``testing`` lists; per entry ``patient_id``, one relative path
or ``null`` per sequence, ``label`` int), ``clinical.csv`` (``patient_id,age,sex,kps,ldh``, rows shuffled),
``classes.json``, ``manifest.json`` (everything injected, per patient: source, attributes, lesion geometry, corrupt
files, DICOM folders, clinical status) and ``README.md``.

Cost of the default cohort (360 patients, 96^3; ``python -m monai_dymo.data brain-cohort``, one thread pinned to one
core): 87 s of CPU time (user + sys; 4 min 13 s wall on a shared, oversubscribed 2-core machine), 239 MB on disk.

API: :func:`generate_brain_cohort` writes the cohort; :func:`iter_cohort_patients` yields the same patients in memory
(before missingness); :func:`plan_missingness` draws the missingness alone; :func:`synthesize_patient` makes one patient
from one :class:`BrainSource` (:func:`load_brain_sources`); :func:`write_dicom_series` writes an axial MR series.

All randomness comes from :class:`numpy.random.SeedSequence` streams of ``seed``: the design (class, source, split),
each patient's anatomy / lesion / clinical values, the missingness, and the DICOM choice are independent streams, so
turning DICOM export off gives the same voxels in NIfTI form. Nothing here runs a model.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = [
    "SEQUENCES",
    "CLASSES",
    "CLINICAL_FIELDS",
    "ATTRIBUTE_TABLES",
    "DEFAULT_FOV_MM",
    "BrainSource",
    "find_brain_samples",
    "load_brain_sources",
    "cohort_affine",
    "synthesize_patient",
    "write_dicom_series",
    "iter_cohort_patients",
    "plan_missingness",
    "generate_brain_cohort",
]

#: MRI sequences, in datalist / modality order
SEQUENCES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
#: class names; the datalist ``label`` is the index in this tuple
CLASSES: tuple[str, ...] = ("glioma-like", "metastasis-like", "meningioma-like")
#: clinical CSV columns after ``patient_id`` and their kind
CLINICAL_FIELDS: dict[str, str] = {"age": "continuous", "sex": "categorical", "kps": "continuous", "ldh": "continuous"}
#: side of the cube (mm) covered by the stored grid; 96^3 voxels -> 2.25 mm
DEFAULT_FOV_MM = 216.0
#: P(attribute value | class), rows = classes in :data:`CLASSES` order; each attribute shows in one sequence
ATTRIBUTE_TABLES: dict[str, dict[str, Any]] = {
    "enhancement": {"sequence": "t1c", "values": ("none", "ring", "solid"),
                    "p": ((0.25, 0.65, 0.10), (0.10, 0.45, 0.45), (0.10, 0.10, 0.80))},
    "oedema": {"sequence": "flair", "values": ("small", "medium", "large"),
               "p": ((0.10, 0.65, 0.25), (0.10, 0.20, 0.70), (0.70, 0.20, 0.10))},
    "t2_signal": {"sequence": "t2", "values": ("hypo", "iso", "hyper"),
                  "p": ((0.10, 0.20, 0.70), (0.60, 0.20, 0.20), (0.15, 0.70, 0.15))},
    "t1_signal": {"sequence": "t1", "values": ("hypo", "iso", "bright_spots"),
                  "p": ((0.70, 0.20, 0.10), (0.20, 0.20, 0.60), (0.15, 0.70, 0.15))},
}
# shared lesion geometry per class (weak): P(number of blobs = 1, 2, 3), radius range (mm), centre depth range (mm;
# meningioma-like: plus 0.3 x radius, so that the lesion touches the brain surface)
_BLOBS_P = ((0.80, 0.20, 0.0), (0.55, 0.30, 0.15), (0.85, 0.15, 0.0))
_RADIUS_MM = ((10.0, 18.0), (7.0, 15.0), (8.0, 17.0))
_DEPTH_MM = ((12.0, 34.0), (8.0, 30.0), (5.0, 22.0))
_OEDEMA_FACTOR = {"small": (0.1, 0.3), "medium": (0.5, 0.9), "large": (1.1, 1.7)}
# clinical: age N(mean, sd), P(female), KPS N(mean, sd), LDH N(mean, sd) per class
_CLINICAL = (
    {"age": (54.0, 14.0), "female": 0.40, "kps": (74.0, 13.0), "ldh": (215.0, 50.0)},
    {"age": (63.0, 11.0), "female": 0.50, "kps": (66.0, 14.0), "ldh": (290.0, 80.0)},
    {"age": (59.0, 13.0), "female": 0.70, "kps": (84.0, 10.0), "ldh": (200.0, 45.0)},
)
# normalised lesion intensities (brain median = 1) per sequence
_BASE_SCALE = {"t1": 320.0, "t1c": 360.0, "t2": 400.0, "flair": 280.0}
_ABSENT_P = {"t1": 0.22, "t1c": 0.26, "t2": 0.20, "flair": 0.24}
_SOURCE_FILES = tuple(f"{s}.nii.gz" for s in SEQUENCES)
_SOURCE_BLOCK_MM = 2
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# ------------------------------------------------------------------------------------------------------------ sources
def find_brain_samples(source_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ``<case>/{t1,t1c,t2,flair}.nii.gz``.

    ``source_dir`` if given; else ``$MONAI_DYMO_BRAIN_SAMPLES``; else the first existing of
    ``../shared/data/brain_mri_samples`` relative to the current directory and to the repository root.

    Raises:
        FileNotFoundError: no such folder, or it holds no complete case.
    """
    if source_dir is not None:
        candidates = [Path(source_dir)]
    elif os.environ.get("MONAI_DYMO_BRAIN_SAMPLES"):
        candidates = [Path(os.environ["MONAI_DYMO_BRAIN_SAMPLES"])]
    else:
        rel = Path("shared") / "data" / "brain_mri_samples"
        candidates = [Path.cwd().parent / rel, Path(__file__).resolve().parents[2].parent / rel]
    for folder in candidates:
        if folder.is_dir() and _source_cases(folder):
            return folder
    raise DyMoFileNotFoundError(
        f"brain MRI samples not found (looked in {', '.join(str(c) for c in candidates)}): expected case folders "
        f"each holding {', '.join(_SOURCE_FILES)}; pass source_dir / --source or set MONAI_DYMO_BRAIN_SAMPLES"
    )


def _source_cases(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and all((p / f).is_file() for f in _SOURCE_FILES))


class BrainSource:
    """One real brain prepared for resampling.

    Attributes:
        name: case folder name.
        volumes: float32 ``[4, X, Y, Z]`` (sequence order :data:`SEQUENCES`), RAS voxel order, voxel size ``voxel_mm``,
            each sequence divided by its brain median, zero outside the brain, real lesion replaced.
        mask: bool ``[X, Y, Z]`` brain mask.
        depth: float32 ``[X, Y, Z]`` distance to the brain surface in mm (0 outside).
        voxel_mm: voxel size (mm).
        center_mm: ``(3,)`` centre of the brain bounding box in millimetres of the (cropped) 1 mm source grid.
        replaced_voxels: number of 2 mm voxels replaced by mirrored tissue (the suppressed real lesion).
    """

    def __init__(self, name: str, volumes: np.ndarray, mask: np.ndarray, depth: np.ndarray, voxel_mm: float,
                 center_mm: np.ndarray, replaced_voxels: int) -> None:
        self.name, self.volumes, self.mask, self.depth = name, volumes, mask, depth
        self.voxel_mm, self.center_mm, self.replaced_voxels = float(voxel_mm), center_mm, int(replaced_voxels)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Average ``k^3`` blocks over the last three axes (trailing voxels that do not fill a block are dropped)."""
    if k == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    t = t.reshape(-1, *a.shape[-3:])[None]  # [1, C, X, Y, Z]
    return F.avg_pool3d(t, k)[0].reshape(*a.shape[:-3], *(s // k for s in a.shape[-3:])).numpy()


def _suppress_real_lesion(vol: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Replace the source's own tumour by the mirrored contralateral hemisphere (2 mm grid, normalised volumes).

    The lesion is the largest FLAIR-hyperintense component (smoothed FLAIR > 1.5 x brain median), grown by the voxels
    of the same hemisphere whose summed left-right asymmetry over the four sequences is high, closed and filled.
    """
    from scipy import ndimage as ndi

    flair = ndi.gaussian_filter(vol[3], 1.0)
    abnormal = (flair > 1.5) & mask
    lab, n = ndi.label(abnormal)
    if n == 0:
        return vol, mask, 0
    sizes = ndi.sum(abnormal, lab, range(1, n + 1))
    core = lab == (int(np.argmax(sizes)) + 1)
    les = ndi.binary_dilation(core, iterations=2)
    les = ndi.binary_closing(np.pad(les, 6), iterations=6)[6:-6, 6:-6, 6:-6]
    for z in range(les.shape[2]):
        les[:, :, z] = ndi.binary_fill_holes(les[:, :, z])
    les = ndi.binary_fill_holes(les) & mask
    xs_brain = np.flatnonzero(mask.any(axis=(1, 2)))
    xc = (xs_brain[0] + xs_brain[-1]) / 2.0
    xs = np.arange(vol.shape[1])
    xm = np.clip(np.round(2 * xc - xs).astype(int), 0, vol.shape[1] - 1)
    asym = ndi.gaussian_filter(np.abs(vol - vol[:, xm]).sum(0) * mask * mask[xm], 1.5)
    side = (xs < xc) if np.argwhere(core)[:, 0].mean() < xc else (xs > xc)
    cand = (asym > max(2.2, float(np.percentile(asym[mask], 95)))) & side[:, None, None]
    lab, _ = ndi.label(cand | les)
    keep = np.unique(lab[les])
    les = ndi.binary_fill_holes(ndi.binary_dilation(np.isin(lab, keep[keep > 0]), iterations=1)) & mask
    w = ndi.gaussian_filter(les.astype(np.float32), 1.5) * ~les[xm]  # never copy lesion tissue from the mirror
    out = vol * (1 - w) + vol[:, xm] * w
    new_mask = (mask * (1 - w) + mask[xm] * w) > 0.5
    return (out * new_mask).astype(np.float32), new_mask, int(les.sum())


@functools.lru_cache(maxsize=4)
def _load_sources_cached(folder: str, factor: int) -> tuple[BrainSource, ...]:
    import nibabel as nib
    from scipy import ndimage as ndi

    out = []
    for case in _source_cases(Path(folder)):
        arrs = []
        for f in _SOURCE_FILES:
            try:
                img = nib.as_closest_canonical(nib.load(str(case / f)))
                arrs.append(np.asarray(img.dataobj))
            except Exception as e:
                raise DyMoInputError(f"brain sample {case.name}: cannot read {case / f}: {type(e).__name__}: "
                                     f"{e}") from e
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise DyMoInputError(f"brain sample {case.name}: sequences have different shapes {sorted(shapes)}")
        mask1 = np.sum([a > 0 for a in arrs], axis=0, dtype=np.int8) >= 2  # skull-stripped: background <= 0
        # crop to the brain (start even, so the 2 mm blocks stay aligned with the 1 mm index grid)
        idx = np.argwhere(mask1)
        lo = np.maximum(idx.min(0) - 2, 0) // 2 * 2
        hi = np.minimum(idx.max(0) + 3, mask1.shape)
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask1 = mask1[crop]
        vol = np.stack([np.where(mask1, a[crop], 0) for a in arrs]).astype(np.float32)
        vol = _block_mean(vol, _SOURCE_BLOCK_MM)
        mask = ndi.binary_fill_holes(_block_mean(mask1.astype(np.float32), _SOURCE_BLOCK_MM) > 0.5)
        med = np.array([np.median(v[mask]) for v in vol], dtype=np.float32)
        if not np.all(med > 0):
            raise DyMoInputError(f"brain sample {case.name}: a sequence has a non-positive brain median {med.tolist()}")
        vol = (vol / med[:, None, None, None]) * mask
        vol, mask, replaced = _suppress_real_lesion(vol.astype(np.float32), mask)
        vol = _block_mean(vol, factor).astype(np.float32)
        mask = _block_mean(mask.astype(np.float32), factor) > 0.5
        vol *= mask
        voxel = float(_SOURCE_BLOCK_MM * factor)
        depth = (ndi.distance_transform_edt(np.pad(mask, 1)) [1:-1, 1:-1, 1:-1] * voxel).astype(np.float32)
        idx = np.argwhere(mask)
        center = (idx.min(0) + idx.max(0)) / 2.0 * voxel + (voxel - 1) / 2.0  # mm in the cropped grid
        out.append(BrainSource(case.name, np.ascontiguousarray(vol), mask, depth, voxel, center, replaced))
    if not out:
        raise DyMoFileNotFoundError(f"no case folder with {', '.join(_SOURCE_FILES)} in {folder}")
    return tuple(out)


def load_brain_sources(source_dir: str | os.PathLike | None = None, spacing_mm: float = 2.25) -> tuple[BrainSource, ...]:
    """Prepared real brains (see :class:`BrainSource`) for a stored grid of ``spacing_mm``; cached per process."""
    folder = find_brain_samples(source_dir)
    factor = max(1, int(math.floor(spacing_mm / _SOURCE_BLOCK_MM)))
    return _load_sources_cached(str(folder.resolve()), factor)


# ----------------------------------------------------------------------------------------------------------- geometry
def cohort_affine(size: int, fov_mm: float = DEFAULT_FOV_MM) -> np.ndarray:
    """RAS affine ``[4, 4]`` of the stored grid: isotropic ``fov_mm / size`` voxels, brain centre at the origin."""
    s = fov_mm / size
    aff = np.diag([s, s, s, 1.0])
    aff[:3, 3] = -(size - 1) / 2.0 * s
    return aff


def _interp_matrix(ctrl: int, size: int) -> torch.Tensor:
    """``[size, ctrl]`` linear interpolation weights from ``ctrl`` evenly spaced control points (ends aligned)."""
    pos = torch.linspace(0, ctrl - 1, size, dtype=torch.float64)
    return torch.clamp(1 - (pos[:, None] - torch.arange(ctrl, dtype=torch.float64)[None]).abs(), min=0).float()


def _smooth_field(rng: np.random.Generator, channels: int, ctrl: int, size: int, scale: float) -> torch.Tensor:
    """``[channels, size, size, size]`` smooth random field: N(0, scale) on a ``ctrl^3`` grid, trilinear upsampled
    (separably, as three small matrix products)."""
    c = torch.from_numpy(rng.standard_normal((channels, ctrl, ctrl, ctrl)).astype(np.float32) * scale)
    w = _interp_matrix(ctrl, size)
    c = torch.tensordot(c, w, dims=([3], [1]))  # [ch, a, b, k]
    c = torch.tensordot(c, w, dims=([2], [1])).permute(0, 1, 3, 2)  # [ch, a, k, j] -> [ch, a, j, k]
    return torch.tensordot(c, w, dims=([1], [1])).permute(0, 3, 1, 2).contiguous()  # [ch, j, k, i] -> [ch, i, j, k]


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _warp(src: BrainSource, rng: np.random.Generator, size: int, fov_mm: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Resample the source (4 sequences, mask, depth) onto the stored grid through a random affine + elastic map.

    Returns ``[6, size, size, size]`` (sequences, mask, depth) and the transform parameters.
    """
    spacing = fov_mm / size
    flip = bool(rng.random() < 0.5)
    angles = rng.uniform(-8, 8, 3) * np.pi / 180
    scales = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, 3)
    shift = rng.uniform(-5, 5, 3)
    a = _rotation(angles) @ np.diag(scales)
    if flip:
        a = a @ np.diag([-1.0, 1.0, 1.0])
    disp = _smooth_field(rng, 3, 5, size, 3.0)  # mm
    lin = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0) * spacing
    p = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1)  # [n, n, n, 3] world mm
    a_t = torch.from_numpy(a.astype(np.float32))
    offset = torch.from_numpy((src.center_mm + shift).astype(np.float32))
    q = p @ a_t.T + disp.permute(1, 2, 3, 0) + offset  # source mm (1 mm index units)
    q = (q - (src.voxel_mm - 1) / 2.0) / src.voxel_mm  # source voxel index
    dims = torch.tensor(src.mask.shape, dtype=torch.float32)
    grid = (2 * q / (dims - 1) - 1).flip(-1)[None]  # grid_sample wants (z, y, x) for an input [N, C, X, Y, Z]
    stack = np.concatenate([src.volumes, src.mask[None].astype(np.float32), src.depth[None]], axis=0)
    out = F.grid_sample(torch.from_numpy(stack)[None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0]
    params = {"flip_lr": flip, "rotation_deg": np.round(angles * 180 / np.pi, 3).tolist(),
              "scale": np.round(scales, 4).tolist(), "shift_mm": np.round(shift, 3).tolist()}
    return out, params


# ------------------------------------------------------------------------------------------------------------- lesion
def _draw_attributes(label: int, rng: np.random.Generator) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name, table in ATTRIBUTE_TABLES.items():
        attrs[name] = table["values"][int(rng.choice(3, p=table["p"][label]))]
    attrs["num_blobs"] = int(rng.choice(3, p=_BLOBS_P[label])) + 1
    return attrs


def _draw_clinical(label: int, rng: np.random.Generator) -> dict[str, Any]:
    c = _CLINICAL[label]
    age = int(np.clip(round(rng.normal(*c["age"])), 18, 95))
    sex = "F" if rng.random() < c["female"] else "M"
    kps = int(np.clip(10 * round(rng.normal(*c["kps"]) / 10), 30, 100))
    ldh = int(np.clip(round(rng.normal(*c["ldh"])), 90, 900))
    return {"age": age, "sex": sex, "kps": kps, "ldh": ldh}


def _place_blobs(label: int, attrs: dict[str, Any], mask: torch.Tensor, depth: torch.Tensor, spacing: float,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    """Blob centres (world mm), radii, core fractions and oedema factors; centres at class-dependent depths."""
    size = mask.shape[0]
    blobs: list[dict[str, Any]] = []
    dlo, dhi = _DEPTH_MM[label]
    inside = mask & (depth > 0)
    for b in range(attrs["num_blobs"]):
        r = float(rng.uniform(*_RADIUS_MM[label])) * (1.0 if b == 0 else 0.75)
        lo, hi = (dlo, dhi) if label != 2 else (dlo + 0.3 * r, dhi + 0.3 * r)
        cand = torch.nonzero(inside & (depth >= lo) & (depth <= hi))
        if cand.shape[0] == 0:
            cand = torch.nonzero(inside & (depth >= depth.max() * 0.5))
        for _ in range(20):  # keep blobs apart
            idx = cand[int(rng.integers(cand.shape[0]))].numpy().astype(np.float64)
            centre = (idx - (size - 1) / 2.0) * spacing
            if all(np.linalg.norm(centre - np.asarray(o["center_mm"])) > 1.5 * (r + o["radius_mm"]) for o in blobs):
                break
        lo_o, hi_o = _OEDEMA_FACTOR[attrs["oedema"]]
        blobs.append({
            "center_mm": np.round(centre, 2).tolist(),
            "radius_mm": round(r, 2),
            "core_fraction": round(float(rng.uniform(0.45, 0.65)), 3),
            "oedema_factor": round(float(rng.uniform(lo_o, hi_o)), 3),
        })
    return blobs


def _soft(x: torch.Tensor, width: float) -> torch.Tensor:
    return torch.sigmoid(x / max(width, 1e-3))


def _paint_lesion(vols: torch.Tensor, mask: torch.Tensor, blobs: list[dict[str, Any]], attrs: dict[str, Any],
                  spacing: float, rng: np.random.Generator) -> None:
    """In place: paint the blobs into the normalised sequences ``vols [4, n, n, n]``."""
    size = vols.shape[-1]
    lin = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0) * spacing
    fields = _smooth_field(rng, 2, 6, size, 1.0)  # shape irregularity, texture
    irregular, texture = fields[0], fields[1]
    spots = torch.zeros_like(vols[0])
    lesion = torch.zeros_like(vols[0])
    core = torch.zeros_like(vols[0])
    oedema = torch.zeros_like(vols[0])
    for b in blobs:
        cx, cy, cz = b["center_mm"]
        d2 = ((lin - cx) ** 2)[:, None, None] + ((lin - cy) ** 2)[None, :, None] + ((lin - cz) ** 2)[None, None, :]
        rho = d2.sqrt_() / (b["radius_mm"] * (1 + 0.15 * irregular))
        w = spacing / b["radius_mm"] * 0.5
        lesion = torch.maximum(lesion, _soft(1 - rho, w))
        core = torch.maximum(core, _soft(b["core_fraction"] - rho, w))
        oedema = torch.maximum(oedema, _soft(1 + b["oedema_factor"] - rho, 2 * w))
        if attrs["t1_signal"] == "bright_spots":  # 3-5 small haemorrhagic foci inside the blob
            for _ in range(int(rng.integers(3, 6))):
                d = rng.standard_normal(3)
                sc = np.asarray(b["center_mm"]) + d / np.linalg.norm(d) * rng.uniform(0, 0.6) * b["radius_mm"]
                sr = max(0.25 * b["radius_mm"], 1.2 * spacing)
                d2 = (((lin - sc[0]) ** 2)[:, None, None] + ((lin - sc[1]) ** 2)[None, :, None]
                      + ((lin - sc[2]) ** 2)[None, None, :])
                spots = torch.maximum(spots, _soft(1 - d2.sqrt_() / sr, spacing / sr * 0.5))
    m = mask.float()
    lesion, core = lesion * m, core * m
    oedema = oedema * m * (1 - lesion)
    rim = (lesion - core).clamp_min(0)
    tex = 1 + 0.08 * texture

    t1_val = {"hypo": 0.55, "iso": 1.0, "bright_spots": 0.95}[attrs["t1_signal"]]
    t1_lesion = torch.full_like(lesion, t1_val) * tex
    if attrs["t1_signal"] == "bright_spots":
        t1_lesion = t1_lesion + 1.3 * spots
    t2_val = {"hypo": 0.5, "iso": 1.05, "hyper": 2.4}[attrs["t2_signal"]]
    enh = attrs["enhancement"]
    if enh == "ring":
        t1c_lesion = t1_lesion * (2.4 * rim + 0.8 * core) / lesion.clamp_min(1e-3)
    elif enh == "solid":
        t1c_lesion = t1_lesion * 2.2
    else:
        t1c_lesion = t1_lesion
    targets = {
        "t1": (t1_lesion, 0.85),
        "t1c": (t1c_lesion, 0.85),
        "t2": (torch.full_like(lesion, t2_val) * tex, 1.25),
        "flair": (torch.full_like(lesion, 1.45) * tex, 1.9),
    }
    for k, seq in enumerate(SEQUENCES):
        les_val, oed_val = targets[seq]
        v = vols[k]
        v.mul_(1 - lesion - oedema).add_(lesion * les_val).add_(oedema * oed_val * tex)


def _recontrast(vols: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gamma, bias field, scanner scale and noise per sequence; int16 ``[4, n, n, n]`` (0 outside the brain)."""
    size = vols.shape[-1]
    bias = torch.exp(_smooth_field(rng, 4, 3, size, 0.12))
    m = mask.float()
    out = np.zeros(vols.shape, dtype=np.int16)
    params: dict[str, Any] = {}
    for k, seq in enumerate(SEQUENCES):
        gamma = float(rng.uniform(0.8, 1.25))
        scale = float(_BASE_SCALE[seq] * np.exp(rng.uniform(-0.4, 0.4)))
        sigma = float(rng.uniform(0.01, 0.03))
        noise = torch.from_numpy(rng.standard_normal((size, size, size), dtype=np.float32))
        v = (vols[k].clamp_min(0).pow(gamma) * bias[k] + sigma * noise).abs() * m * scale
        out[k] = np.clip(np.rint(v.numpy()), 0, 32767).astype(np.int16)
        params[seq] = {"gamma": round(gamma, 4), "scale": round(scale, 2), "noise_sigma": round(sigma, 4)}
    return out, params


def synthesize_patient(
    source: BrainSource, label: int, rng: np.random.Generator, size: int = 96, fov_mm: float = DEFAULT_FOV_MM
) -> tuple[np.ndarray, dict[str, Any]]:
    """One synthetic patient from ``source`` with a lesion of class ``label``.

    Returns:
        int16 ``[4, size, size, size]`` (sequence order :data:`SEQUENCES`, RAS voxel order, affine
        :func:`cohort_affine`) and a record (``source``, ``attributes``, ``blobs``, ``transform``, ``contrast``,
        ``clinical``: the complete clinical values before any blanking).
    """
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    spacing = fov_mm / size
    warped, tparams = _warp(source, rng, size, fov_mm)
    mask = warped[4] > 0.5
    vols = warped[:4] * mask
    attrs = _draw_attributes(label, rng)
    blobs = _place_blobs(label, attrs, mask, warped[5], spacing, rng)
    _paint_lesion(vols, mask, blobs, attrs, spacing, rng)
    arr, cparams = _recontrast(vols, mask, rng)
    clinical = _draw_clinical(label, rng)
    record = {"source": source.name, "attributes": attrs, "blobs": blobs, "transform": tparams,
              "contrast": cparams, "clinical": clinical}
    return arr, record


# -------------------------------------------------------------------------------------------------------------- files
def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))  # no timestamp: reproducible bytes


def write_dicom_series(
    arr: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, patient_id: str, series_description: str,
    uid_seed: Sequence[Any] = (),
) -> Path:
    """Write an int16 volume ``[X, Y, Z]`` (RAS voxel order, diagonal ``affine``) as an axial MR DICOM series.

    One file per ``z`` slice (``IM0001.dcm`` ...), standard radiological layout: columns run right -> left and rows
    anterior -> posterior (``ImageOrientationPatient = 1,0,0,0,1,0`` in DICOM's LPS), ``ImagePositionPatient`` of the
    first pixel, ``PixelSpacing``, ``SliceThickness`` / ``SpacingBetweenSlices``, signed 16-bit pixels. UIDs derive
    from ``uid_seed`` (deterministic output).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    aff = np.asarray(affine, dtype=np.float64)
    if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))) or np.any(np.diag(aff)[:3] <= 0):
        raise ValueError(f"write_dicom_series: expected a diagonal RAS affine with positive spacing, got {aff.tolist()}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = np.diag(aff)[:3]
    nx, ny, nz = arr.shape
    seed = [str(s) for s in uid_seed] + [patient_id, series_description]
    study, series, frame = (generate_uid(entropy_srcs=seed + [tag]) for tag in ("study", "series", "frame"))
    # pixel (row r, column c) of slice k is voxel (nx-1-c, ny-1-r, k): first pixel = voxel (nx-1, ny-1, k)
    x0_ras = aff[0, 3] + (nx - 1) * sx
    y0_ras = aff[1, 3] + (ny - 1) * sy
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=seed + [f"slice{k}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "MR"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1 + SEQUENCES.index(series_description) if series_description in SEQUENCES else 1
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(-x0_ras), float(-y0_ras), float(aff[2, 3] + k * sz)]
        ds.SliceLocation = float(aff[2, 3] + k * sz)
        ds.PixelSpacing = [float(sy), float(sx)]  # row spacing, column spacing
        ds.SliceThickness = float(sz)
        ds.SpacingBetweenSlices = float(sz)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(arr[::-1, ::-1, k].T.astype("<i2")).tobytes()
        ds.save_as(str(folder / f"IM{k + 1:04d}.dcm"), enforce_file_format=True)
    return folder


# ------------------------------------------------------------------------------------------------------------- cohort
def _design(num_patients: int, num_sources: int, split_fractions: Sequence[float], seed: int):
    """Balanced classes, sources balanced within each class, class-stratified splits."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    labels = np.arange(num_patients) % len(CLASSES)
    labels = labels[rng.permutation(num_patients)]
    sources = np.zeros(num_patients, dtype=np.int64)
    splits = np.empty(num_patients, dtype=object)
    names = ("training", "validation", "testing")
    fr = np.asarray(split_fractions, dtype=np.float64)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        sources[idx] = (np.arange(idx.size) + int(rng.integers(num_sources))) % num_sources
        order = rng.permutation(idx)
        exact = fr / fr.sum() * idx.size
        counts = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - counts), kind="stable")[: idx.size - counts.sum()]:
            counts[j] += 1  # largest remainders
        for j in range(len(counts)):  # every split gets each class when the class has enough patients
            if counts[j] == 0 and fr[j] > 0 and idx.size >= int((fr > 0).sum()):
                counts[j] += 1
                counts[int(np.argmax(counts))] -= 1
        start = 0
        for name, n in zip(names, counts):
            splits[order[start:start + n]] = name
            start += n
    return labels, sources, splits


def iter_cohort_patients(
    num_patients: int = 360,
    size: int = 96,
    seed: int = 0,
    source_dir: str | os.PathLike | None = None,
    fov_mm: float = DEFAULT_FOV_MM,
    split_fractions: Sequence[float] = (4, 1, 1),
) -> Iterator[tuple[str, int, str, np.ndarray, dict[str, Any]]]:
    """The cohort's patients in memory, before any missingness: ``(patient_id, label, split, volumes, record)``.

    ``volumes`` is int16 ``[4, size, size, size]`` (see :func:`synthesize_patient`); the voxels are exactly those that
    :func:`generate_brain_cohort` writes with the same arguments.
    """
    sources = load_brain_sources(source_dir, fov_mm / size)
    labels, src_idx, splits = _design(num_patients, len(sources), split_fractions, seed)
    for i in range(num_patients):
        prng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
        arr, rec = synthesize_patient(sources[src_idx[i]], int(labels[i]), prng, size=size, fov_mm=fov_mm)
        yield _patient_id(i), int(labels[i]), str(splits[i]), arr, rec


def _patient_id(i: int) -> str:
    return f"BC{i + 1:04d}"


def _default_count(rate: float, n: int) -> int:
    return max(1, int(round(rate * n)))


def plan_missingness(
    num_patients: int,
    seed: int = 0,
    absent_rates: Mapping[str, float] | None = None,
    num_corrupt: int | None = None,
    num_dicom: int | None = None,
    num_missing_clinical: int | None = None,
    num_blank_clinical: int | None = None,
    blank_field_rate: float = 0.06,
    sentinel_rate: float = 0.03,
) -> dict[str, Any]:
    """Which sequences are absent, corrupt or DICOM and which clinical cells / rows are blank or missing.

    Independent of the class and of the voxels (streams ``[seed, 2]`` and ``[seed, 3]``). Guarantees: a corrupt file
    only where another sequence of the patient stays readable (one corrupt file per patient at most); a missing or
    all-blank clinical row only where a readable sequence remains; patients with no sequence at all keep a complete
    clinical row; DICOM only for readable sequences (mostly T1). See :func:`generate_brain_cohort` for the arguments.

    Returns:
        ``present`` bool ``[N, 4]`` (not absent), ``readable`` bool ``[N, 4]`` (present and not corrupt), ``corrupt``
        ``{(i, k): kind}``, ``dicom`` set of ``(i, k)``, ``missing_rows`` / ``blank_rows`` sets of ``i``, ``no_image``
        int array, ``cell_blank`` bool ``[N, 4]`` (clinical field order), ``ldh_sentinel`` / ``sex_unknown`` bool ``[N]``.
    """
    n = int(num_patients)
    rates = dict(_ABSENT_P if absent_rates is None else absent_rates)
    mrng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    present = np.stack([mrng.random(n) >= rates.get(s, 0.0) for s in SEQUENCES], axis=1)  # [n, 4]
    n_corrupt = _default_count(0.01, n) if num_corrupt is None else int(num_corrupt)
    n_missing_rows = _default_count(0.03, n) if num_missing_clinical is None else int(num_missing_clinical)
    n_blank_rows = _default_count(0.005, n) if num_blank_clinical is None else int(num_blank_clinical)
    no_image = np.flatnonzero(~present.any(1))  # clinical-only patients: keep their clinical row complete
    # corrupt files only where at least one other sequence stays readable
    corrupt: dict[tuple[int, int], str] = {}
    kinds = ("zero_bytes", "random_bytes", "truncated_gzip")
    pairs = [(i, k) for i in range(n) for k in range(4) if present[i, k] and present[i].sum() >= 2]
    order = mrng.permutation(len(pairs))
    used: set[int] = set()
    want = [kind for kind in kinds for _ in range(n_corrupt)]
    for j in order:
        if not want:
            break
        i, k = pairs[j]
        if i in used:
            continue
        corrupt[(i, k)] = want.pop(0)
        used.add(i)
    readable = present.copy()
    for (i, k) in corrupt:
        readable[i, k] = False
    # clinical rows: missing entirely / all blank, only for patients that keep a readable image
    eligible = [i for i in mrng.permutation(n) if readable[i].any() and present[i].any()]
    missing_rows = set(int(i) for i in eligible[:n_missing_rows])
    blank_rows = set(int(i) for i in eligible[n_missing_rows:n_missing_rows + n_blank_rows])
    cell_blank = mrng.random((n, len(CLINICAL_FIELDS))) < blank_field_rate
    ldh_sentinel = mrng.random(n) < sentinel_rate
    sex_unknown = mrng.random(n) < sentinel_rate
    cell_blank[no_image] = False
    ldh_sentinel[no_image] = False
    sex_unknown[no_image] = False
    # DICOM: stream [seed, 3]; mostly T1, among readable sequences
    drng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    n_dicom = _default_count(0.03, n) if num_dicom is None else int(num_dicom)
    dicom: set[tuple[int, int]] = set()
    for i in drng.permutation(n):
        if len(dicom) >= n_dicom:
            break
        k = 0 if drng.random() < 0.7 else int(drng.integers(4))
        if readable[i, k]:
            dicom.add((int(i), k))
    return {"present": present, "readable": readable, "corrupt": corrupt, "dicom": dicom, "missing_rows": missing_rows,
            "blank_rows": blank_rows, "no_image": no_image, "cell_blank": cell_blank, "ldh_sentinel": ldh_sentinel,
            "sex_unknown": sex_unknown}


def generate_brain_cohort(
    output_dir: str | os.PathLike = "outputs/brain_cohort",
    source_dir: str | os.PathLike | None = None,
    num_patients: int = 360,
    size: int = 96,
    seed: int = 0,
    fov_mm: float = DEFAULT_FOV_MM,
    split_fractions: Sequence[float] = (4, 1, 1),
    absent_rates: Mapping[str, float] | None = None,
    num_corrupt: int | None = None,
    num_dicom: int | None = None,
    num_missing_clinical: int | None = None,
    num_blank_clinical: int | None = None,
    blank_field_rate: float = 0.06,
    sentinel_rate: float = 0.03,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate the synthetic brain MRI + clinical cohort (see the module docstring) into ``output_dir``.

    Args:
        output_dir: output folder (created; must be empty or absent unless ``overwrite``).
        source_dir: folder of real cases ``<case>/{t1,t1c,t2,flair}.nii.gz`` (see :func:`find_brain_samples`).
        num_patients: patients (at least 3); classes balanced, splits ``split_fractions`` (default 4:1:1) per class.
        size: stored grid ``size^3`` over a ``fov_mm`` cube (96 -> 2.25 mm voxels).
        seed: master seed; same arguments and seed give byte-identical NIfTI files, CSV and JSON.
        absent_rates: per sequence probability of being absent (default t1 .22, t1c .26, t2 .20, flair .24).
        num_corrupt: corrupt sequence files per kind (zero-byte, random bytes, truncated gzip); default 1 % of patients
            (at least 1).
        num_dicom: sequences stored as DICOM series folders (default 3 % of patients, at least 1; 0 = none).
        num_missing_clinical: patients left out of ``clinical.csv`` (default 3 %, at least 1).
        num_blank_clinical: patients whose clinical row is all blank (default 0.5 %, at least 1).
        blank_field_rate: probability of each clinical cell being blank.
        sentinel_rate: probability of ``ldh = -999`` and, separately, of ``sex = "unknown"``.
        overwrite: remove an existing non-empty ``output_dir`` first.
        progress: print one line per 50 patients.

    Returns:
        ``{"root", "datalist", "clinical", "classes", "manifest", "readme"}`` paths.
    """
    start = time.perf_counter()
    if num_patients < len(CLASSES):
        raise ValueError(f"num_patients must be at least {len(CLASSES)}, got {num_patients}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    rates = dict(_ABSENT_P if absent_rates is None else absent_rates)
    unknown = set(rates) - set(SEQUENCES)
    if unknown or any(not 0 <= float(r) < 1 for r in rates.values()):
        raise ValueError(f"absent_rates: keys must be in {SEQUENCES} and values in [0, 1), got {dict(rates)}")
    source_folder = find_brain_samples(source_dir)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty (use overwrite=True / --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    spacing = fov_mm / size
    sources = load_brain_sources(source_folder, spacing)
    affine = cohort_affine(size, fov_mm)
    n = num_patients
    pids = [_patient_id(i) for i in range(n)]
    labels, src_idx, splits = _design(n, len(sources), split_fractions, seed)

    plan = plan_missingness(
        n, seed, rates, num_corrupt=num_corrupt, num_dicom=num_dicom, num_missing_clinical=num_missing_clinical,
        num_blank_clinical=num_blank_clinical, blank_field_rate=blank_field_rate, sentinel_rate=sentinel_rate,
    )
    present, corrupt, dicom = plan["present"], plan["corrupt"], plan["dicom"]
    missing_rows, blank_rows, no_image = plan["missing_rows"], plan["blank_rows"], plan["no_image"]
    cell_blank, ldh_sentinel, sex_unknown = plan["cell_blank"], plan["ldh_sentinel"], plan["sex_unknown"]

    # ---- patients
    entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "testing": []}
    records: list[dict[str, Any]] = []
    clinical_rows: list[dict[str, Any]] = []
    patients = iter_cohort_patients(n, size, seed, source_folder, fov_mm, split_fractions)
    for i, (pid, _, _, arr, rec) in enumerate(patients):
        byte_rng = np.random.default_rng(np.random.SeedSequence([seed, 5, i]))  # content of random-bytes files
        entry: dict[str, Any] = {"patient_id": pid}
        files: dict[str, Any] = {}
        for k, seq in enumerate(SEQUENCES):
            if not present[i, k]:
                entry[seq] = None
                files[seq] = {"status": "absent"}
                continue
            if (i, k) in dicom:
                rel = f"images/{pid}/{seq}"
                write_dicom_series(arr[k], affine, out / rel, pid, seq, uid_seed=(seed, i))
                files[seq] = {"status": "dicom_series", "path": rel, "num_slices": size}
            else:
                rel = f"images/{pid}/{seq}.nii.gz"
                path = out / rel
                kind = corrupt.get((i, k))
                if kind == "zero_bytes":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"")
                elif kind == "random_bytes":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(byte_rng.bytes(4096))
                else:
                    _save_nifti(arr[k], affine, path)
                    if kind == "truncated_gzip":
                        data = path.read_bytes()
                        path.write_bytes(data[: len(data) // 2])
                files[seq] = {"status": kind or "nifti", "path": rel}
            entry[seq] = rel
        entry["label"] = int(labels[i])
        entries[str(splits[i])].append(entry)
        # clinical row
        values = dict(rec["clinical"])
        status = "complete"
        if i in missing_rows:
            status = "row_missing"
        else:
            row: dict[str, Any] = {"patient_id": pid}
            if i in blank_rows:
                row.update({f: "" for f in CLINICAL_FIELDS})
                status = "all_blank"
            else:
                blanks = []
                for j, f in enumerate(CLINICAL_FIELDS):
                    row[f] = "" if cell_blank[i, j] else values[f]
                    if cell_blank[i, j]:
                        blanks.append(f)
                sentinels = []
                if ldh_sentinel[i] and not cell_blank[i, 3]:
                    row["ldh"] = -999
                    sentinels.append("ldh")
                if sex_unknown[i] and not cell_blank[i, 1]:
                    row["sex"] = "unknown"
                    sentinels.append("sex")
                status = "partial" if blanks or sentinels else "complete"
                rec["clinical_blank_fields"] = blanks
                rec["clinical_sentinel_fields"] = sentinels
            clinical_rows.append(row)
        rec.update({"patient_id": pid, "label": int(labels[i]), "class": CLASSES[labels[i]], "split": str(splits[i]),
                    "files": files, "clinical_status": status, "clinical_values": values})
        del rec["clinical"]
        records.append(rec)
        if progress and (i + 1) % 50 == 0:
            print(f"{i + 1}/{n} patients, {time.perf_counter() - start:.1f} s", flush=True)

    # ---- tables
    crng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    clinical_rows = [clinical_rows[j] for j in crng.permutation(len(clinical_rows))]
    clinical_path = out / "clinical.csv"
    with clinical_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", *CLINICAL_FIELDS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(clinical_rows)
    datalist_path = out / "datalist.json"
    datalist_path.write_text(json.dumps(entries, indent=1) + "\n")
    classes_path = out / "classes.json"
    classes_path.write_text(json.dumps({
        "label_key": "label", "classes": list(CLASSES), "modalities": list(SEQUENCES),
        "clinical_csv": "clinical.csv", "patient_id_column": "patient_id",
        "clinical_fields": CLINICAL_FIELDS, "sentinels": {"ldh": -999, "sex": "unknown"},
    }, indent=1) + "\n")
    summary = _summary(records, entries)
    manifest = {
        "generator": "monai_dymo.data.brain_cohort",
        "seed": seed, "num_patients": n, "size": size, "fov_mm": fov_mm, "spacing_mm": spacing,
        "affine": affine.tolist(), "orientation": "RAS",
        "sources": [{"name": s.name, "replaced_real_lesion_voxels_2mm": s.replaced_voxels} for s in sources],
        "source_dir": str(source_folder),
        "classes": list(CLASSES), "sequences": list(SEQUENCES),
        "attribute_tables": {k: {"sequence": v["sequence"], "values": list(v["values"]),
                                 "p_given_class": [list(r) for r in v["p"]]} for k, v in ATTRIBUTE_TABLES.items()},
        "absent_rates": rates,
        "injected": {
            "corrupt_files": [{"patient_id": pids[i], "sequence": SEQUENCES[k], "kind": kind,
                               "path": f"images/{pids[i]}/{SEQUENCES[k]}.nii.gz"}
                              for (i, k), kind in sorted(corrupt.items())],
            "dicom_series": [{"patient_id": pids[i], "sequence": SEQUENCES[k], "path": f"images/{pids[i]}/{SEQUENCES[k]}"}
                             for (i, k) in sorted(dicom)],
            "clinical_rows_missing": sorted(pids[i] for i in missing_rows),
            "clinical_rows_all_blank": sorted(pids[i] for i in blank_rows),
            "image_free_patients": sorted(pids[i] for i in no_image),
        },
        "summary": summary,
        "patients": records,
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    readme_path = out / "README.md"
    readme_path.write_text(_readme(manifest))
    return {"root": out, "datalist": datalist_path, "clinical": clinical_path, "classes": classes_path,
            "manifest": manifest_path, "readme": readme_path}


def _summary(records: list[dict[str, Any]], entries: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    n = len(records)
    out: dict[str, Any] = {"splits": {k: len(v) for k, v in entries.items()}}
    out["class_counts"] = {split: [sum(e["label"] == c for e in v) for c in range(len(CLASSES))]
                           for split, v in entries.items()}
    out["absent_fraction"] = {s: round(sum(r["files"][s]["status"] == "absent" for r in records) / n, 4)
                              for s in SEQUENCES}
    out["unreadable_fraction"] = {
        s: round(sum(r["files"][s]["status"] in ("absent", "zero_bytes", "random_bytes", "truncated_gzip")
                     for r in records) / n, 4) for s in SEQUENCES}
    statuses = [r["clinical_status"] for r in records]
    out["clinical_status"] = {k: statuses.count(k) for k in ("complete", "partial", "all_blank", "row_missing")}
    out["complete_patients"] = sum(all(r["files"][s]["status"] in ("nifti", "dicom_series") for s in SEQUENCES)
                                   and r["clinical_status"] == "complete" for r in records)
    return out


def _readme(manifest: Mapping[str, Any]) -> str:
    s = manifest["summary"]
    inj = manifest["injected"]
    lines = [
        "# Synthetic brain MRI + clinical cohort (monai_dymo)",
        "",
        f"Generated by `monai_dymo.data.brain_cohort` (seed {manifest['seed']}) from the real brains "
        f"{', '.join(x['name'] for x in manifest['sources'])}: {manifest['num_patients']} patients, "
        f"{manifest['size']}^3 voxels of {manifest['spacing_mm']:.3g} mm (RAS, brain centre at the origin), int16.",
        "Each patient: one real brain, a random affine + elastic deformation, re-contrasting per sequence (gamma, bias",
        "field, scale, noise) and a synthetic lesion whose class shows differently in each sequence and in the clinical",
        "fields. The source brain's own tumour is replaced by mirrored healthy tissue; every class uses every source.",
        "",
        f"Classes (`label` index): {', '.join(f'{i} = {c}' for i, c in enumerate(manifest['classes']))}.",
        "",
        "| attribute | sequence | values | P(value given class), one row per class |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in manifest["attribute_tables"].items():
        lines.append(f"| {name} | {t['sequence']} | {' / '.join(t['values'])} | "
                     f"{'; '.join(' '.join(f'{p:.2f}' for p in row) for row in t['p_given_class'])} |")
    lines += [
        "",
        "Shared lesion geometry (number of blobs, radius, depth below the brain surface) and the clinical fields (age,",
        "sex, KPS, LDH) are weakly class dependent. Missingness does not depend on the class.",
        "",
        "## Files",
        "- `datalist.json`: MONAI `training` / `validation` / `testing` lists; per entry `patient_id`, a path relative to",
        "  this folder or `null` per sequence (a DICOM series is a folder path), and `label`.",
        "- `clinical.csv`: `patient_id,age,sex,kps,ldh`, rows shuffled; blanks, sentinels `ldh = -999`, `sex = unknown`.",
        "- `classes.json`: class names, modality names, clinical fields and sentinels.",
        "- `manifest.json`: generation parameters, everything injected, and per patient the source, lesion attributes",
        "  and geometry (world mm, RAS), transform, contrast and the complete clinical values before blanking.",
        "",
        "## Natural missingness",
        f"- splits {s['splits']}, classes per split {s['class_counts']}",
        f"- absent (null) fraction per sequence: {s['absent_fraction']}",
        f"- absent or unreadable fraction per sequence: {s['unreadable_fraction']}",
        f"- corrupt files: {len(inj['corrupt_files'])} "
        f"({', '.join(sorted({c['kind'] for c in inj['corrupt_files']}))})",
        f"- DICOM series folders: {len(inj['dicom_series'])}",
        f"- clinical rows: {s['clinical_status']}",
        f"- patients with every sequence readable and a complete clinical row: {s['complete_patients']}",
        "",
    ]
    return "\n".join(lines)
