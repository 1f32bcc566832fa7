"""napari writer for Labels layers: PNG, TIFF, NIfTI or DICOM SEG, chosen by the file name.

Label values are written as they are (the plugin's lesion layer holds 0/1, the package's
mask convention); TIFF and NIfTI keep the pixel spacing when the layer's units are mm.
A DICOM SEG (.dcm) needs the source X-ray: the lesion layer made by *Segment from note*
remembers the DICOM file it came from, its note and model, and whether a person edited
the mask (SEMIAUTOMATIC) or not (AUTOMATIC). Writing is atomic (temp file + rename), so
saving over a mask a user spent an hour correcting can never leave it half-written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._layer_meta import NOTE_KEY, SOURCE_KEY, algorithm_type
from .engine.images.dicom_seg import SegInfo
from .engine.images.export import ExportOptions, format_of, write_lesion

_MM = ("mm", "millimeter", "millimetre")


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer to .png/.tif/.tiff/.nii/.nii.gz/.dcm; returns the written path."""
    if isinstance(data, list | tuple):  # multiscale labels: the full-resolution level
        data = data[0]
    data = np.asarray(data)
    fmt = format_of(path)
    metadata = dict(meta.get("metadata") or {})
    source = dict(metadata.get(SOURCE_KEY) or {})
    options = ExportOptions(fmt=fmt, overwrite=True, spacing=_spacing_mm(meta))  # napari asked
    if fmt == "dicom-seg":
        options = ExportOptions(
            fmt=fmt, overwrite=True, source=_source_dicom(meta, source, metadata),
            seg=SegInfo(note=str(source.get("note") or metadata.get(NOTE_KEY) or ""),
                        algorithm_type=algorithm_type(metadata, data),
                        model=source.get("model"), threshold=source.get("threshold")))
    return [write_lesion(os.fspath(path), data, options)]


def _spacing_mm(meta: dict) -> tuple[float, float] | None:
    """The layer scale as (row, column) mm when its units say mm (napari >= 0.6), else None."""
    units = meta.get("units")
    scale = meta.get("scale")
    if units is None or scale is None or len(scale) < 2:
        return None
    if not all(str(u).strip().lower() in _MM for u in tuple(units)[-2:]):
        return None
    return (float(scale[-2]), float(scale[-1]))


def _source_dicom(meta: dict, source: dict, metadata: dict) -> str:
    path = source.get("source_path") or metadata.get("source_path")
    if not path or not os.path.isfile(path):
        name = meta.get("name", "this layer")
        raise ValueError(
            f"DICOM SEG needs the source DICOM file of {name!r}, and "
            + (f"{path} no longer exists" if path else "the layer does not record one")
            + ": open the X-ray with CausalSeg's reader, segment it with Segment from note, "
            "then save the lesion layer; or save as .nii.gz or .tif")
    return path
