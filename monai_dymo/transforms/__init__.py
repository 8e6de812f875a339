"""Medical modality transforms: load what is there, mark what is missing and why.

Modules (array and dictionary forms, MONAI style):

- :mod:`~monai_dymo.transforms.io`: tolerant loading (:class:`LoadModality`, :class:`LoadModalitiesd`);
- :mod:`~monai_dymo.transforms.readers`: :class:`SimpleITKReader` (NRRD / MetaImage), :func:`inspect_dicom_series`;
- :mod:`~monai_dymo.transforms.color`: 2D pictures to one channel (:class:`AsGrayscale2Dd`) or RGB kept
  (:class:`AsRGB2Dd`), rows first as viewed (:class:`RowsFirst2Dd`);
- :mod:`~monai_dymo.transforms.spatial`: per-patient harmonisation (:class:`HarmonizeModalitiesd`);
- :mod:`~monai_dymo.transforms.lesion_crop`: one region of interest around the lesion for a patient's co-registered
  volumes, found without labels in a guide sequence (:class:`GuidedROICropd`);
- :mod:`~monai_dymo.transforms.clinical`: clinical field groups (:class:`ClinicalFieldStats`, :class:`ClinicalFieldsd`);
- :mod:`~monai_dymo.transforms.missingness`: simulated missingness (:class:`RandSimulateMissingModalitiesd`, mask CSVs; the
  names without ``Rand`` are aliases);
- :mod:`~monai_dymo.transforms.utils`: reasons, placeholders, presence vector, :func:`check_datalist`.

Transforms never import networks, the inferer or data-generation code. ``__all__`` is the union of the modules'.
"""

from __future__ import annotations

from . import clinical, color, io, lesion_crop, missingness, readers, spatial, utils
from .clinical import (
    DEFAULT_MISSING_VALUES,
    UNKNOWN_CATEGORY,
    ClinicalFields,
    ClinicalFieldsd,
    ClinicalFieldsD,
    ClinicalFieldsDict,
    ClinicalFieldStats,
)
from .color import (
    LUMA_WEIGHTS,
    AsGrayscale2D,
    AsGrayscale2Dd,
    AsGrayscale2DD,
    AsGrayscale2DDict,
    AsRGB2D,
    AsRGB2Dd,
    AsRGB2DD,
    AsRGB2DDict,
    RowsFirst2D,
    RowsFirst2Dd,
    RowsFirst2DD,
    RowsFirst2DDict,
)
from .io import LoadModalitiesd, LoadModalitiesD, LoadModalitiesDict, LoadModality
from .missingness import (
    RandSimulateMissingModalities,
    RandSimulateMissingModalitiesd,
    RandSimulateMissingModalitiesD,
    RandSimulateMissingModalitiesDict,
    SimulateMissingModalities,
    SimulateMissingModalitiesd,
    SimulateMissingModalitiesD,
    SimulateMissingModalitiesDict,
    read_missing_patterns,
    write_missing_patterns,
)
from .readers import SimpleITKReader, describe_read_error, inspect_dicom_series, short_error
from .lesion_crop import (
    FOREGROUND_GUIDE,
    ROI_GUIDE_KEY,
    BrightestRegionCentre,
    GuidedROICropd,
    GuidedROICropD,
    GuidedROICropDict,
)
from .spatial import HarmonizeModalitiesd, HarmonizeModalitiesD, HarmonizeModalitiesDict, HarmonizeModality
from .utils import (
    PLACEHOLDER_META_KEY,
    REASON_META_KEY,
    check_datalist,
    format_reason,
    get_patient_id,
    is_missing_path,
    is_observed,
    is_placeholder,
    make_placeholder,
    resized_placeholder,
    placeholder_like,
    reason_prefix,
    resolve_modality_order,
    update_presence,
)

__all__ = [
    name
    for module in (color, clinical, io, missingness, readers, lesion_crop, spatial, utils)
    for name in module.__all__
]
