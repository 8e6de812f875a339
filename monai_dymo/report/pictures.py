"""Patient pictures of the DyMo report: downsampled thumbnails of each modality input, and which patients keep them.

Pictures are made from the image tensors only (``Tensor[C, *spatial]``); metadata (e.g. DICOM headers of a
``MetaTensor``) is never read.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .records import patient_priority

__all__ = ["PLANES_3D", "image_planes", "save_picture", "PatientPictures"]

#: names of the mid planes of a 3D volume ``[C, X, Y, Z]`` in RAS orientation (MONAI's ``Orientation("RAS")``: X
#: towards the patient's right, Y anterior, Z superior), in the order they are drawn.
PLANES_3D = ("axial", "coronal", "sagittal")


def _plain_tensor(x: Any) -> torch.Tensor:
    """A plain CPU float tensor (a ``MetaTensor``'s metadata is dropped, never read)."""
    t = torch.as_tensor(x)
    if type(t) is not torch.Tensor:
        t = t.as_subclass(torch.Tensor)
    return t.detach().to("cpu", torch.float32)


def _fit(img: torch.Tensor, max_size: int) -> torch.Tensor:
    """Area-downsample ``[k, H, W]`` so that its longer side is at most ``max_size`` (never upsampled)."""
    h, w = img.shape[-2:]
    scale = max_size / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(img[None], size=size, mode="area")[0]


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """Window ``[k, H, W]`` to its 1st-99th percentile and map to ``uint8`` ``[H, W]`` (k=1) or ``[H, W, 3]``.

    A (numerically) constant picture is drawn black if it is 0 (e.g. a zero placeholder), mid-grey otherwise, rather
    than stretching rounding noise to full contrast."""
    img = torch.nan_to_num(img.double(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = img.reshape(-1)
    if flat.numel() > 1_000_000:
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype)).tolist() if flat.numel() else (0, 0)
    vmin, vmax = (float(flat.min()), float(flat.max())) if flat.numel() else (0.0, 0.0)
    tol = 1e-6 * max(1.0, abs(vmin), abs(vmax))
    if vmax - vmin <= tol:
        scaled = torch.full_like(img, 0.0 if abs(vmax) <= tol else 128.0).to(torch.uint8)
    else:
        if hi - lo <= tol:  # a few outliers on a flat background: use the full range
            lo, hi = vmin, vmax
        scaled = ((img - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = scaled.numpy()
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))


def image_planes(
    x: Any, max_size: int = 128, image2d_xy: bool = False
) -> list[tuple[str, np.ndarray]] | None:
    """Downsampled ``uint8`` pictures of one patient's modality input, or ``None`` if it is not an image.

    Args:
        x: ``Tensor[C, H, W]`` (2D; ``C == 3`` is drawn in colour, otherwise channel 0), ``Tensor[C, X, Y, Z]`` (3D,
            RAS: the mid slices of the three planes of channel 0, see :data:`PLANES_3D`, in radiological orientation:
            axial and coronal with the patient's right on the picture's left, axial anterior up, coronal and sagittal
            superior up, sagittal anterior on the left) or ``Tensor[H, W]``; vectors (e.g. clinical fields) give
            ``None``.
        max_size: longest side of each picture in pixels.
        image2d_xy: a 2D ``x`` is ``[C, x, y]`` as MONAI's ``LoadImage`` readers return a PNG / JPEG / DICOM frame
            (first spatial axis = the file's columns); it is transposed so that the picture has the file's own
            orientation (the file's first row on top).

    Returns:
        ``[(plane name, uint8 [h, w] or [h, w, 3])]``, one entry for 2D, three for 3D.
    """
    t = _plain_tensor(x)
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        if min(t.shape[-2:]) < 2:
            return None
        img = t if t.shape[0] == 3 else t[:1]
        if image2d_xy:
            img = img.transpose(-1, -2)
        return [("image", _to_uint8(_fit(img, max_size)))]
    if t.ndim == 4:
        if min(t.shape[1:]) < 2:
            return None
        vol = t[0]
        cx, cy, cz = (s // 2 for s in vol.shape)
        planes = {
            "axial": vol[:, :, cz],  # [X, Y]
            "coronal": vol[:, cy, :],  # [X, Z]
            "sagittal": vol[cx, :, :],  # [Y, Z]
        }
        out = []
        for name in PLANES_3D:
            # rows = the plane's second axis, top = anterior / superior; columns = its first axis reversed (patient's
            # right, resp. anterior, on the left)
            img = planes[name].T.flip(0).flip(1)
            out.append((name, _to_uint8(_fit(img[None], max_size))))
        return out
    return None


def save_picture(arr: np.ndarray, path: str | os.PathLike) -> str:
    """Write a ``uint8`` picture from :func:`image_planes` as a PNG (grey or RGB); returns the path."""
    from matplotlib.image import imsave

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if arr.ndim == 2:
        imsave(path, arr, cmap="gray", vmin=0, vmax=255)
    else:
        imsave(path, arr)
    return path


class PatientPictures:
    """Keeps pictures (:func:`image_planes`) for the at most ``max_patients`` patients that get a report page.

    Patients are ranked by :func:`~monai_dymo.report.records.patient_priority` (errors first, then a rejected, then an
    accepted recovered modality), then by order of arrival; a patient that drops out of the first ``max_patients``
    loses its pictures, so memory stays bounded on big cohorts. Pictures are stored in the record as ``_pictures``
    (``{modality: [(plane, uint8 array)]}``), which the HTML report draws and the tables never write.

    Args:
        max_patients: at most this many patients keep pictures (0: none).
        picture_size: longest side, in pixels, of each picture.
        image2d_xy: 2D inputs are ``[C, x, y]`` (see :func:`image_planes`).
    """

    def __init__(self, max_patients: int = 100, picture_size: int = 128, image2d_xy: bool = False) -> None:
        self.max_patients = int(max_patients)
        self.picture_size = int(picture_size)
        self.image2d_xy = bool(image2d_xy)
        self._heap: list[tuple[tuple[int, int], int, dict[str, Any]]] = []
        self._seq = 0

    def reset(self) -> None:
        """Forget every patient seen (a new run)."""
        self._heap = []
        self._seq = 0

    def offer(self, record: dict[str, Any], inputs: Mapping[str, Any] | None) -> None:
        """Add ``record["_pictures"]`` from ``inputs`` (``{modality: Tensor[C, *spatial]}``) if the patient ranks
        among the first ``max_patients``; every record is offered, in order of arrival."""
        seq, self._seq = self._seq, self._seq + 1
        if not isinstance(inputs, Mapping) or self.max_patients == 0 or record.get("error"):
            return
        key = (patient_priority(record), -seq)
        if len(self._heap) >= self.max_patients:
            if key <= self._heap[0][0]:
                return
            _, _, evicted = heapq.heappop(self._heap)
            evicted.pop("_pictures", None)
        pics = {}
        for m, v in inputs.items():
            if isinstance(v, torch.Tensor):
                planes = image_planes(v, self.picture_size, image2d_xy=self.image2d_xy)
                if planes is not None:
                    pics[str(m)] = planes
        if pics:
            record["_pictures"] = pics
            heapq.heappush(self._heap, (key, seq, record))
