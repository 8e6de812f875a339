"""The preprocessing of a cohort, derived from its :class:`~monai_dymo.cohort.spec.CohortSpec`.

Per modality kind (the same chains as the recipes in the project's ``transforms/`` folder):

- ``image3d`` (NIfTI, NRRD, DICOM series folders): tolerant load (missing / unreadable -> placeholder and reason),
  orientation RAS, then either spacing ``pixdim`` + centred pad/crop to ``spatial_size`` or a resize to it, intensity
  z-score over non-zero voxels (``intensity: zscore``) or min-max to [0, 1];
- ``image2d`` (PNG, JPEG, single DICOM frames): tolerant load, RGB / RGBA to grayscale (:class:`AsGrayscale2Dd`) or,
  with ``channels: 3``, RGB kept (:class:`AsRGB2Dd`), rows first as the picture is viewed (:class:`RowsFirst2Dd`: the
  tensor is ``[C, H, W]``, ``spatial_size`` is (rows, columns)), resize to ``spatial_size``, min-max to [0, 1]
  (default);
- with ``roi`` (cohort level): the ``image3d`` volumes resampled to ``pixdim`` keep their extent and are cropped
  together to ``spatial_size`` around the lesion found in the guide sequence (:class:`GuidedROICropd`);
- ``clinical``: the fields of each group encoded with the fitted statistics (:class:`ClinicalFieldsd`).

A missing modality's placeholder has the shape of an observed one of that modality (``[channels, *spatial_size]``, or
``[F]`` NaN for a clinical group). Per-patient warnings are logged at DEBUG level; attach a
:class:`~monai_dymo.handlers.MissingnessSummaryHandler` for one line per modality and run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.transforms import (
    Compose,
    NormalizeIntensityd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    ScaleIntensityd,
)
from monai.transforms.transform import Transform
from monai.utils import convert_to_tensor

from monai_dymo.cohort.spec import CohortSpec, ModalityEntry
from monai_dymo.errors import DyMoFileNotFoundError
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.transforms import (
    AsGrayscale2Dd,
    AsRGB2Dd,
    ClinicalFieldsd,
    GuidedROICropd,
    HarmonizeModalitiesd,
    LoadModalitiesd,
    RowsFirst2Dd,
)
from monai_dymo.transforms.utils import format_reason, get_patient_id, make_placeholder, update_presence

__all__ = ["build_preprocessing", "build_augmentation", "modality_transforms", "TolerantPreprocessing"]

logger = logging.getLogger("monai_dymo.cohort")
# MONAI's pydicom reader warns once per series that the optional GPU decoder is absent: noise on a CPU cohort run
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def modality_transforms(entry: ModalityEntry, order: tuple[str, ...], keep_extent: bool = False) -> list[Any]:
    """The load -> (grayscale or RGB, rows first) -> harmonise -> intensity chain of one image modality.

    ``keep_extent``: a 3D volume is resampled to ``pixdim`` and keeps its whole extent (a region of interest is cut
    from it later, see :class:`~monai_dymo.transforms.GuidedROICropd`).
    """
    keys = [entry.name]
    loader = LoadModalitiesd(
        keys=keys,
        reader=entry.reader,
        ensure_channel_first=True,
        spatial_size=entry.spatial_size,
        channels=entry.channels,
        spatial_dims=entry.spatial_dims,
        modalities=order,
        warn_each=False,
    )
    chain: list[Any] = [loader]
    if entry.kind == "image2d":
        chain.append(AsRGB2Dd(keys) if entry.channels == 3 else AsGrayscale2Dd(keys))
        chain.append(RowsFirst2Dd(keys))
        chain.append(HarmonizeModalitiesd(keys, axcodes=None, pixdim=None, spatial_size=entry.spatial_size,
                                          size_mode="resize"))
    else:
        chain.append(
            HarmonizeModalitiesd(
                keys,
                axcodes="RAS",
                pixdim=entry.pixdim,
                spatial_size=None if keep_extent else entry.spatial_size,
                size_mode="pad_crop" if entry.pixdim is not None else "resize",
            )
        )
    if entry.intensity == "zscore":
        chain.append(NormalizeIntensityd(keys, nonzero=True, channel_wise=True))
    elif entry.intensity == "minmax":
        chain.append(ScaleIntensityd(keys, minv=0.0, maxv=1.0))
    return chain


class TolerantPreprocessing(Transform):
    """Run ``transform`` on a datalist entry; if it raises, return the patient with every modality missing and the
    reason, instead of failing the whole run: a batch run never loses a patient (its report row carries the error).

    Args:
        transform: the preprocessing chain.
        spec: the cohort (shapes of the placeholders).
    """

    def __init__(self, transform: Compose, spec: CohortSpec) -> None:
        self.transform = transform
        self.spec = spec

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:  # type: ignore[override]
        try:
            out = self.transform(data)
        except Exception as e:  # noqa: BLE001 - any failure of one patient becomes that patient's reason
            pid = get_patient_id(data)
            cause = e.__cause__ or e
            message = f"preprocessing failed: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
            logger.warning("patient %s: %s", pid, message)
            out = self.failed_sample(data, message)
        # every tensor as a MetaTensor, exactly as MONAI's PersistentDataset stores it: a batch that mixes freshly
        # computed and cached patients (e.g. a run resumed over a partly filled cache) then collates
        return convert_to_tensor(out, convert_numeric=False, track_meta=True)

    def failed_sample(self, data: Mapping[Hashable, Any], message: str) -> dict[Hashable, Any]:
        """The entry with a placeholder for every modality, all marked unreadable, and ``error`` set."""
        d: dict[Hashable, Any] = {k: v for k, v in data.items() if k not in self.spec.clinical_fields}
        reason = format_reason(Reason.UNREADABLE, message)
        field_mask = {}
        for m in self.spec.modalities:
            if m.is_image:
                d[m.name] = make_placeholder((m.channels, *m.spatial_size), reason)
            else:
                d[m.name] = torch.full((len(m.fields),), math.nan)
                field_mask[m.name] = torch.zeros(len(m.fields), dtype=torch.bool)
        if field_mask:
            d[DyMoKeys.FIELD_MASK] = field_mask
            d[DyMoKeys.FIELD_NOTES] = {g: "not read (preprocessing failed)" for g in field_mask}
        update_presence(d, {m: reason for m in self.spec.modality_names}, self.spec.modality_names)
        d[DyMoKeys.ERROR] = message
        return d


def build_preprocessing(spec: CohortSpec, stats_file: str | Path | None = None) -> TolerantPreprocessing:
    """Deterministic (cacheable) preprocessing of the cohort's datalist entries (see :func:`~monai_dymo.cohort.load_split`).

    Args:
        spec: the cohort.
        stats_file: the clinical encoding statistics written by the ``prepare`` stage (required with clinical
            modalities).
    """
    order = spec.modality_names
    chain: list[Any] = []
    for entry in spec.image_modalities:
        chain.extend(modality_transforms(entry, order, keep_extent=spec.roi is not None and entry.kind == "image3d"))
    if spec.roi is not None:
        volumes = [m for m in spec.image_modalities if m.kind == "image3d"]
        chain.append(GuidedROICropd([m.name for m in volumes], guide_keys=spec.roi.guide,
                                    roi_size=volumes[0].spatial_size, sigma=spec.roi.sigma, margin=spec.roi.margin,
                                    fraction=spec.roi.fraction))
    if spec.clinical_modalities:
        if stats_file is None:
            raise ValueError("the cohort has clinical modalities: give the clinical statistics of the prepare stage.")
        if not Path(stats_file).is_file():
            from monai_dymo.cohort.networks import missing_stats_message

            raise DyMoFileNotFoundError(missing_stats_message(stats_file))
        chain.append(ClinicalFieldsd(spec.groups(), stats=stats_file, modalities=order, warn_each=False))
    return TolerantPreprocessing(Compose(chain), spec)


def build_augmentation(
    spec: CohortSpec,
    flip_prob: float = 0.5,
    affine_prob: float = 0.5,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    bias_field_prob: float = 0.3,
    noise_prob: float = 0.2,
    noise_std: float = 0.05,
    flip_2d: bool = False,
    translate: float = 0.0,
) -> Compose:
    """Training augmentation of the image modalities (applied after the cached preprocessing) that respects the data.

    - ``image3d`` sequences of a patient are co-registered: ONE spatial draw for all of them (a left-right flip with
      ``flip_prob``, the only flip that keeps the anatomy plausible: axis 0 of the RAS-oriented volume; a rotation up
      to ``rotate_deg``, a scaling up to ``scale`` and a shift up to ``translate`` voxels per axis with ``affine_prob``;
      the shift suits a lesion-centred region of interest, whose centre is itself an estimate), then MRI intensity augmentations drawn
      per sequence (each acquisition has its own coil bias and noise): MONAI's ``RandBiasFieldd``
      (``bias_field_prob``) and ``RandGaussianNoised`` (``noise_prob``, ``noise_std`` of the z-scored intensity).
    - ``image2d`` pictures come from separate studies (a CT and an MR picture are not co-registered): each gets its
      OWN rotation / scaling draw, and no flip by default (an up-down or left-right flip changes what the picture's
      orientation means; ``flip_2d=True`` allows a left-right flip, drawn per picture).
    - Clinical fields are untouched; the zero placeholders of missing modalities are never read in training (every
      fused subset is restricted to the observed modalities).
    """
    chain: list[Any] = []
    volumes = [m.name for m in spec.image_modalities if m.kind == "image3d"]
    pictures = [m.name for m in spec.image_modalities if m.kind == "image2d"]
    if volumes:
        if flip_prob > 0:
            chain.append(RandFlipd(volumes, prob=flip_prob, spatial_axis=0))
        if affine_prob > 0:
            angle = math.radians(rotate_deg)
            chain.append(RandAffined(volumes, prob=affine_prob, rotate_range=[angle] * 3, scale_range=[scale] * 3,
                                     translate_range=[translate] * 3, padding_mode="zeros", mode="bilinear"))
        for name in volumes:  # one draw per sequence
            if bias_field_prob > 0:
                chain.append(RandBiasFieldd(name, prob=bias_field_prob, coeff_range=(0.0, 0.2)))
            if noise_prob > 0:
                chain.append(RandGaussianNoised(name, prob=noise_prob, std=noise_std))
    for name in pictures:  # one draw per picture
        if flip_2d and flip_prob > 0:
            chain.append(RandFlipd(name, prob=flip_prob, spatial_axis=1))
        if affine_prob > 0:
            chain.append(RandAffined(name, prob=affine_prob, rotate_range=[math.radians(rotate_deg)],
                                     scale_range=[scale] * 2, padding_mode="zeros", mode="bilinear"))
    return Compose(chain)
