"""Files of the brain cohort's volumes: gzipped NIfTI with reproducible bytes and axial MR DICOM series."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.data.brain_design import SEQUENCES

__all__ = ["save_nifti_gz", "write_dicom_series"]

_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def save_nifti_gz(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``arr`` with ``affine`` (qform and sform, mm) as ``.nii.gz`` without a gzip timestamp."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))  # no timestamp: reproducible bytes


def write_dicom_series(
    arr: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, patient_id: str, series_description: str,
    uid_seed: Sequence[Any] = (),
) -> Path:
    """Write an int16 volume ``[X, Y, Z]`` (RAS voxel order, diagonal ``affine``) as an axial MR DICOM series.

    One file per ``z`` slice (``IM0001.dcm`` ...), standard radiological layout: columns run right -> left and rows
    anterior -> posterior (``ImageOrientationPatient = 1,0,0,0,1,0`` in DICOM's LPS), ``ImagePositionPatient`` of the
    first pixel, ``PixelSpacing``, ``SliceThickness`` / ``SpacingBetweenSlices``, signed 16-bit pixels. UIDs derive
    from ``uid_seed`` (deterministic output).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    aff = np.asarray(affine, dtype=np.float64)
    if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))) or np.any(np.diag(aff)[:3] <= 0):
        raise ValueError(f"write_dicom_series: expected a diagonal RAS affine with positive spacing, got {aff.tolist()}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = np.diag(aff)[:3]
    nx, ny, nz = arr.shape
    seed = [str(s) for s in uid_seed] + [patient_id, series_description]
    study, series, frame = (generate_uid(entropy_srcs=seed + [tag]) for tag in ("study", "series", "frame"))
    # pixel (row r, column c) of slice k is voxel (nx-1-c, ny-1-r, k): first pixel = voxel (nx-1, ny-1, k)
    x0_ras = aff[0, 3] + (nx - 1) * sx
    y0_ras = aff[1, 3] + (ny - 1) * sy
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=seed + [f"slice{k}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "MR"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1 + SEQUENCES.index(series_description) if series_description in SEQUENCES else 1
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(-x0_ras), float(-y0_ras), float(aff[2, 3] + k * sz)]
        ds.SliceLocation = float(aff[2, 3] + k * sz)
        ds.PixelSpacing = [float(sy), float(sx)]  # row spacing, column spacing
        ds.SliceThickness = float(sz)
        ds.SpacingBetweenSlices = float(sz)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(arr[::-1, ::-1, k].T.astype("<i2")).tobytes()
        ds.save_as(str(folder / f"IM{k + 1:04d}.dcm"), enforce_file_format=True)
    return folder

