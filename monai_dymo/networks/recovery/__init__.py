"""Recovery networks: generate missing modalities from the observed ones of the same patient.

Every recovery network is called as ``recovery(inputs, present)`` (see :mod:`.base`): ``inputs`` maps modality name ->
``Tensor[B, ...]``, ``present`` is ``BoolTensor[B, M]``; the result holds every modality, observed ones unchanged.
"""

from __future__ import annotations

from .base import RecoveryNetwork, check_recovery_inputs, merge_recovered, missing_rows
from .imputer import IMPUTER_FILE_FORMAT, IterativeImputerRecovery
from .gaussian_experts import gaussian_kl_standard, product_of_experts, product_of_natural_experts
from .modality_spec import ModalitySpec
from .mopoe import MOPOE_CHECKPOINT_FORMAT, MoPoERecovery, build_mri_recovery, build_polymnist_recovery
from .builder import build_recovery, image_stages

__all__ = [
    "RecoveryNetwork",
    "check_recovery_inputs",
    "merge_recovered",
    "missing_rows",
    "ModalitySpec",
    "MoPoERecovery",
    "build_recovery",
    "image_stages",
    "build_polymnist_recovery",
    "build_mri_recovery",
    "product_of_experts",
    "product_of_natural_experts",
    "gaussian_kl_standard",
    "MOPOE_CHECKPOINT_FORMAT",
    "IterativeImputerRecovery",
    "IMPUTER_FILE_FORMAT",
]
