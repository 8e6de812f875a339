"""monai_dymo: DyMo (inference-time dynamic modality selection) for MONAI."""

from __future__ import annotations

__version__ = "0.1.0"

from .keys import DyMoKeys, Reason
from .subsets import all_subset_codes, all_subset_masks, code_to_mask, mask_to_code, sample_subsets, subset_size
