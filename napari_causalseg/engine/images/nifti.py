"""2-D masks and probability maps as NIfTI-1 through nibabel (the ``formats`` extra).

Orientation: the file follows what ITK, SimpleITK and nnU-Net write for a 2-D image, so
ITK-based viewers (ITK-SNAP, 3D Slicer) show it the way the PNG looks. The array on disk
has shape (columns, rows, 1): voxel axis i runs along image columns (left to right as
displayed), j along rows (top to bottom). The affine is ``diag(-col_mm, -row_mm, 1)``:
ITK's identity direction in LPS, written in NIfTI's RAS (x and y negated), with the
pixel spacing in mm (``xyzt_units`` mm; unknown spacing is written as 1 with unit
"unknown"). A projection radiograph has no patient geometry, so the affine carries the
spacing, not an anatomical orientation. With nibabel, ``read_nifti`` (or
``np.asarray(img.dataobj)[:, :, 0].T``) gives the (rows, columns) array back.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .base import LoadedImage
from .extras import optional_module
from .masks import Spacing, check_spacing

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def write_nifti(path: str | os.PathLike, array: np.ndarray, spacing: Spacing = None,
                overwrite: bool = True) -> str:
    """Write a 2-D (rows, columns) array as .nii or .nii.gz, atomically; returns the path.

    The dtype is kept (uint8 masks, float32 probabilities); compression follows the name.
    """
    nib = optional_module("nibabel", "NIfTI")
    p = Path(path)
    if not is_nifti(p):
        raise ValueError(f"{p}: a NIfTI file name ends in .nii or .nii.gz")
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{p}: NIfTI export takes one 2-D image, got shape {arr.shape}")
    spacing = check_spacing(spacing)
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    affine = np.diag([-col_mm, -row_mm, 1.0, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(arr.T)[:, :, None], affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm" if spacing is not None else "unknown")
    data = img.to_bytes()
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(p, lambda tmp: tmp.write_bytes(data), overwrite)
    return str(p)


def read_nifti(path: str | os.PathLike) -> LoadedImage:
    """A 2-D NIfTI written as above: (rows, columns) data and (row, column) spacing.

    Spacing comes from the voxel sizes when the unit is mm (or µm/m, converted), else None.
    """
    nib = optional_module("nibabel", "NIfTI")
    p = Path(path)
    img = nib.load(p)
    data = np.asarray(img.dataobj)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise ValueError(f"{p}: expected a 2-D NIfTI image (x, y, 1), got shape {data.shape}")
    unit, _ = img.header.get_xyzt_units()
    scale = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}.get(unit)
    zooms = img.header.get_zooms()
    spacing = (float(zooms[1]) * scale, float(zooms[0]) * scale) if scale else None
    return LoadedImage(np.ascontiguousarray(data.T), spacing, {"format": "nifti", "unit": unit})
