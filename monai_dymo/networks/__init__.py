"""Networks of monai_dymo: per-modality token encoders, the DyMo fusion transformer and the recovery networks."""

from __future__ import annotations

from .encoders import ClinicalTokenEncoder, ImageTokenEncoder
from .fusion import DynamicFusionTransformer, build_image_fusion, build_polymnist_fusion

# recovery networks (written separately; the lead merges their exports here):
# from .recovery import ...

__all__ = [
    "ClinicalTokenEncoder",
    "ImageTokenEncoder",
    "DynamicFusionTransformer",
    "build_image_fusion",
    "build_polymnist_fusion",
]
