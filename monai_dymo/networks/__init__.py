"""Networks of monai_dymo: per-modality token encoders, the DyMo fusion transformer and the recovery networks."""

from __future__ import annotations

from .backbones import (
    BACKBONES,
    BackboneTokenEncoder,
    build_token_encoder,
    encoder_backbone,
    has_convolutional_backbone,
    is_small_encoder,
    load_pretrained_backbone,
)
from .encoders import ClinicalTokenEncoder, ImageTokenEncoder
from .export import FusionExport, example_fusion_inputs, export_fusion, verify_fusion_in_out
from .histogram import HistogramTokenEncoder, IntensityHistogram
from .mirror import MirrorAsymmetry, MirrorInputEncoder
from .shell_pool import RadialShellPool
from .fusion import DynamicFusionTransformer, build_image_fusion, build_polymnist_fusion
from .modality_entry import ModalityEntry, modality_entries
from .fusion_builder import FusionSettings, build_fusion
from .ensemble import FusionEnsemble

from .recovery import (
    IterativeImputerRecovery,
    MoPoERecovery,
    RecoveryNetwork,
    build_mri_recovery,
    build_polymnist_recovery,
    build_recovery,
)

__all__ = [
    "BACKBONES",
    "BackboneTokenEncoder",
    "build_token_encoder",
    "load_pretrained_backbone",
    "ClinicalTokenEncoder",
    "ImageTokenEncoder",
    "encoder_backbone",
    "has_convolutional_backbone",
    "is_small_encoder",
    "HistogramTokenEncoder",
    "IntensityHistogram",
    "MirrorAsymmetry",
    "MirrorInputEncoder",
    "RadialShellPool",
    "DynamicFusionTransformer",
    "FusionEnsemble",
    "FusionExport",
    "example_fusion_inputs",
    "export_fusion",
    "verify_fusion_in_out",
    "FusionSettings",
    "ModalityEntry",
    "build_fusion",
    "modality_entries",
    "build_image_fusion",
    "build_polymnist_fusion",
    "IterativeImputerRecovery",
    "MoPoERecovery",
    "RecoveryNetwork",
    "build_recovery",
    "build_mri_recovery",
    "build_polymnist_recovery",
]
