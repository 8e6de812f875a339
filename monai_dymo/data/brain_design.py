"""The design of the synthetic brain MRI + clinical cohort: its sequences, classes and clinical fields, and the
class-conditional distributions a patient's lesion, clinical values and missingness are drawn from (see
:mod:`~monai_dymo.data.brain_cohort`)."""

from __future__ import annotations

from typing import Any

__all__ = ["SEQUENCES", "CLASSES", "CLINICAL_FIELDS", "DEFAULT_FOV_MM", "ATTRIBUTE_TABLES"]

#: MRI sequences, in datalist / modality order
SEQUENCES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
#: class names; the datalist ``label`` is the index in this tuple
CLASSES: tuple[str, ...] = ("glioma-like", "metastasis-like", "meningioma-like")
#: clinical CSV columns after ``patient_id`` and their kind
CLINICAL_FIELDS: dict[str, str] = {"age": "continuous", "sex": "categorical", "kps": "continuous", "ldh": "continuous"}
#: side of the cube (mm) covered by the stored grid; 96^3 voxels -> 2.25 mm
DEFAULT_FOV_MM = 216.0
#: P(attribute value | class), rows = classes in :data:`CLASSES` order; each attribute shows in one sequence
ATTRIBUTE_TABLES: dict[str, dict[str, Any]] = {
    "enhancement": {"sequence": "t1c", "values": ("none", "ring", "solid"),
                    "p": ((0.25, 0.65, 0.10), (0.10, 0.45, 0.45), (0.10, 0.10, 0.80))},
    "oedema": {"sequence": "flair", "values": ("small", "medium", "large"),
               "p": ((0.10, 0.65, 0.25), (0.10, 0.20, 0.70), (0.70, 0.20, 0.10))},
    "t2_signal": {"sequence": "t2", "values": ("hypo", "iso", "hyper"),
                  "p": ((0.10, 0.20, 0.70), (0.60, 0.20, 0.20), (0.15, 0.70, 0.15))},
    "t1_signal": {"sequence": "t1", "values": ("hypo", "iso", "bright_spots"),
                  "p": ((0.70, 0.20, 0.10), (0.20, 0.20, 0.60), (0.15, 0.70, 0.15))},
}
# shared lesion geometry per class (weak): P(number of blobs = 1, 2, 3), radius range (mm), centre depth range (mm;
# meningioma-like: plus 0.3 x radius, so that the lesion touches the brain surface)
_BLOBS_P = ((0.80, 0.20, 0.0), (0.55, 0.30, 0.15), (0.85, 0.15, 0.0))
_RADIUS_MM = ((10.0, 18.0), (7.0, 15.0), (8.0, 17.0))
_DEPTH_MM = ((12.0, 34.0), (8.0, 30.0), (5.0, 22.0))
_OEDEMA_FACTOR = {"small": (0.1, 0.3), "medium": (0.5, 0.9), "large": (1.1, 1.7)}
# clinical: age N(mean, sd), P(female), KPS N(mean, sd), LDH N(mean, sd) per class
_CLINICAL = (
    {"age": (54.0, 14.0), "female": 0.40, "kps": (74.0, 13.0), "ldh": (215.0, 50.0)},
    {"age": (63.0, 11.0), "female": 0.50, "kps": (66.0, 14.0), "ldh": (290.0, 80.0)},
    {"age": (59.0, 13.0), "female": 0.70, "kps": (84.0, 10.0), "ldh": (200.0, 45.0)},
)
# normalised lesion intensities (brain median = 1) per sequence
_BASE_SCALE = {"t1": 320.0, "t1c": 360.0, "t2": 400.0, "flair": 280.0}
_ABSENT_P = {"t1": 0.22, "t1c": 0.26, "t2": 0.20, "flair": 0.24}
