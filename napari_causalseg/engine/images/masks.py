"""Label masks on disk: written atomically, read back as labels or as a lesion mask.

Convention: label values are written as they are (0 background, 1..N labels) in the
smallest unsigned type that holds them, so a napari Labels layer reloads unchanged.
Reading a lesion mask, any value above 0 in any colour channel is lesion (QaTa-COV19
stores 0/255), and an alpha channel is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .base import ImageReadError, ReadLimits
from .read import read_image

MASK_EXTENSIONS = (".png", ".tif", ".tiff")


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> str:
    """Write a label mask as PNG or TIFF (chosen by extension), atomically; returns the path.

    A {0, 1} mask therefore looks black in an ordinary image viewer. The file is written
    to a temporary name in the same directory and moved into place with ``os.replace``,
    so a crash never leaves a half-written file and never damages an existing one.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in MASK_EXTENSIONS:
        raise ValueError(
            f"{p}: cannot write a mask with extension {ext or '(none)'!r}; "
            f"supported: {', '.join(MASK_EXTENSIONS)}"
        )
    arr = _mask_array(p, mask, ext)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{p}: directory {parent} does not exist")

    def encode(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _encode_mask(fh, arr, ext)

    atomic_write(p, encode)
    return str(p)


def read_lesion_mask(path: str | os.PathLike, limits: ReadLimits | None = None) -> np.ndarray:
    """A 2-D bool lesion mask from any image file (any channel value > 0 is lesion)."""
    arr = read_image(path, limits).data
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[-1] == 4 else arr  # a transparent background is not lesion
        return np.any(arr > 0, axis=-1)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: mask has shape {arr.shape}; expected a 2-D image")
    return arr > 0


def _mask_array(p: Path, mask, ext: str) -> np.ndarray:
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


def _encode_mask(fh, arr: np.ndarray, ext: str) -> None:
    if ext == ".png":
        from PIL import Image

        Image.fromarray(arr).save(fh, format="PNG")
    else:
        import tifffile

        tifffile.imwrite(fh, arr, photometric="minisblack", compression="zlib")
