"""DICOM Segmentation objects through highdicom (the ``formats`` extra).

A SEG belongs to the study of its source X-ray and references the source's study,
series and SOP instance, so a PACS or viewer (OHIF, 3D Slicer) shows it over the image.
Two objects per segmented image, because one SEG has one segmentation type:

* the lesion mask as a BINARY segment (SCT "Morphologically abnormal structure" /
  "Lesion"); algorithm type AUTOMATIC as the model made it, SEMIAUTOMATIC once a person
  edited it, MANUAL for a mask no model made (then no algorithm is named);
* the confounder map (1 - M of the causal maskers) as a FRACTIONAL PROBABILITY segment
  (SCT "Spatial and relational concept" / DCM "Image region"), stored in 255 steps.

The note is the Segment Description (ST, up to 1,024 characters) and, cut to DICOM's
64-character LO limit, part of the Series Description. Projection radiographs have no
frame of reference; DICOM then allows Slice Thickness to be absent, but highdicom 0.28
(like dcmqi and Slicer) cannot read back a Pixel Measures item without it, so a
nominal 1 mm is written next to the source's Pixel Spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .extras import optional_module
from .masks import probability_array
from .sniff import sniff_format

ALGORITHM_NAME = "napari-causalseg CausalCLIPSeg"
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
KINDS = ("lesion", "confounders")
_REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
_LO_MAX = 64
_ST_MAX = 1024


@dataclass(frozen=True)
class SegInfo:
    """What a SEG records about how its pixels were made."""

    note: str = ""
    algorithm_type: str = "AUTOMATIC"
    model: str | None = None  # e.g. the checkpoint's file name, an algorithm parameter
    threshold: float | None = None
    series_number: int = 901

    def __post_init__(self) -> None:
        if self.algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {self.algorithm_type!r}")


def algorithm_type(edited: bool) -> str:
    """SEMIAUTOMATIC once a person changed the model's mask, AUTOMATIC otherwise."""
    return "SEMIAUTOMATIC" if edited else "AUTOMATIC"


def read_source(source: str | os.PathLike | Any):
    """The source X-ray's dataset (header only), with a clear error when it cannot be one."""
    import pydicom

    if isinstance(source, pydicom.Dataset):
        p, ds = Path(getattr(source, "filename", None) or "source"), source
    else:
        p, ds = Path(source), _read_header(Path(source))
    missing = [key for key in _REFERENCED if not ds.get(key)]
    if missing:
        raise ValueError(f"{p}: the source DICOM lacks {', '.join(missing)}, which a SEG needs to "
                         "reference it; write NIfTI or TIFF instead")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{p}: DICOM SEG export supports single-frame source images; this one has "
                         f"{frames} frames; write NIfTI or TIFF instead")
    return ds


def _read_header(p: Path):
    import pydicom

    if sniff_format(p) != "dicom":
        raise ValueError(f"DICOM SEG needs a DICOM source image; {p} is not DICOM: "
                         "write NIfTI or TIFF instead")
    try:  # force: preamble-less files, which the sniffer only accepts with a DICOM name
        return pydicom.dcmread(p, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable DICOM source"
        raise ValueError(f"{p}: cannot read the DICOM source image: {exc}") from exc


def write_dicom_seg(path: str | os.PathLike, array: np.ndarray, source: Any, kind: str = "lesion",
                    info: SegInfo | None = None, overwrite: bool = True) -> str:
    """Write `array` (a 0/1 lesion mask, or a probability map for ``kind="confounders"``)
    as a DICOM SEG of `source` (path or pydicom Dataset), atomically; returns the path."""
    hd = optional_module("highdicom", "DICOM SEG")
    info = info or SegInfo()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    p = Path(path)
    ds = read_source(source)
    shape = (int(ds.Rows), int(ds.Columns))
    pixels = _pixels(p, array, kind)
    if pixels.shape != shape:
        raise ValueError(f"{p}: the {kind} map has shape {pixels.shape} but the source image is "
                         f"{shape[0]} x {shape[1]}; a SEG must match its source pixel for pixel")
    segment = _segment(hd, kind, info)
    try:
        seg = hd.seg.Segmentation(
            source_images=[ds], pixel_array=pixels,
            segmentation_type="BINARY" if kind == "lesion" else "FRACTIONAL",
            fractional_type="PROBABILITY", max_fractional_value=255,
            segment_descriptions=[segment], series_instance_uid=hd.UID(),
            series_number=info.series_number + (kind == "confounders"), sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="napari-causalseg", manufacturer_model_name="CausalCLIPSeg",
            software_versions=_version(), device_serial_number="0", omit_empty_frames=False,
            content_label=kind.upper(), content_description=_cut(f"CausalCLIPSeg {kind}", _LO_MAX),
            pixel_measures=_pixel_measures(hd, ds),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{p}: cannot build a DICOM SEG for source "
                         f"{getattr(ds, 'filename', None) or 'image'}: {exc}") from exc
    seg.SeriesDescription = _cut(f"CausalCLIPSeg {kind}: {info.note}" if info.note
                                 else f"CausalCLIPSeg {kind}", _LO_MAX)
    if not (info.note + seg.SeriesDescription).isascii():
        seg.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    atomic_write(p, lambda tmp: seg.save_as(tmp, enforce_file_format=True), overwrite)
    return str(p)


def read_dicom_seg(path: str | os.PathLike) -> tuple[np.ndarray, Any]:
    """(2-D pixels, highdicom Segmentation): 0/1 uint8 for BINARY, float for FRACTIONAL."""
    hd = optional_module("highdicom", "DICOM SEG")
    seg = hd.seg.segread(path)
    uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid], segment_numbers=[1], combine_segments=False,
        rescale_fractional=True)
    return np.asarray(pixels[0, :, :, 0]), seg


def _pixels(p: Path, array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "confounders":
        return probability_array(p, array)
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{p}: a lesion mask must be a 2-D array of labels, got shape {arr.shape}")
    return (arr > 0).astype(np.uint8)  # every label > 0 is lesion (the package's convention)


def _segment(hd, kind: str, info: SegInfo):
    from pydicom.sr.codedict import codes

    if kind == "lesion":
        category, kind_code = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
        label, algo_type = "Lesion", info.algorithm_type
    else:
        category, kind_code = codes.SCT.SpatialAndRelationalConcept, codes.DCM.ImageRegion
        label, algo_type = "Confounders", "AUTOMATIC"
    algorithm = None
    if algo_type != "MANUAL":
        params = {k: str(v) for k, v in (("model", info.model), ("threshold", info.threshold),
                                         ("output", "1 - M, the causal maskers' confounder map"
                                          if kind == "confounders" else None)) if v is not None}
        algorithm = hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=_version(), parameters=params or None,
            family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=category,
        segmented_property_type=kind_code, algorithm_type=algo_type,
        algorithm_identification=algorithm)
    if info.note:
        segment.SegmentDescription = _cut(info.note, _ST_MAX)
    return segment


def _pixel_measures(hd, ds):
    """Pixel Spacing from the source plus the nominal Slice Thickness (see the module doc)."""
    if "PixelSpacing" not in ds:
        return None
    row, col = (float(v) for v in ds.PixelSpacing)
    return hd.PixelMeasuresSequence(pixel_spacing=(row, col), slice_thickness=1.0)


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split()).replace("\\", "/")  # no control characters; LO: no "\\"
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _version() -> str:
    from ... import __version__

    return __version__
