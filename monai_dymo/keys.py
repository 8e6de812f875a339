"""Dictionary keys shared across monai_dymo, in the spirit of :class:`monai.utils.CommonKeys`.

Every sample dictionary that flows through the plugin uses these names, so that transforms, the inferer,
engines and report handlers agree without importing each other.
"""

from __future__ import annotations

from monai.utils import StrEnum

__all__ = ["DyMoKeys", "Reason"]


class DyMoKeys(StrEnum):
    """Keys of the sample / batch dictionaries.

    - ``PRESENT``: ``BoolTensor[M]`` per sample (``[B, M]`` batched), modality order as configured; True = observed.
    - ``REASONS``: ``dict[str, str]`` per sample mapping modality name -> reason (``"observed"``, ``"absent"``, ...);
      MONAI's collate turns it into ``dict[str, list[str]]`` for a batch.
    - ``FIELD_MASK``: ``dict[str, BoolTensor[F]]`` per clinical group, True where a field inside an observed group is present.
    - ``FIELD_NOTES``: ``dict[str, str]`` per clinical group, its missing fields with what the table held
      (``"ldh = -999, age = blank"``; ``""`` when none is missing).
    - ``PATIENT_ID``: patient / case identifier (string).
    - ``INDEX``: position of the sample in its datalist / dataset (int); carried into the selection records so that
      reports merged from several processes keep the datalist order.
    - ``LABEL``, ``PRED``: as :class:`monai.utils.CommonKeys`.
    - ``SELECTION``: per-patient reliability record written by the DyMo inferer / evaluator.
    - ``ERROR``: reason a patient could not be processed at all (kept in reports).
    - ``ROI_GUIDE``: what placed a patient's region of interest (a guide modality's name, or ``"foreground"`` for the
      centre of the volume's foreground), set by :class:`~monai_dymo.transforms.GuidedROICropd`.
    - ``INPUTS``: ``{name: Tensor[B, ...]}`` the inputs as the network saw them (recovered modalities filled in), in
      the evaluator's output only when asked for (``DyMoEvaluator(keep_inputs=True)``, for report pictures).
    """

    PRESENT = "present"
    REASONS = "modality_reasons"
    FIELD_MASK = "field_mask"
    FIELD_NOTES = "field_notes"
    PATIENT_ID = "patient_id"
    INDEX = "index"
    LABEL = "label"
    PRED = "pred"
    SELECTION = "dymo_selection"
    ERROR = "error"
    INPUTS = "dymo_inputs"
    ROI_GUIDE = "roi_guide"


class Reason(StrEnum):
    """Fixed reason strings (free-text details follow a colon, e.g. ``"file not found: /data/p1/flair.nii.gz"``)."""

    OBSERVED = "observed"
    ABSENT = "absent"
    FILE_NOT_FOUND = "file not found"
    UNREADABLE = "unreadable"
    INCOMPLETE_SERIES = "incomplete series"
    EMPTY_IMAGE = "empty image"
    FIELDS_MISSING = "all fields missing"
    SIMULATED = "simulated missing"
