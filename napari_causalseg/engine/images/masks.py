"""Masks and probability maps on disk: written atomically, read back tolerantly.

The one mask convention of this package (CLI, napari writer, annotation folder, NIfTI,
DICOM SEG): **0 is background, 1 is lesion**, stored as unsigned integers, the values a
napari Labels layer holds. Labels are written as they are (0, 1..N) in the smallest
unsigned type that holds them, so a Labels layer reloads unchanged. A 0/1 PNG looks
black in an ordinary image viewer; open it in napari (or stretch the contrast). Only
data sets written in QaTa-COV19's own layout (``causalseg synth``) keep QaTa's 0/255.
Reading a lesion mask, any value above 0 in any colour channel is lesion (so 0/255
masks read the same), and an alpha channel is ignored.

The confounder map is a probability in [0, 1], not a label image, and has its own
writer: float32 TIFF (exact), or 8-bit PNG holding ``round(p * 255)`` (to 1/510).
TIFF files carry the pixel spacing as resolution tags in pixels per centimetre
(XResolution for columns, YResolution for rows), which ImageJ/Fiji and GDAL read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .base import ImageReadError, ReadLimits
from .read import read_image

MASK_EXTENSIONS = (".png", ".tif", ".tiff")


Spacing = tuple[float, float] | None  # (row, column) in mm


def write_mask(path: str | os.PathLike, mask: np.ndarray, spacing: Spacing = None,
               overwrite: bool = True) -> str:
    """Write a label mask as PNG or TIFF (chosen by extension), atomically; returns the path.

    The file is written to a temporary name in the same directory and moved into place,
    so a crash never leaves a half-written file and never damages an existing one;
    ``overwrite=False`` refuses to replace an existing file. ``spacing`` (mm) goes into
    TIFF resolution tags; PNG does not keep it.
    """
    p, ext = _checked_target(path)
    return _write_encoded(p, label_array(p, mask, ext), ext, spacing, overwrite)


def write_probability(path: str | os.PathLike, probability: np.ndarray, spacing: Spacing = None,
                      overwrite: bool = True) -> str:
    """Write a probability map in [0, 1]: float32 TIFF, or PNG as ``round(p * 255)``."""
    p, ext = _checked_target(path)
    prob = probability_array(p, probability)
    arr = prob if ext != ".png" else np.rint(prob * 255).astype(np.uint8)
    return _write_encoded(p, arr, ext, spacing, overwrite)


def _write_encoded(p: Path, arr: np.ndarray, ext: str, spacing: Spacing, overwrite: bool) -> str:
    """Encode to a temporary file beside `p`, then rename it into place."""
    spacing = check_spacing(spacing)

    def encode(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _encode_mask(fh, arr, ext, spacing)

    atomic_write(p, encode, overwrite)
    return str(p)


def probability_array(p: object, probability: np.ndarray) -> np.ndarray:
    """A 2-D float32 array of finite values in [0, 1], or a ValueError naming `p`."""
    arr = np.asarray(probability)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "fiub":
        raise ValueError(f"{p}: a probability map must be a non-empty 2-D numeric array, "
                         f"got shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{p}: a probability map must hold finite values in [0, 1]")
    return np.ascontiguousarray(arr)


def check_spacing(spacing: Spacing) -> Spacing:
    """(row, column) mm as two positive finite floats, or None."""
    if spacing is None:
        return None
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"pixel spacing must be (row, column) in mm, got {spacing!r}") from None
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise ValueError(f"pixel spacing must be positive and finite, got {spacing!r}")
    return (row, col)


def _checked_target(path: str | os.PathLike) -> tuple[Path, str]:
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in MASK_EXTENSIONS:
        raise ValueError(
            f"{p}: cannot write a mask with extension {ext or '(none)'!r}; "
            f"supported: {', '.join(MASK_EXTENSIONS)}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{p}: directory {parent} does not exist")
    return p, ext


def read_lesion_mask(path: str | os.PathLike, limits: ReadLimits | None = None) -> np.ndarray:
    """A 2-D bool lesion mask from any image file (any channel value > 0 is lesion)."""
    arr = read_image(path, limits).data
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[-1] == 4 else arr  # a transparent background is not lesion
        return np.any(arr > 0, axis=-1)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: mask has shape {arr.shape}; expected a 2-D image")
    return arr > 0


def label_array(p: Path, mask, ext: str) -> np.ndarray:
    """Integer labels >= 0 in the smallest unsigned type `ext` can hold, or a ValueError."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                and np.all(arr == np.round(arr))):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{p}: mask must hold integer labels, got dtype {arr.dtype}")
    if ext == ".png" and arr.ndim != 2:
        raise ValueError(f"{p}: PNG holds a 2-D mask only, got shape {arr.shape}; use .tif")
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"{p}: mask must be at least 2-D and non-empty, got shape {arr.shape}")
    lo = int(arr.min())
    hi = int(arr.max())
    if lo < 0:
        raise ValueError(f"{p}: mask has negative labels (min {lo}); labels must be >= 0")
    limits = [(np.uint8, 255), (np.uint16, 65535)]
    if ext != ".png":
        limits.append((np.uint32, 2**32 - 1))
    for dt, top in limits:
        if hi <= top:
            return np.ascontiguousarray(arr.astype(dt))
    raise ValueError(
        f"{p}: label {hi} does not fit the {'16-bit PNG' if ext == '.png' else '32-bit TIFF'} "
        "format" + ("; write a .tif instead" if ext == ".png" else "")
    )


def _encode_mask(fh, arr: np.ndarray, ext: str, spacing: Spacing = None) -> None:
    if ext == ".png":
        from PIL import Image

        Image.fromarray(arr).save(fh, format="PNG")
    else:
        import tifffile

        resolution = {}
        if spacing is not None:  # pixels per cm: XResolution is along columns
            resolution = {"resolution": (10.0 / spacing[1], 10.0 / spacing[0]),
                          "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(fh, arr, photometric="minisblack", compression="zlib", **resolution)
