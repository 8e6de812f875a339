"""monai_dymo: DyMo (inference-time dynamic modality selection for incomplete multimodal classification) for MONAI.

Layers, bottom up: ``subsets`` (bitmask codes) -> ``selection`` / ``calibration`` (plain batched tensor code over any
``fuse`` callable) -> ``step.run_dymo`` (one DyMo step on a batch) -> ``inferers.DyMoInferer`` (a
``monai.inferers.Inferer``). ``networks`` (encoders, fusion
transformer, recovery networks), ``transforms`` (tolerant loading, presence masks, clinical fields, simulated
missingness), ``engines`` / ``handlers`` (training, evaluation), ``report`` (the per-patient report) and ``data``
(PolyMNIST builder) sit beside them.
``checkpoints`` loads weights and calibrations with one-line errors naming the file; ``errors`` holds
``DyMoInputError`` / ``DyMoFileNotFoundError``, what the package raises for input it cannot use.

Importing the package is cheap: the public names below and the subpackages are imported on first use (PEP 562), so
``monai-dymo --help`` does not import torch or MONAI. ``from monai_dymo import DyMoInferer`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_exports import lazy_exports

__version__ = "0.3.0"

# public name -> submodule defining it
_LAZY_NAMES: dict[str, str] = {
    "CALIBRATION_FORMAT_VERSION": "calibration",
    "SubsetCalibration": "calibration",
    "fit_calibration": "calibration",
    "NO_MODALITY_ERROR": "step",
    "DyMoInferer": "inferers",
    "DyMoInputError": "errors",
    "DyMoFileNotFoundError": "errors",
    "DyMoKeys": "keys",
    "Reason": "keys",
    "SelectionResult": "selection",
    "select_modalities": "selection",
    "run_dymo": "step",
    "all_subset_codes": "subsets",
    "all_subset_masks": "subsets",
    "code_to_mask": "subsets",
    "mask_to_code": "subsets",
    "sample_subsets": "subsets",
    "subset_size": "subsets",
    "load_calibration": "checkpoints",
    "load_weights": "checkpoints",
}
_SUBMODULES = frozenset(
    {
        "calibration",
        "checkpoints",
        "cli",
        "data",
        "engines",
        "errors",
        "evaluation",
        "handlers",
        "inferers",
        "keys",
        "losses",
        "networks",
        "report",
        "selection",
        "step",
        "subsets",
        "transforms",
    }
)

__all__ = sorted(_LAZY_NAMES)

# `python -m monai.bundle run` over a bundle of this project (or torchrun of it): a stage whose input is not usable ends
# with the project's one-line message instead of MONAI's "Failed to evaluate ConfigExpression" traceback
from . import errors as _errors  # noqa: E402 - cheap: no torch / MONAI import

if _errors.running_monai_bundle():
    _errors.install_excepthook()

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .calibration import CALIBRATION_FORMAT_VERSION, SubsetCalibration, fit_calibration
    from .checkpoints import load_calibration, load_weights
    from .errors import DyMoFileNotFoundError, DyMoInputError
    from .inferers import DyMoInferer
    from .keys import DyMoKeys, Reason
    from .selection import SelectionResult, select_modalities
    from .step import NO_MODALITY_ERROR, run_dymo
    from .subsets import all_subset_codes, all_subset_masks, code_to_mask, mask_to_code, sample_subsets, subset_size


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_NAMES, _SUBMODULES)
