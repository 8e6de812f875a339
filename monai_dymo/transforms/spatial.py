"""Spatial harmonisation of one patient's modalities, so that observed images and placeholders share one shape.

Order of operations in a pipeline (see ``transforms/README.md``)::

    LoadModalitiesd  ->  HarmonizeModalitiesd  ->  intensity transforms  ->  RandSimulateMissingModalitiesd (training)

:class:`HarmonizeModalitiesd` runs MONAI's ``Orientation`` -> ``Spacing`` -> ``ResizeWithPadOrCrop`` (or ``Resize``) on
every observed modality, then (re)creates every placeholder as zeros of exactly the harmonised shape with the affine of
the patient's first harmonised modality. Placeholders are never resampled (they have no geometry of their own).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms.compose import Compose
from monai.transforms.croppad.array import ResizeWithPadOrCrop
from monai.transforms.spatial.array import Orientation, Resize, Spacing
from monai.transforms.transform import MapTransform, Transform
from monai.utils import ensure_tuple
from monai_dymo.transforms.utils import is_placeholder, resized_placeholder

__all__ = ["HarmonizeModality", "HarmonizeModalitiesd", "HarmonizeModalitiesD", "HarmonizeModalitiesDict"]


class HarmonizeModality(Transform):
    """Orientation -> Spacing -> size, with MONAI transforms, on one channel-first image ``[C, *spatial]``.

    Args:
        axcodes: target orientation (e.g. ``"RAS"``), None to keep.
        pixdim: target voxel spacing in mm, None to keep.
        spatial_size: target spatial shape, None to keep.
        size_mode: ``"pad_crop"`` (``ResizeWithPadOrCrop``: centred pad/crop, no interpolation) or ``"resize"``
            (``Resize``: interpolate to the shape, aspect ratio not kept).
        mode: interpolation for ``Spacing`` / ``Resize`` (``"bilinear"``; ``"nearest"`` for label maps).
        padding_mode: padding of ``ResizeWithPadOrCrop`` (``"constant"`` = zeros).
    """

    def __init__(
        self,
        axcodes: str | None = "RAS",
        pixdim: Sequence[float] | float | None = None,
        spatial_size: Sequence[int] | int | None = None,
        size_mode: str = "pad_crop",
        mode: str = "bilinear",
        padding_mode: str = "constant",
    ) -> None:
        if size_mode not in ("pad_crop", "resize"):
            raise ValueError(f"HarmonizeModality: size_mode must be 'pad_crop' or 'resize', got {size_mode!r}.")
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in ensure_tuple(spatial_size))
        self.size_mode = size_mode
        self.mode = mode
        self.padding_mode = padding_mode
        ops: list[Any] = []
        if axcodes is not None:
            ops.append(Orientation(axcodes=axcodes, labels=None))
        if pixdim is not None:
            ops.append(Spacing(pixdim=pixdim, mode=mode))
        self.transform = Compose(ops)

    def target_size(self, spatial_dims: int) -> tuple[int, ...] | None:
        """Target spatial shape for images of ``spatial_dims`` dimensions (a single int is repeated), or None."""
        if self.spatial_size is None:
            return None
        if len(self.spatial_size) == 1:
            return self.spatial_size * spatial_dims
        if len(self.spatial_size) != spatial_dims:
            raise ValueError(
                f"HarmonizeModality: spatial_size {self.spatial_size} does not match an image with {spatial_dims} "
                "spatial dimensions."
            )
        return self.spatial_size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``img``: channel-first ``[C, *spatial]`` (a ``MetaTensor`` carries the affine for orientation/spacing)."""
        out = self.transform(img)
        size = self.target_size(out.ndim - 1)
        if size is None:
            return out
        if self.size_mode == "pad_crop":
            return ResizeWithPadOrCrop(size, mode=self.padding_mode)(out)
        interp = "trilinear" if self.mode == "bilinear" and len(size) == 3 else self.mode
        return Resize(size, mode=interp)(out)


class HarmonizeModalitiesd(MapTransform):
    """Dictionary form of :class:`HarmonizeModality` for one patient's modalities (``keys``).

    Observed images (and images kept but marked missing by ``RandSimulateMissingModalitiesd(keep_data=True)``) go through
    orientation, spacing and size; placeholders are replaced by zeros of shape ``[C, *spatial_size]`` (without
    ``spatial_size``: the shape of the patient's first harmonised image; if nothing is observed they are left as they
    are), with the affine of that first harmonised image. Keys not in the sample are skipped.

    Args:
        keys: modality names.
        axcodes, pixdim, spatial_size, size_mode, mode, padding_mode: see :class:`HarmonizeModality`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axcodes: str | None = "RAS",
        pixdim: Sequence[float] | float | None = None,
        spatial_size: Sequence[int] | int | None = None,
        size_mode: str = "pad_crop",
        mode: str = "bilinear",
        padding_mode: str = "constant",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.harmonize = HarmonizeModality(axcodes, pixdim, spatial_size, size_mode, mode, padding_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: torch.Tensor | None = None
        for key in self.key_iterator(d):
            if not is_placeholder(d[key]):
                d[key] = self.harmonize(d[key])
                first = d[key] if first is None else first
        for key in self.key_iterator(d):
            img = d[key]
            if not is_placeholder(img):
                continue
            if first is not None:  # the harmonised shape (spatial_size when given)
                affine = first.affine if isinstance(first, MetaTensor) else None
                d[key] = resized_placeholder(img, first.shape[1:], affine)
            elif self.harmonize.spatial_size is not None:
                d[key] = resized_placeholder(img, self.harmonize.target_size(img.ndim - 1))
        return d


HarmonizeModalitiesD = HarmonizeModalitiesDict = HarmonizeModalitiesd
