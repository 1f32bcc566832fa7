"""DICOM X-rays through pydicom: modality values, polarity, window and spacing.

Values are modality values (Rescale Slope/Intercept or the Modality LUT applied) and
never clipped to the stored window; MONOCHROME1 is reflected within the nominal value
range so the same tissue maps to the same value in every image of a series. Only the
first frame is decoded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    NOT_DECODER_ERRORS,
    BoundedReader,
    ImageReadError,
    LoadedImage,
    ReadLimits,
    note,
    one_line,
)
from .voi import voi_transform

_META_KEYS = ("Modality", "BitsStored", "BitsAllocated", "PixelRepresentation", "ViewPosition",
              "BodyPartExamined", "PresentationIntentType")


def read_dicom(p: Path, limits: ReadLimits) -> LoadedImage:
    """First frame of a DICOM image, after checking the size its header claims."""
    ds = _open_dataset(p)
    frames, samples = _check_claim(p, ds, limits)
    arr = _first_frame(p, ds, frames)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta: dict[str, Any] = {"format": "dicom", "photometric_interpretation": photometric}
    for key in _META_KEYS:
        if key in ds and ds[key].value is not None:
            val = ds[key].value
            meta[_snake(key)] = val if isinstance(val, int | float) else str(val)
    if frames > 1:
        meta["n_frames"] = frames
        note(meta, f"multi-frame DICOM with {frames} frames; only the first frame was read")

    if samples > 1 or photometric.startswith(("RGB", "YBR")):
        # pydicom converts YBR to RGB by default; no rescale/window for colour.
        meta["photometric_interpretation_out"] = "RGB"
        return LoadedImage(arr, _spacing(ds, meta), meta)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if np.issubdtype(rgb.dtype, np.integer) and rgb.max(initial=0) > 255:
            rgb = (rgb >> 8).astype(np.uint8)  # 16-bit LUT entries -> 8-bit display
        return LoadedImage(rgb, _spacing(ds, meta), meta)
    return _grey(ds, arr, photometric, meta)


def dicom_shape(p: Path, limits: ReadLimits) -> tuple[int, int]:
    """(Rows, Columns) without reading the pixel data, refused like :func:`read_dicom`."""
    import pydicom

    with BoundedReader(p) as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{p}: the DICOM header has no Rows/Columns, so it holds no image")
    _check_claim(p, ds, limits)
    return int(ds.Rows), int(ds.Columns)


def _check_claim(p: Path, ds, limits: ReadLimits) -> tuple[int, int]:
    """One frame of the claimed Rows x Columns x samples x bytes against the limits."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    limits.check(p, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), samples,
                 max(math.ceil(bits / 8), 1), frames)
    return frames, samples


def _open_dataset(p: Path):
    """Parse the file (``force`` only for preamble-less files) and make sure it has pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with BoundedReader(p) as fh:
            fh.seek(128)
            has_preamble = fh.read(4) == b"DICM"
            fh.seek(0)
            ds = pydicom.dcmread(fh, force=not has_preamble)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{p}: not a valid DICOM file: {exc}") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "SOPClassUID", None)
        kind = getattr(kind, "name", None) or "object"
        raise ImageReadError(f"{p}: DICOM {kind} has no pixel data")
    if "TransferSyntaxUID" not in ds.file_meta:
        # Preamble-less files carry no transfer syntax; use the encoding
        # pydicom detected while parsing (nearly always implicit VR LE).
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = getattr(ds, "original_encoding", (True, True))
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _first_frame(p: Path, ds, frames: int) -> np.ndarray:
    """Decode frame 0 only; a compressed syntax without its decoder names the extra to install."""
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except NOT_DECODER_ERRORS:
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything (Rust panics too); say which file and why
        hint = _decoder_hint(ds.file_meta.get("TransferSyntaxUID"))
        raise ImageReadError(f"{p}: cannot decode DICOM pixel data: {one_line(exc)}{hint}") from exc


def _decoder_hint(tsuid) -> str:
    """Name the extra to install when no decoder for a compressed transfer syntax is present."""
    if tsuid is None or not getattr(tsuid, "is_compressed", False):
        return ""
    try:
        from pydicom.pixels import get_decoder

        if get_decoder(tsuid).is_available:
            return ""  # the decoder is there: the data is corrupt
    except Exception:  # noqa: BLE001 - an unknown syntax has no decoder at all
        pass
    return (f" (no decoder for the compressed transfer syntax {tsuid.name} is installed; "
            "install them with pip install 'napari-causalseg[dicom]')")


def _grey(ds, arr: np.ndarray, photometric: str, meta: dict) -> LoadedImage:
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        stored_lo, stored_hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        stored_lo, stored_hi = 0, (1 << bits_stored) - 1
    data, lo, hi = _modality_values(ds, arr, stored_lo, stored_hi, meta)
    voi = voi_transform(ds, data, meta)
    limits, display = voi.limits, voi.display
    if photometric == "MONOCHROME1":
        data = _reflect(data, lo, hi)
        if display is not None and voi.display_range is not None:
            display = _reflect(display, *voi.display_range).astype(display.dtype)
        elif limits is not None:
            limits = (lo + hi - limits[1], lo + hi - limits[0])
        meta["inverted"] = True
    if limits is not None:
        meta["contrast_limits"] = limits
    meta["value_range"] = (lo, hi)
    return LoadedImage(data, _spacing(ds, meta), meta, display=display)


def _modality_values(ds, arr: np.ndarray, stored_lo: int, stored_hi: int,
                     meta: dict) -> tuple[np.ndarray, float, float]:
    """Apply the Modality LUT / rescale; keep integers when the result is integral.

    Returns the data and the nominal (lo, hi) range of modality values.
    """
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        meta["modality_lut"] = True
        out = apply_modality_lut(arr, ds)
        # Values outside the LUT clamp to its ends, so the LUT bounds the range.
        lut = (np.asarray(apply_modality_lut(np.arange(stored_lo, stored_hi + 1), ds))
               if stored_hi - stored_lo < (1 << 16) else np.asarray(out))
        return out, float(lut.min()), float(lut.max())

    slope = float(ds.get("RescaleSlope", 1) or 1)  # 0 is invalid; treat as absent
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    meta["rescale_slope"] = slope
    meta["rescale_intercept"] = intercept
    if "RescaleType" in ds:
        meta["rescale_type"] = str(ds.RescaleType)
    lo, hi = sorted((slope * stored_lo + intercept, slope * stored_hi + intercept))
    if not np.issubdtype(arr.dtype, np.integer):  # float pixel data: no stored-bits range
        out = (arr * slope + intercept).astype(np.float32)
        return out, float(np.nanmin(out)), float(np.nanmax(out))
    if slope == 1 and intercept == 0:
        return arr, lo, hi
    if slope.is_integer() and intercept.is_integer():
        out = arr.astype(np.int64) * int(slope) + int(intercept)
        return out.astype(_smallest_int_dtype(min(lo, out.min()), max(hi, out.max()))), lo, hi
    # float32 holds every 16-bit stored value times a typical slope closely enough
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)), lo, hi


def _reflect(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer) and float(lo).is_integer() and float(hi).is_integer():
        out = int(lo) + int(hi) - data.astype(np.int64)
        return out.astype(_smallest_int_dtype(min(lo, out.min()), max(hi, out.max())))
    return (np.float32(lo + hi) - data.astype(np.float32)).astype(np.float32)


def _smallest_int_dtype(lo: float, hi: float) -> np.dtype:
    candidates = (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32)
    for dt in candidates:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _spacing(ds, meta: dict) -> tuple[float, float] | None:
    """PixelSpacing (patient plane) first, ImagerPixelSpacing (detector) second."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        if key not in ds:
            continue
        val = ds[key].value
        try:
            row, col = (float(v) for v in val)
        except (TypeError, ValueError):
            continue
        if math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0:
            meta["spacing_source"] = key
            return (row, col)
    return None


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
