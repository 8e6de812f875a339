"""Tolerant loading: load what is there, put a placeholder where a modality is missing and say why.

MONAI's ``LoadImage`` raises on a missing file; :class:`LoadModality` wraps it so that every failure becomes a
placeholder plus a reason string (prefixes from :class:`monai_dymo.keys.Reason`):

==========================  ===========================================================================================
``"observed"``              loaded, finite and not constant
``"absent: ..."``           the key is not in the sample, or its value is None / NaN (blank CSV cell) / an empty string
``"file not found: ..."``   the file or series folder does not exist, or the folder holds no DICOM file
``"unreadable: ..."``       the reader failed (empty, truncated or corrupt file, not a NIfTI file: the reader's own
                            error), mixed DICOM series, non-parallel slices
``"incomplete series: ..."`` a DICOM series folder with duplicated or missing slices (see
                            :func:`~monai_dymo.transforms.readers.inspect_dicom_series`)
``"empty image: ..."``      no voxels, no finite voxel, or a constant volume
==========================  ===========================================================================================

Details always name the file or folder. Readers: MONAI's ``LoadImage`` readers (NIfTI through ``NibabelReader``, DICOM
series folders through ``PydicomReader``, PNG/JPEG through ``PILReader``, NumPy), plus
:class:`~monai_dymo.transforms.readers.SimpleITKReader` for NRRD / MetaImage.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data.image_reader import ImageReader
from monai.data.meta_tensor import MetaTensor
from monai.transforms.io.array import LoadImage
from monai.transforms.transform import MapTransform, Transform
from monai.utils import ensure_tuple
from monai.utils.type_conversion import get_equivalent_dtype
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.transforms.readers import (
    SimpleITKReader,
    describe_read_error,
    has_sitk,
    inspect_dicom_series,
    short_error,
)
from monai_dymo.transforms.utils import (
    PLACEHOLDER_META_KEY,
    REASON_META_KEY,
    format_reason,
    get_patient_id,
    is_missing_path,
    is_observed,
    make_placeholder,
    resolve_modality_order,
    update_presence,
)

#: MONAI builds its nvImageCodec DICOM reader with every default ``LoadImage`` and warns that the optional GPU decoder is
#: absent (then falls back to pydicom): noise on every stage of a cohort, with or without DICOM; silenced while the
#: loaders are built.
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"

__all__ = ["LoadModality", "LoadModalitiesd", "LoadModalitiesD", "LoadModalitiesDict"]

logger = logging.getLogger("monai_dymo.transforms")


class LoadModality(Transform):
    """Load one modality (file, DICOM series folder, or in-memory array); return ``(image, reason)``, never raise for
    missing or bad data.

    Args:
        reader: reader(s) for files, as ``monai.transforms.LoadImage`` takes them (None = MONAI's suffix-based choice,
            with :class:`~monai_dymo.transforms.readers.SimpleITKReader` added for NRRD / MetaImage).
        dicom_reader: reader for DICOM series folders (default MONAI's ``"PydicomReader"``).
        dtype: dtype of the loaded image (and of placeholders).
        ensure_channel_first: make loaded files channel first (``[C, *spatial]``); in-memory arrays are taken as they
            are (they must already be channel first).
        spatial_size: spatial shape of placeholders (e.g. the harmonised shape ``(64, 64, 64)``); None = the
            ``placeholder_shape`` given at call time, else ``(1,) * spatial_dims``.
        channels: channels of placeholders.
        spatial_dims: spatial rank of the fallback placeholder.
        check_series: check DICOM series folders for mixed series, duplicated or missing slices before loading.
        base_dir: directory that relative paths are resolved against.
        kwargs: further arguments for the file ``LoadImage`` (e.g. reader arguments).

    ``__call__(filename, placeholder_shape=None, patient_id=None, modality=None)`` returns ``(MetaTensor, reason)``;
    the tensor is the image (meta ``dymo_placeholder=False``) or zeros of the placeholder shape
    (meta ``dymo_placeholder=True``, ``dymo_reason``), and a warning naming patient, modality and file is logged.
    """

    def __init__(
        self,
        reader: ImageReader | str | Sequence[ImageReader | str] | None = None,
        dicom_reader: ImageReader | str = "PydicomReader",
        dtype: DtypeLike = np.float32,
        ensure_channel_first: bool = True,
        spatial_size: Sequence[int] | None = None,
        channels: int = 1,
        spatial_dims: int = 3,
        check_series: bool = True,
        base_dir: PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.dtype = dtype
        self.ensure_channel_first = ensure_channel_first
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in ensure_tuple(spatial_size))
        self.channels = int(channels)
        self.spatial_dims = int(spatial_dims)
        self.check_series = check_series
        self.base_dir = None if base_dir is None else Path(base_dir)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING)
            self.loader = LoadImage(
                reader, image_only=True, dtype=dtype, ensure_channel_first=ensure_channel_first, **kwargs
            )
            self.dicom_loader = LoadImage(
                dicom_reader, image_only=True, dtype=dtype, ensure_channel_first=ensure_channel_first
            )
        # readers named by the user: registered last, tried first; their errors are the ones worth reporting
        self._designated = 0 if reader is None else len(ensure_tuple(reader))
        if reader is None and has_sitk:
            self.loader.register(SimpleITKReader())  # registered last = tried first for the suffixes it claims

    @property
    def torch_dtype(self) -> torch.dtype:
        """Torch dtype of loaded images and placeholders."""
        return torch.float32 if self.dtype is None else get_equivalent_dtype(self.dtype, torch.Tensor)

    def placeholder_shape(self, like: Sequence[int] | None = None) -> tuple[int, ...]:
        """Shape ``[C, *spatial]`` of a placeholder: ``spatial_size`` if configured, else ``like``, else ones."""
        if self.spatial_size is not None:
            return (self.channels, *self.spatial_size)
        if like is not None:
            return tuple(int(s) for s in like)
        return (self.channels,) + (1,) * self.spatial_dims

    def _resolve(self, path: PathLike) -> Path:
        p = Path(path).expanduser()
        if self.base_dir is not None and not p.is_absolute():
            p = self.base_dir / p
        return p

    def load(self, filename: Any, modality: str | None = None) -> tuple[MetaTensor | None, str]:
        """Try to load ``filename``; ``(image, "observed")`` or ``(None, reason)``. Logs nothing."""
        if is_missing_path(filename):
            # the placeholder value (None, a blank cell, "") says nothing more: "absent: no file given for t1"
            return None, format_reason(Reason.ABSENT, "no file given" + ("" if modality is None else f" for {modality}"))
        if isinstance(filename, (np.ndarray, torch.Tensor)):
            return self._check_content(self._from_array(filename), "<in-memory array>")
        paths = [self._resolve(f) for f in ensure_tuple(filename)]
        for p in paths:
            if not p.exists():
                return None, format_reason(Reason.FILE_NOT_FOUND, str(p))
        name = str(paths[0]) if len(paths) == 1 else f"{[str(p) for p in paths]}"
        is_series = len(paths) == 1 and paths[0].is_dir()
        if is_series and self.check_series:
            try:
                problem = inspect_dicom_series(paths[0])
            except Exception as e:  # unreadable folder content, permissions, ...
                problem = Reason.UNREADABLE, f"{paths[0]}: {short_error(e)}"
            if problem is not None:
                return None, format_reason(problem[0], problem[1])
        try:
            loader = self.dicom_loader if is_series else self.loader
            img = loader([str(p) for p in paths] if len(paths) > 1 else str(paths[0]))
        except Exception as e:  # empty file, truncated gz, corrupt header, unsupported format, ...
            designated = self._designated if loader is self.loader else 1
            readers = () if loader.auto_select else loader.readers[::-1][: max(1, designated)]
            return None, format_reason(Reason.UNREADABLE, describe_read_error(paths, e, readers))
        if not isinstance(img, MetaTensor):
            img = MetaTensor(torch.as_tensor(img))
        return self._check_content(img, name)

    def _from_array(self, arr: np.ndarray | torch.Tensor) -> MetaTensor:
        """A new ``MetaTensor`` (the caller's tensor and its meta dict are never modified)."""
        meta = dict(arr.meta) if isinstance(arr, MetaTensor) else {}
        t = arr.as_tensor() if isinstance(arr, MetaTensor) else torch.as_tensor(arr)
        t = t.to(self.torch_dtype) if self.dtype is not None else t
        meta.setdefault("filename_or_obj", "")
        return MetaTensor(t, meta=meta)

    @staticmethod
    def _check_content(img: MetaTensor, name: str) -> tuple[MetaTensor | None, str]:
        if img.numel() == 0:
            return None, format_reason(Reason.EMPTY_IMAGE, f"{name} (no voxels, shape {tuple(img.shape)})")
        values = img.as_tensor() if isinstance(img, MetaTensor) else img
        finite = torch.isfinite(values)
        if not bool(finite.any()):
            return None, format_reason(Reason.EMPTY_IMAGE, f"{name} (no finite voxel)")
        # the common all-finite case avoids copying the volume through a boolean index
        vmin, vmax = torch.aminmax(values if bool(finite.all()) else values[finite])
        if bool(vmin == vmax):
            return None, format_reason(Reason.EMPTY_IMAGE, f"{name} (constant volume, all voxels {float(vmin):g})")
        img.meta[PLACEHOLDER_META_KEY] = False
        img.meta[REASON_META_KEY] = Reason.OBSERVED.value
        return img, Reason.OBSERVED.value

    def __call__(  # type: ignore[override]
        self,
        filename: Any,
        placeholder_shape: Sequence[int] | None = None,
        patient_id: str | None = None,
        modality: str | None = None,
    ) -> tuple[MetaTensor, str]:
        img, reason = self.load(filename, modality)
        if img is not None:
            return img, reason
        logger.warning("patient %s, modality %s: marked missing (%s)", patient_id, modality, reason)
        return self.make_placeholder(reason, placeholder_shape), reason

    def make_placeholder(
        self, reason: str, like_shape: Sequence[int] | None = None, affine: torch.Tensor | None = None
    ) -> MetaTensor:
        """Placeholder of :meth:`placeholder_shape` with this loader's dtype."""
        return make_placeholder(self.placeholder_shape(like_shape), reason, affine=affine, dtype=self.torch_dtype)


class LoadModalitiesd(MapTransform):
    """Dictionary form of :class:`LoadModality`: load every configured modality, mark the missing ones.

    For each key (modality name, in configured order) the sample value is a path (file or DICOM series folder), a list
    of paths (stacked as channels), an in-memory channel-first array, or absent/None/NaN/empty. Output:

    - ``d[key]``: ``MetaTensor`` image ``[C, *spatial]``, or zeros of the placeholder shape for a missing modality;
      placeholder shape = ``spatial_size`` if given (use the harmonised shape, see
      :class:`~monai_dymo.transforms.spatial.HarmonizeModalitiesd`), else the shape of the first observed modality of
      that patient, else ``(channels, 1, 1, 1)``; placeholders carry the affine of the first observed modality;
    - ``d[present_key]``: ``BoolTensor[M]`` in the order of ``modalities`` (default: the order of the reasons dict, i.e.
      the order in which the pipeline's transforms configured the modalities);
    - ``d[reasons_key]``: ``{name: reason}`` merged into any reasons already in the sample (a modality given as
      None / blank keeps a non-observed reason already there, e.g. the datalist's ``<modality>_missing_reason``);
    - ``d[error_key]``: ``""``, or ``"no modality observed: ..."`` for a patient with nothing observed (not raised:
      the inferer reports it).

    A warning naming patient, modality and file is logged for every missing modality.

    Args:
        keys: modality names (sample keys).
        reader, dicom_reader, dtype, ensure_channel_first, channels, spatial_dims, check_series, base_dir, kwargs:
            see :class:`LoadModality`.
        spatial_size: placeholder spatial shape.
        modalities: full modality order of the presence vector (may include modalities filled in by later
            transforms, e.g. clinical groups); every key must be in it.
        present_key, reasons_key, error_key, patient_id_key: output / id keys (``error_key=None`` disables the flag).
        warn_each: log a warning per missing modality and patient; False logs them at DEBUG level (use
            :class:`~monai_dymo.handlers.MissingnessSummaryHandler` for one summary line per modality and run).

    Raises:
        ValueError: a key that is not one of ``modalities`` (unknown modality key).
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: ImageReader | str | Sequence[ImageReader | str] | None = None,
        dicom_reader: ImageReader | str = "PydicomReader",
        dtype: DtypeLike = np.float32,
        ensure_channel_first: bool = True,
        spatial_size: Sequence[int] | None = None,
        channels: int = 1,
        spatial_dims: int = 3,
        check_series: bool = True,
        base_dir: PathLike | None = None,
        modalities: Sequence[str] | None = None,
        present_key: str = DyMoKeys.PRESENT,
        reasons_key: str = DyMoKeys.REASONS,
        error_key: str | None = DyMoKeys.ERROR,
        patient_id_key: str = DyMoKeys.PATIENT_ID,
        warn_each: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.modalities = resolve_modality_order(self.keys, modalities, type(self).__name__)
        self.log_level = logging.WARNING if warn_each else logging.DEBUG
        self.loader = LoadModality(
            reader=reader,
            dicom_reader=dicom_reader,
            dtype=dtype,
            ensure_channel_first=ensure_channel_first,
            spatial_size=spatial_size,
            channels=channels,
            spatial_dims=spatial_dims,
            check_series=check_series,
            base_dir=base_dir,
            **kwargs,
        )
        self.present_key = present_key
        self.reasons_key = reasons_key
        self.error_key = error_key
        self.patient_id_key = patient_id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pid = get_patient_id(d, self.patient_id_key)
        reasons: dict[str, str] = dict(d.get(self.reasons_key) or {})
        loaded: dict[Hashable, MetaTensor | None] = {}
        for key in self.keys:
            if key not in d:
                img, reason = None, format_reason(Reason.ABSENT, f"key {str(key)!r} not in sample")
            else:
                img, reason = self.loader.load(d[key], str(key))
                preset = reasons.get(str(key))
                if img is None and is_missing_path(d[key]) and preset and not is_observed(preset):
                    reason = preset  # the datalist said why no file was given (e.g. "absent: photo not taken")
            loaded[key] = img
            reasons[str(key)] = reason
            if img is None:
                logger.log(self.log_level, "patient %s, modality %s: marked missing (%s)", pid, key, reason)
        first = next((img for img in loaded.values() if img is not None), None)
        for key, img in loaded.items():
            if img is None:
                like = None if first is None else tuple(first.shape)
                affine = None if first is None else first.affine
                img = self.loader.make_placeholder(reasons[str(key)], like, affine=affine)
            d[key] = img
        update_presence(d, reasons, self.modalities, self.present_key, self.reasons_key, self.error_key)
        if self.error_key is not None and d[self.error_key]:
            logger.log(self.log_level, "patient %s: %s", pid, d[self.error_key])
        return d


LoadModalitiesD = LoadModalitiesDict = LoadModalitiesd
