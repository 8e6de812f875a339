"""monai_dymo: DyMo (inference-time dynamic modality selection for incomplete multimodal classification) for MONAI.

Layers, bottom up: ``subsets`` (bitmask codes) -> ``selection`` / ``calibration`` (plain batched tensor code over any
``fuse`` callable) -> ``inferers.DyMoInferer`` (a ``monai.inferers.Inferer``). ``networks`` (encoders, fusion
transformer, recovery networks), ``transforms`` (tolerant loading, presence masks, clinical fields, simulated
missingness), ``engines`` / ``handlers`` (training, evaluation, reports) and ``data`` (PolyMNIST builder) sit beside them.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .calibration import CALIBRATION_FORMAT_VERSION, SubsetCalibration, fit_calibration
from .inferers import NO_MODALITY_ERROR, DyMoInferer
from .keys import DyMoKeys, Reason
from .selection import SelectionResult, select_modalities
from .subsets import all_subset_codes, all_subset_masks, code_to_mask, mask_to_code, sample_subsets, subset_size

__all__ = [
    "CALIBRATION_FORMAT_VERSION",
    "DyMoInferer",
    "DyMoKeys",
    "NO_MODALITY_ERROR",
    "Reason",
    "SelectionResult",
    "SubsetCalibration",
    "all_subset_codes",
    "all_subset_masks",
    "code_to_mask",
    "fit_calibration",
    "mask_to_code",
    "sample_subsets",
    "select_modalities",
    "subset_size",
]
