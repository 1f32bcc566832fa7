"""Segmentation outputs in the format a user asks for: PNG, TIFF, NIfTI or DICOM SEG.

One entry point per kind of output, so a lesion mask never goes through the probability
writer or the other way round (the conventions are in :mod:`.masks`):

* :func:`write_lesion` - labels (0 background, 1 lesion) as PNG, TIFF, NIfTI or a
  BINARY DICOM SEG;
* :func:`write_confounders` - the probability map in [0, 1] as 8-bit PNG, float32 TIFF,
  float32 NIfTI or a FRACTIONAL DICOM SEG.

TIFF and NIfTI keep the pixel spacing; a SEG takes it from its source image. Every file
is written atomically; ``overwrite=False`` never replaces an existing file. NIfTI and
DICOM SEG need the ``formats`` extra (nibabel, highdicom), imported only when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_seg import SegInfo, write_dicom_seg
from .extras import optional_module
from .masks import Spacing, label_array, probability_array, write_mask, write_probability
from .nifti import is_nifti, write_nifti
from .sniff import sniff_format

#: ``--format`` names and the extension each writes.
FORMAT_EXTENSIONS = {"png": ".png", "tiff": ".tif", "nifti": ".nii.gz", "dicom-seg": ".dcm"}
FORMATS = tuple(FORMAT_EXTENSIONS)


@dataclass(frozen=True)
class ExportOptions:
    """How one image's outputs are written."""

    fmt: str = "png"
    overwrite: bool = False
    spacing: Spacing = None
    source: Any = None  # the source DICOM (path or Dataset): needed for dicom-seg
    seg: SegInfo = field(default_factory=SegInfo)

    def __post_init__(self) -> None:
        check_format(self.fmt)


def check_format(fmt: str) -> str:
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def format_of(path: str | os.PathLike) -> str:
    """The format a file name asks for (.png, .tif/.tiff, .nii/.nii.gz, .dcm)."""
    name = str(path).lower()
    if is_nifti(name):
        return "nifti"
    for fmt, exts in (("png", (".png",)), ("tiff", (".tif", ".tiff")), ("dicom-seg", (".dcm",))):
        if name.endswith(exts):
            return fmt
    raise ValueError(f"{path}: cannot tell the output format from the name; use .png, .tif, "
                     ".tiff, .nii, .nii.gz or .dcm (DICOM SEG)")


def require_format(fmt: str, image: str | os.PathLike | None = None) -> None:
    """Fail before any work when `fmt` cannot be written (missing extra, or a DICOM SEG
    asked for a source that is not DICOM)."""
    check_format(fmt)
    if fmt == "nifti":
        optional_module("nibabel", "NIfTI output")
    if fmt == "dicom-seg":
        optional_module("highdicom", "DICOM SEG output")
        if image is not None and sniff_format(Path(image)) != "dicom":
            raise ValueError(f"DICOM SEG needs a DICOM source image; {image} is not DICOM: "
                             "use --format nifti or tiff")


def write_lesion(path: str | os.PathLike, mask: np.ndarray, options: ExportOptions) -> str:
    """The lesion mask (labels; 0/1 from the model) in the format of `options`."""
    fmt = options.fmt
    if fmt == "dicom-seg":
        return write_dicom_seg(path, mask, _source(options), "lesion", options.seg, options.overwrite)
    if fmt == "nifti":
        return write_nifti(path, _labels(path, mask), options.spacing, options.overwrite)
    return write_mask(path, mask, options.spacing, options.overwrite)


def write_confounders(path: str | os.PathLike, probability: np.ndarray, options: ExportOptions) -> str:
    """The confounder map (probability in [0, 1]) in the format of `options`."""
    fmt = options.fmt
    if fmt == "dicom-seg":
        return write_dicom_seg(path, probability, _source(options), "confounders", options.seg,
                               options.overwrite)
    if fmt == "nifti":
        return write_nifti(path, probability_array(path, probability), options.spacing, options.overwrite)
    return write_probability(path, probability, options.spacing, options.overwrite)


def _source(options: ExportOptions) -> Any:
    if options.source is None:
        raise ValueError("DICOM SEG needs the source DICOM image it segments; "
                         "use --format nifti or tiff for other images")
    return options.source


def _labels(path: Any, mask: np.ndarray) -> np.ndarray:
    """Integer labels >= 0 in the smallest unsigned type (as in PNG/TIFF masks)."""
    return label_array(Path(path), mask, ".tif")
