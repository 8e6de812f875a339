"""2D clinical pictures as single-channel images: RGB / RGBA / gray+alpha to grayscale, single DICOM frames squeezed.

Clinical 2D images arrive in many forms (PNG screenshots with an alpha channel, RGB JPEG exports, single-frame DICOM
read as a ``[1, H, W, 1]`` volume). :class:`AsGrayscale2D` makes every one of them ``[1, H, W]`` so a modality has one
shape for every patient, which MONAI's collation needs (a mix of RGB and RGBA files otherwise only fails when batched).
Placeholders of missing modalities are left alone (the dictionary form skips them; make them with ``channels=1``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms.transform import MapTransform, Transform
from monai_dymo.transforms.utils import is_placeholder

__all__ = ["LUMA_WEIGHTS", "AsGrayscale2D", "AsGrayscale2Dd", "AsGrayscale2DD", "AsGrayscale2DDict"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B (the weights PIL's ``convert("L")`` uses)."""


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
        if isinstance(img, MetaTensor) and not isinstance(out, MetaTensor):
            out = MetaTensor(out, meta=dict(img.meta))
        return out


class AsGrayscale2Dd(MapTransform):
    """Dictionary form of :class:`AsGrayscale2D`; placeholders (missing modalities) are skipped."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = AsGrayscale2D()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not is_placeholder(d[key]):
                d[key] = self.converter(d[key])
        return d


AsGrayscale2DD = AsGrayscale2DDict = AsGrayscale2Dd
