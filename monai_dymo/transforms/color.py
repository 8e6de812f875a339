"""2D clinical pictures: one channel (RGB / RGBA / gray+alpha to grayscale) or RGB kept, single DICOM frames squeezed,
and the picture's own row / column order.

Clinical 2D images arrive in many forms (PNG screenshots with an alpha channel, RGB JPEG exports, single-frame DICOM
read as a ``[1, H, W, 1]`` volume). :class:`AsGrayscale2D` makes every one of them ``[1, H, W]`` so a modality has one
shape for every patient, which MONAI's collation needs (a mix of RGB and RGBA files otherwise only fails when batched).
Placeholders of missing modalities are left alone (the dictionary form skips them; make them with ``channels=1``).
:class:`AsRGB2D` is the colour counterpart (every picture ``[3, H, W]``: clinical and dermoscopic photographs, where
colour is the signal), for placeholders made with ``channels=3``.

MONAI's readers return 2D pictures with the spatial axes in (x, y) order, i.e. ``[C, W, H]`` for a photo of width W
and height H. :class:`RowsFirst2D` swaps them to ``[C, H, W]``, rows first as the picture is viewed, so that a picture
drawn from the tensor (e.g. in the DyMo report) has the photo's orientation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms.transform import MapTransform, Transform
from monai_dymo.transforms.utils import is_placeholder

__all__ = [
    "LUMA_WEIGHTS",
    "AsGrayscale2D",
    "AsGrayscale2Dd",
    "AsGrayscale2DD",
    "AsGrayscale2DDict",
    "AsRGB2D",
    "AsRGB2Dd",
    "AsRGB2DD",
    "AsRGB2DDict",
    "RowsFirst2D",
    "RowsFirst2Dd",
    "RowsFirst2DD",
    "RowsFirst2DDict",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B (the weights PIL's ``convert("L")`` uses)."""


def _keep_meta(img: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if isinstance(img, MetaTensor) and not isinstance(out, MetaTensor):
        out = MetaTensor(out, meta=dict(img.meta))
    return out


class AsGrayscale2D(Transform):
    """Channel-first 2D image ``[C, H, W]`` (or ``[C, H, W, 1]``) -> ``[1, H, W]``.

    - ``C = 1``: unchanged; ``C = 2``: gray + alpha, the gray channel; ``C = 3``: luma of RGB; ``C = 4``: luma of the
      RGB channels (alpha dropped: clinical pictures are opaque where it matters);
    - a trailing singleton spatial axis (single DICOM frame or a one-slice volume) is removed first.

    Raises:
        ValueError: more than 4 channels or not a 2D image, naming the shape.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = img
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3:
            raise ValueError(f"AsGrayscale2D: expected a channel-first 2D image [C, H, W], got shape {tuple(img.shape)}.")
        c = x.shape[0]
        if c == 1:
            out = x
        elif c == 2:
            out = x[:1]
        elif c in (3, 4):
            w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=x.device).reshape(3, 1, 1)
            out = (x[:3].float() * w).sum(0, keepdim=True).to(x.dtype if x.is_floating_point() else torch.float32)
        else:
            raise ValueError(f"AsGrayscale2D: {c} channels is not grayscale, gray+alpha, RGB or RGBA (shape {tuple(img.shape)}).")
        return _keep_meta(img, out)


class _ObservedOnlyd(MapTransform):
    """Applies ``converter`` to every key's image except placeholders (missing modalities): the dictionary form shared
    by the 2D colour / layout transforms below."""

    def __init__(self, keys: KeysCollection, converter: Transform, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = converter

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not is_placeholder(d[key]):
                d[key] = self.converter(d[key])
        return d


class AsGrayscale2Dd(_ObservedOnlyd):
    """Dictionary form of :class:`AsGrayscale2D`; placeholders (missing modalities) are skipped."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, AsGrayscale2D(), allow_missing_keys)


AsGrayscale2DD = AsGrayscale2DDict = AsGrayscale2Dd


def _squeeze_frame(img: torch.Tensor, name: str) -> torch.Tensor:
    x = img[..., 0] if img.ndim == 4 and img.shape[-1] == 1 else img
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a channel-first 2D image [C, H, W], got shape {tuple(img.shape)}.")
    return x


class AsRGB2D(Transform):
    """Channel-first 2D image ``[C, H, W]`` (or ``[C, H, W, 1]``) -> ``[3, H, W]``, colour kept.

    - ``C = 3``: unchanged; ``C = 4``: RGBA, alpha dropped; ``C = 1``: grayscale repeated; ``C = 2``: gray + alpha, the
      gray channel repeated;
    - a trailing singleton spatial axis (single DICOM frame) is removed first.

    Raises:
        ValueError: more than 4 channels or not a 2D image, naming the shape.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = _squeeze_frame(img, "AsRGB2D")
        c = x.shape[0]
        if c in (3, 4):
            out = x[:3]
        elif c in (1, 2):
            out = x[:1].expand(3, *x.shape[1:]).clone()
        else:
            raise ValueError(f"AsRGB2D: {c} channels is not grayscale, gray+alpha, RGB or RGBA (shape {tuple(img.shape)}).")
        return _keep_meta(img, out)


class AsRGB2Dd(_ObservedOnlyd):
    """Dictionary form of :class:`AsRGB2D`; placeholders (missing modalities) are skipped."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, AsRGB2D(), allow_missing_keys)


class RowsFirst2D(Transform):
    """``[C, X, Y]`` as MONAI's readers return a 2D picture (x = column, y = row) -> ``[C, H, W]`` (rows first, as
    the picture is viewed); ``[C, X, Y, 1]`` is squeezed first. The spatial metadata (``spatial_shape``) follows."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = _squeeze_frame(img, "RowsFirst2D")
        out = x.transpose(-1, -2).contiguous()
        if isinstance(img, MetaTensor):
            meta = dict(img.meta)
            if "spatial_shape" in meta:
                meta["spatial_shape"] = tuple(int(v) for v in out.shape[1:])
            out = MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out, meta=meta)
        return out


class RowsFirst2Dd(_ObservedOnlyd):
    """Dictionary form of :class:`RowsFirst2D`; placeholders (missing modalities) are skipped: they are made in the
    target layout already."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, RowsFirst2D(), allow_missing_keys)


AsRGB2DD = AsRGB2DDict = AsRGB2Dd
RowsFirst2DD = RowsFirst2DDict = RowsFirst2Dd
