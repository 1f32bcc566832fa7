"""The VOI transformation of a DICOM grey image (PS3.3 C.11.2), as pydicom applies it.

A linear window (VOI LUT Function LINEAR or LINEAR_EXACT) maps values to grey linearly
between two limits and clips outside them, which is exactly what napari's contrast
limits do: the image keeps its modality values (what the model reads and the status bar
shows) and the window becomes contrast limits. SIGMOID and a VOI LUT Sequence are not
linear, so their output (pydicom's ``apply_windowing`` / ``apply_voi``) is what is shown
(:attr:`Voi.display`), while the modality values stay the data the model is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .base import note


@dataclass(frozen=True)
class Voi:
    """How to show modality values: contrast limits, and the values to show if not the data."""

    limits: tuple[float, float] | None = None
    display: np.ndarray | None = None
    #: (low, high) of ``display``'s nominal range, to reflect it for MONOCHROME1
    display_range: tuple[float, float] | None = None


def voi_transform(ds, values: np.ndarray, meta: dict) -> Voi:
    """The first VOI transformation the file states (a VOI LUT Sequence wins over a window,
    as in pydicom's ``apply_voi_lut``); ``values`` are modality values, not yet reflected.

    A transformation that cannot be applied is a note, not an error: the pixels are fine.
    """
    try:
        if _has_voi_lut(ds):
            return _voi_lut(ds, values, meta)
        return _window(ds, values, meta)
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on odd VOI attributes
        note(meta, f"the file's VOI transformation could not be applied ({type(exc).__name__}: {exc}); "
                   "the full value range is shown")
        return Voi()


def _has_voi_lut(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _voi_lut(ds, values: np.ndarray, meta: dict) -> Voi:
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    meta["voi_lut"] = str(item.get("LUTExplanation", "") or "VOI LUT Sequence")
    shown = np.asarray(apply_voi(values, ds, 0))
    descriptor = item.LUTDescriptor
    entries, first = int(descriptor[0]) or 1 << 16, int(descriptor[1])
    table = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0))
    lo, hi = float(table.min()), float(table.max())
    if lo == hi:
        hi = lo + 1
    # The table's own output span maps to black..white (its descriptor's bit count is often wrong).
    return Voi(limits=(lo, hi), display=shown, display_range=(lo, hi))


def _window(ds, values: np.ndarray, meta: dict) -> Voi:
    """Window Center/Width under the VOI LUT Function (LINEAR when absent)."""
    centers = _numbers(ds.get("WindowCenter"))
    widths = _numbers(ds.get("WindowWidth"))
    if not centers or not widths:
        return Voi()
    center, width = centers[0], widths[0]
    meta["window_center"] = center
    meta["window_width"] = width
    if len(centers) > 1 or len(widths) > 1:
        meta["window_centers"] = centers
        meta["window_widths"] = widths
    if "WindowCenterWidthExplanation" in ds:
        meta["window_explanation"] = str(ds.WindowCenterWidthExplanation)
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    meta["voi_lut_function"] = function
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        note(meta, f"unknown VOI LUT Function {function!r}; the window is applied as LINEAR")
        function = "LINEAR"
    if function == "LINEAR" and width > 1:
        # PS3.3 C.11.2.1.2.1: at or below low is black, above high is white
        return Voi(limits=(center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2))
    if function == "LINEAR_EXACT" and width > 0:
        return Voi(limits=(center - width / 2, center + width / 2))  # PS3.3 C.11.2.1.3.2
    if function == "SIGMOID" and width > 0 or function == "LINEAR" and width == 1:
        return _windowed_display(ds, values, function)  # a sigmoid, or a threshold
    note(meta, f"window width {width:g} is not valid for {function}; the full value range is shown")
    return Voi()


def _windowed_display(ds, values: np.ndarray, function: str) -> Voi:
    """pydicom's windowing output, shown instead of the values, between its own y range."""
    from pydicom.pixels import apply_windowing

    ds = _with_function(ds, function)
    with np.errstate(over="ignore"):  # exp(inf) at the ends of the range: 0 and 1 exactly
        lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
    shown = np.asarray(apply_windowing(values, ds)).astype(np.float32)
    return Voi(limits=(lo, hi), display=shown, display_range=(lo, hi))


def _with_function(ds, function: str):
    """``ds`` with the VOI LUT Function pydicom should apply (an unknown one is LINEAR here)."""
    if str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() == function:
        return ds
    ds = ds.copy()
    ds.VOILUTFunction = function
    return ds


def _numbers(value) -> list[float]:
    """DICOM WindowCenter/Width may be multi-valued; the first is the default."""
    if value is None:
        return []
    values = value if isinstance(value, Iterable) and not isinstance(value, str | bytes) else [value]
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out
