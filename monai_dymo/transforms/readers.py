"""Image readers and file checks used by the tolerant modality loader.

- :class:`SimpleITKReader`: a :class:`monai.data.ImageReader` on SimpleITK (a monai_dymo dependency), for NRRD,
  MetaImage and other ITK formats when MONAI's own ``ITKReader`` (package ``itk``) or ``NrrdReader`` (package
  ``pynrrd``) is not installed. Same conventions as ``ITKReader``: array axes in (x, y, z) order, affine in RAS.
- :func:`describe_read_error`: the real cause of a failed read (empty file, not a NIfTI file, ...), which MONAI's
  ``LoadImage`` with designated readers buries under "cannot find a suitable reader".
- :func:`inspect_dicom_series`: header-only consistency check of a DICOM series folder with pydicom (one series,
  parallel slices, no duplicated or missing slices), run before MONAI's ``PydicomReader`` stacks the slices; the
  reader itself would stack an incomplete series silently, with a wrong slice spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai.config import PathLike
from monai.data.image_reader import ImageReader
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple, optional_import
from monai_dymo.errors import DyMoInputError
from monai_dymo.keys import Reason

sitk, has_sitk = optional_import("SimpleITK")
pydicom, has_pydicom = optional_import("pydicom")
ImageFileError, has_nib = optional_import("nibabel.filebasedimages", name="ImageFileError")

__all__ = ["SimpleITKReader", "describe_read_error", "inspect_dicom_series", "short_error"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # SOP class of a DICOMDIR file (no pixels)


class SimpleITKReader(ImageReader):
    """Load images with SimpleITK (NRRD, MetaImage, NIfTI, ...), MONAI ``ITKReader`` conventions.

    Args:
        suffixes: file suffixes claimed by :meth:`verify_suffix` when ``LoadImage`` auto-selects readers; by default the
            formats MONAI cannot read without ``itk``/``pynrrd`` (``nrrd``, ``nhdr``, ``mha``, ``mhd``).
        affine_lps_to_ras: convert ITK's LPS affine to RAS, as ``NibabelReader`` / ``ITKReader`` do. Default True.
        kwargs: passed to ``SimpleITK.ReadImage``.

    ``get_data`` returns the array with spatial axes in (x, y, z) order (channel last for vector images, then
    ``original_channel_dim = -1``) and meta with ``affine``, ``original_affine``, ``spatial_shape``, ``space``.
    """

    def __init__(
        self,
        suffixes: Sequence[str] = ("nrrd", "nhdr", "mha", "mhd"),
        affine_lps_to_ras: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.suffixes = tuple(suffixes)
        self.affine_lps_to_ras = affine_lps_to_ras
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return has_sitk and is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any):
        """Read one image (or a list of images) with ``SimpleITK.ReadImage``."""
        opts = {**self.kwargs, **kwargs}
        imgs = [sitk.ReadImage(str(name), **opts) for name in ensure_tuple(data)]
        return imgs[0] if len(imgs) == 1 else imgs

    def _affine(self, img) -> np.ndarray:
        dim = img.GetDimension()
        sr = min(dim, 3)
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
        affine = np.eye(sr + 1)
        affine[:sr, :sr] = direction[:sr, :sr] @ np.diag(np.asarray(img.GetSpacing(), dtype=np.float64)[:sr])
        affine[:sr, -1] = np.asarray(img.GetOrigin(), dtype=np.float64)[:sr]
        return orientation_ras_lps(affine) if self.affine_lps_to_ras else affine

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Array (x, y, z[, c]) and meta dict; several images are stacked on a new first (channel) axis."""
        arrays, metas = [], []
        for im in img if isinstance(img, (list, tuple)) else [img]:  # a SimpleITK image is itself iterable
            arr = sitk.GetArrayFromImage(im)  # (z, y, x[, c])
            n_sp = im.GetDimension()
            vector = im.GetNumberOfComponentsPerPixel() > 1
            arr = np.transpose(arr, tuple(reversed(range(n_sp))) + ((n_sp,) if vector else ()))
            affine = self._affine(im)
            meta = {
                MetaKeys.AFFINE: affine.copy(),
                MetaKeys.ORIGINAL_AFFINE: affine,
                MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape[:n_sp]),
                MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if vector else float("nan"),
                "spacing": np.asarray(im.GetSpacing()),
            }
            arrays.append(np.ascontiguousarray(arr))
            metas.append(meta)
        if len(arrays) == 1:
            return arrays[0], metas[0]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DyMoInputError(f"SimpleITKReader: cannot stack images of different shapes {sorted(shapes)}.")
        meta = dict(metas[0])
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


def short_error(err: BaseException, limit: int = 200) -> str:
    """``"ExceptionType: message"`` on one line, cut to about ``limit`` characters."""
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _no_suitable_reader(err: BaseException) -> bool:
    """MONAI's ``LoadImage`` error when every designated reader failed (their exceptions only survive as text)."""
    return isinstance(err, RuntimeError) and "cannot find a suitable reader" in str(err)


def _reader_cause(reader: ImageReader | None, err: BaseException, filenames: Sequence[Path]) -> str:
    if has_nib and isinstance(err, ImageFileError):
        nifti = all(str(f).lower().endswith(_NIFTI_SUFFIXES) for f in filenames)
        what = "not a NIfTI file" if nifti else "not an image file nibabel can read"
        return f"{what} (nibabel: {' '.join(str(err).split())})"
    return short_error(err) if reader is None else f"{type(reader).__name__}: {short_error(err)}"


def describe_read_error(
    filenames: Sequence[PathLike] | PathLike, err: BaseException, readers: Sequence[ImageReader] = ()
) -> str:
    """``"<file>: <real cause>"`` for a read that raised ``err``, for an ``"unreadable: ..."`` reason.

    A zero-byte file is reported as ``"file is empty (0 bytes)"``. When ``err`` is MONAI's "cannot find a suitable
    reader" (``LoadImage`` with designated ``readers`` keeps their exceptions only as traceback text), each reader's
    ``read`` is tried again to report its own exception, e.g. ``"not a NIfTI file (nibabel: ...)"``.
    """
    paths = [Path(f) for f in ensure_tuple(filenames)]
    name = str(paths[0]) if len(paths) == 1 else str([str(p) for p in paths])
    for p in paths:
        if p.is_file() and p.stat().st_size == 0:
            return f"{p}: file is empty (0 bytes)"
    causes: list[str] = []
    if readers and _no_suitable_reader(err):
        files = [str(p) for p in paths]
        for reader in readers:
            try:
                reader.read(files if len(files) > 1 else files[0])
            except Exception as e:  # the exception that LoadImage reduced to text
                causes.append(_reader_cause(reader, e, paths))
    if not causes:
        causes.append(_reader_cause(None, err, paths))
    return f"{name}: {'; '.join(dict.fromkeys(causes))}"


def _slice_position(ds: Any) -> tuple[np.ndarray, float] | None:
    """(slice normal, position along it) of a DICOM slice, or None when the geometry tags are missing."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        return None
    iop_arr = np.asarray([float(v) for v in iop])
    normal = np.cross(iop_arr[:3], iop_arr[3:])
    return normal, float(np.dot(normal, np.asarray([float(v) for v in ipp])))


def inspect_dicom_series(
    folder: PathLike, gap_factor: float = 1.5, parallel_tol: float = 1e-3
) -> tuple[Reason, str] | None:
    """Check a DICOM series folder from its headers (pixels are not read); None when it can be stacked as one volume.

    Problems found (returned as ``(reason prefix, details naming the folder and files)``):

    - no DICOM file in the folder -> ``Reason.FILE_NOT_FOUND``;
    - a file pydicom cannot parse, several series mixed in the folder, or non-parallel slices (e.g. a radial
      localiser) -> ``Reason.UNREADABLE``;
    - duplicated slices (same ``InstanceNumber`` or same position along the slice normal) or missing slices (a gap
      between consecutive slice positions larger than ``gap_factor`` x the median spacing; without positions, a jump
      in ``InstanceNumber``) -> ``Reason.INCOMPLETE_SERIES``.

    Slices missing at either end of a series cannot be detected from the headers alone.
    """
    folder = Path(folder)
    headers: list[tuple[Path, Any]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if not pydicom.misc.is_dicom(str(path)):
            continue  # README, DICOMDIR without preamble, ...
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:  # a DICOM preamble but a broken header
            return Reason.UNREADABLE, f"{path}: {type(e).__name__}: {e}"
        if str(ds.get("SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
            continue
        headers.append((path, ds))
    if not headers:
        return Reason.FILE_NOT_FOUND, f"{folder} (folder contains no DICOM files)"

    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        return Reason.UNREADABLE, f"{folder}: folder mixes {len(series)} DICOM series {series}"
    if len(headers) == 1:
        return None

    by_instance: dict[int, list[str]] = {}
    for path, ds in headers:
        if ds.get("InstanceNumber") is not None:
            by_instance.setdefault(int(ds.InstanceNumber), []).append(path.name)
    dups = {k: v for k, v in by_instance.items() if len(v) > 1}
    if dups:
        k = min(dups)
        return Reason.INCOMPLETE_SERIES, (
            f"{folder}: duplicate slice(s): InstanceNumber {k} in files {dups[k]}"
            + (f" and {len(dups) - 1} more duplicated instance(s)" if len(dups) > 1 else "")
        )

    geometry = [_slice_position(ds) for _, ds in headers]
    if all(g is not None for g in geometry):
        normals = np.stack([g[0] for g in geometry])  # type: ignore[index]
        if np.abs(normals - normals[0]).max() > parallel_tol:
            return Reason.UNREADABLE, f"{folder}: slices are not parallel (radial or multi-orientation series)"
        order = np.argsort([g[1] for g in geometry])  # type: ignore[index]
        pos = np.asarray([geometry[i][1] for i in order])  # type: ignore[index]
        names = [headers[i][0].name for i in order]
        diffs = np.diff(pos)
        tol = max(1e-3, 1e-2 * float(np.median(diffs))) if diffs.size else 1e-3
        same = np.nonzero(diffs <= tol)[0]
        if same.size:
            i = int(same[0])
            return Reason.INCOMPLETE_SERIES, (
                f"{folder}: duplicate slice(s): files {names[i]} and {names[i + 1]} share position {pos[i]:.3f} mm"
            )
        step = float(np.median(diffs))
        gaps = np.nonzero(diffs > gap_factor * step)[0]
        if gaps.size:
            i = int(gaps[0])
            n_missing = int(round(diffs[i] / step)) - 1
            return Reason.INCOMPLETE_SERIES, (
                f"{folder}: missing slice(s): gap of {diffs[i]:.3f} mm between files {names[i]} and {names[i + 1]} "
                f"(slice spacing {step:.3f} mm, about {n_missing} slice(s) missing)"
            )
        return None

    numbers = sorted(by_instance)
    jumps = [(a, b) for a, b in zip(numbers[:-1], numbers[1:]) if b - a > 1]
    if jumps:
        a, b = jumps[0]
        return Reason.INCOMPLETE_SERIES, (
            f"{folder}: missing slice(s): InstanceNumber jumps from {a} to {b} ({b - a - 1} missing)"
        )
    return None
