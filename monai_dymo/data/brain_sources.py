"""The real brains the synthetic cohort is made from, prepared once per process for resampling.

Each sequence of a case ``<case>/{t1,t1c,t2,flair}.nii.gz`` is reoriented to RAS, block-averaged to 2 mm (then to
``2 f`` mm) and divided by its brain median; the case's own tumour is replaced by the mirrored contralateral hemisphere
(:class:`BrainSource`).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monai_dymo.data.brain_design import SEQUENCES
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = ["BrainSource", "find_brain_samples", "load_brain_sources"]

_SOURCE_FILES = tuple(f"{s}.nii.gz" for s in SEQUENCES)
_SOURCE_BLOCK_MM = 2


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
