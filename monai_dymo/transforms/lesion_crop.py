"""A region of interest around the lesion, shared by a patient's co-registered volumes, found without labels.

A small cohort cannot teach a network where the lesion is when the lesion is a few voxels of a whole-brain volume
resized to 48^3: it memorises each patient instead. Cropping every sequence around the lesion at the acquired
resolution shows the network what the radiologist looks at. The centre is found in a *guide* sequence in which the
lesion (with its oedema) is the brightest region of the brain, FLAIR for brain tumours: the argmax of the guide
smoothed with a Gaussian (MONAI's ``GaussianSmooth``) inside its foreground eroded by a margin (MONAI's ``erode``; the
rim of the brain is bright in several sequences), or, with ``fraction``, the centroid of the largest connected region
brighter than ``fraction`` times that peak (the peak of FLAIR lies in the oedema ring, one radius away from the
lesion's centre; the ring's region is centred on it). The first *observed* guide of ``guide_keys`` is used; a patient
with none falls back to the centre of the foreground's bounding box of its first observed volume (MONAI's
``generate_spatial_bounding_box``). The centre travels in world coordinates (the guide's affine), so every volume,
whatever its own grid, is cropped around the same point; each crop is MONAI's ``BorderPad`` + ``SpatialCrop`` and
keeps its affine. ``data["roi_guide"]`` records what placed the crop (a modality name or ``"foreground"``).

Array form :class:`BrightestRegionCentre` (one image -> voxel centre), dictionary form :class:`GuidedROICropd`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms.croppad.array import BorderPad, SpatialCrop
from monai.transforms.intensity.array import GaussianSmooth
from monai.transforms.transform import MapTransform, Transform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.transforms.utils_morphological_ops import erode
from monai.utils import ensure_tuple, ensure_tuple_rep
from monai_dymo.keys import DyMoKeys
from monai_dymo.transforms.utils import get_patient_id, is_placeholder, resized_placeholder

__all__ = [
    "ROI_GUIDE_KEY",
    "FOREGROUND_GUIDE",
    "BrightestRegionCentre",
    "GuidedROICropd",
    "GuidedROICropD",
    "GuidedROICropDict",
]

#: sample key recording what placed the region of interest (a guide modality's name or :data:`FOREGROUND_GUIDE`)
ROI_GUIDE_KEY = str(DyMoKeys.ROI_GUIDE)
#: ``roi_guide`` of a patient without an observed guide: the crop is centred on the foreground's bounding box
FOREGROUND_GUIDE = "foreground"


class BrightestRegionCentre(Transform):
    """Voxel index ``[D]`` (int64) of the brightest smoothed region of ``img [C, *spatial]`` inside its eroded foreground.

    Args:
        sigma: Gaussian smoothing in voxels (about the radius of the smallest lesion to find).
        margin: voxels eroded from the foreground (``img != 0``) before the argmax; 0 keeps it whole. A foreground
            that the erosion empties is used whole.
        fraction: None: the argmax of the smoothed image. A number in (0, 1): the centroid (rounded to a voxel) of
            the largest connected region (face-connected, ``scipy.ndimage.label``) of the eroded foreground whose
            smoothed value exceeds ``fraction`` times the peak; the argmax when the peak is not positive.

    Raises:
        ValueError: the image has no foreground.
    """

    def __init__(self, sigma: float = 2.0, margin: int = 3, fraction: float | None = None) -> None:
        if sigma < 0 or margin < 0:
            raise ValueError(f"BrightestRegionCentre: sigma and margin must be >= 0, got {sigma}, {margin}.")
        if fraction is not None and not 0.0 < float(fraction) < 1.0:
            raise ValueError(f"BrightestRegionCentre: fraction must be in (0, 1) or None, got {fraction}.")
        self.smooth = GaussianSmooth(sigma=sigma) if sigma > 0 else None
        self.margin = int(margin)
        self.fraction = None if fraction is None else float(fraction)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = torch.as_tensor(img, dtype=torch.float32).detach()
        if isinstance(x, MetaTensor):
            x = x.as_tensor()
        foreground = (x != 0).any(0)
        if not bool(foreground.any()):
            raise ValueError("BrightestRegionCentre: the image has no foreground (every voxel is 0).")
        inside = foreground
        if self.margin > 0:
            eroded = erode(foreground[None, None].float(), filter_size=2 * self.margin + 1, pad_value=0.0)[0, 0] > 0.5
            inside = eroded if bool(eroded.any()) else foreground
        score = x.mean(0, keepdim=True)
        if self.smooth is not None:
            score = torch.as_tensor(self.smooth(score))
        score = torch.where(inside, score[0], torch.full_like(score[0], -torch.inf))
        flat = int(torch.argmax(score))
        peak = torch.tensor(np.unravel_index(flat, tuple(score.shape)), dtype=torch.int64)
        top = float(score.reshape(-1)[flat])
        if self.fraction is None or top <= 0:
            return peak
        return self._largest_region_centroid((score > self.fraction * top).numpy())

    @staticmethod
    def _largest_region_centroid(mask: np.ndarray) -> torch.Tensor:
        """Rounded centroid ``[D]`` (int64) of the largest connected region of a non-empty boolean ``mask``."""
        labels, count = ndimage.label(mask)
        sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
        sizes[0] = 0
        largest = np.argwhere(labels == int(np.argmax(sizes)))
        return torch.from_numpy(np.rint(largest.mean(0)).astype(np.int64))


class GuidedROICropd(MapTransform):
    """Crop a patient's co-registered volumes (``keys``) to ``roi_size`` around the lesion found in a guide sequence.

    Run after spatial harmonisation (orientation, spacing at the resolution the lesion needs) and before anything that
    needs the final shape. Observed volumes are cropped around the same world point (zero-padded where the region
    leaves the volume); placeholders of missing volumes are recreated as zeros of ``[C, *roi_size]`` with the affine of
    the first crop; ``data["roi_guide"]`` is the guide used (see the module docstring).

    Args:
        keys: the volumes to crop (a patient's co-registered sequences).
        guide_keys: sequences to find the lesion in, by preference (e.g. ``["flair"]``); each must be in ``keys``.
        roi_size: spatial size of the crops, in voxels.
        sigma, margin, fraction: see :class:`BrightestRegionCentre`.

    Raises:
        ValueError: a guide is not one of ``keys``; at run time, a volume without an affine (naming the patient and
            the modality).
    """

    def __init__(
        self,
        keys: KeysCollection,
        guide_keys: Sequence[str] | str,
        roi_size: Sequence[int] | int,
        sigma: float = 2.0,
        margin: int = 3,
        fraction: float | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.guide_keys = tuple(str(g) for g in ensure_tuple(guide_keys))
        unknown = [g for g in self.guide_keys if g not in self.keys]
        if unknown:
            raise ValueError(f"GuidedROICropd: guide(s) {unknown} are not among the cropped keys {list(self.keys)}.")
        size = tuple(int(s) for s in ensure_tuple(roi_size))
        self.roi_size: tuple[int, ...] | int = size[0] if len(size) == 1 else size
        if any(s < 1 for s in size):
            raise ValueError(f"GuidedROICropd: roi_size must be positive, got {size}.")
        self.centre = BrightestRegionCentre(sigma=sigma, margin=margin, fraction=fraction)

    def _world_centre(self, d: Mapping[Hashable, Any], pid: str) -> tuple[np.ndarray, str] | None:
        """World point (mm) the crops are centred on, and what placed it; None when no volume is observed."""
        for key in self.guide_keys:  # an affine maps voxel (i, j, k, 1) to world (x, y, z, 1)
            img = d.get(key)
            if img is not None and not is_placeholder(img):
                return self._to_world(img, self.centre(img).numpy().astype(np.float64), pid, key), key
        for key in self.key_iterator(d):  # type: ignore[arg-type]
            img = d[key]
            if is_placeholder(img):
                continue
            start, end = generate_spatial_bounding_box(img)
            centre = (np.asarray(start, dtype=np.float64) + np.asarray(end, dtype=np.float64) - 1) / 2
            return self._to_world(img, centre, pid, key), FOREGROUND_GUIDE
        return None

    @staticmethod
    def _affine(img: Any, pid: str, key: Hashable) -> np.ndarray:
        if not isinstance(img, MetaTensor):
            raise ValueError(f"patient {pid}, modality {key}: GuidedROICropd needs a MetaTensor with an affine.")
        return np.asarray(img.affine, dtype=np.float64)

    def _to_world(self, img: Any, voxel: np.ndarray, pid: str, key: Hashable) -> np.ndarray:
        return (self._affine(img, pid, key) @ np.append(voxel, 1.0))[: len(voxel)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pid = get_patient_id(d)
        placed = self._world_centre(d, pid)
        if placed is None:  # nothing observed: placeholders only, at the crop's shape
            for key in self.key_iterator(d):
                img = d[key]
                d[key] = resized_placeholder(img, ensure_tuple_rep(self.roi_size, img.ndim - 1))
            d[ROI_GUIDE_KEY] = FOREGROUND_GUIDE
            return d
        world, guide = placed
        roi_size = ensure_tuple_rep(self.roi_size, len(world))
        half = [s // 2 for s in roi_size]
        first: torch.Tensor | None = None
        for key in self.key_iterator(d):
            img = d[key]
            if is_placeholder(img):
                continue
            affine = self._affine(img, pid, key)
            voxel = np.linalg.solve(affine, np.append(world, 1.0))[: len(roi_size)]
            centre = [int(round(v)) + h for v, h in zip(voxel, half)]  # in the padded volume
            padded = BorderPad(spatial_border=[h for h in half for _ in (0, 1)])(img)
            d[key] = SpatialCrop(roi_start=[c - h for c, h in zip(centre, half)],
                                 roi_end=[c - h + s for c, h, s in zip(centre, half, roi_size)])(padded)
            first = d[key] if first is None else first
        for key in self.key_iterator(d):
            img = d[key]
            if is_placeholder(img):
                d[key] = resized_placeholder(img, roi_size, first.affine if isinstance(first, MetaTensor) else None)
        d[ROI_GUIDE_KEY] = guide
        return d


GuidedROICropD = GuidedROICropDict = GuidedROICropd
