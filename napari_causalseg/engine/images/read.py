"""``read_image``: any supported file to a :class:`LoadedImage`, raising only this package's errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import NOT_DECODER_ERRORS, ImageReadError, LoadedImage, ReadLimits, one_line
from .dicom import dicom_shape, read_dicom
from .raster import pil_shape, read_pil, read_tiff, tiff_shape
from .sniff import sniff_format

PathLike = str | os.PathLike

_READERS: dict[str, Callable[[Path, ReadLimits], LoadedImage]] = {
    "png": read_pil, "jpeg": read_pil, "bmp": read_pil, "tiff": read_tiff, "dicom": read_dicom,
}
_SHAPES: dict[str, Callable[[Path, ReadLimits], tuple[int, int]]] = {
    "png": pil_shape, "jpeg": pil_shape, "bmp": pil_shape, "tiff": tiff_shape, "dicom": dicom_shape,
}
# ITU-R BT.601 luma, the weights Pillow uses for RGB -> "L".
_LUMA = np.array([0.299, 0.587, 0.114])


def read_image(path: PathLike, limits: ReadLimits | None = None) -> LoadedImage:
    """Read a PNG, JPEG, BMP, TIFF or DICOM file (first frame or page).

    Raises :class:`ImageReadError` (a ``ValueError``) naming the file for anything
    missing, unsupported, corrupt or over ``limits`` (:class:`ImageTooLargeError`;
    default :meth:`ReadLimits.from_env`), and nothing else, so callers catch one thing.
    """
    p = Path(path)
    limits = ReadLimits.from_env() if limits is None else limits
    fmt = _format_of(p)
    try:
        img = _READERS[fmt](p, limits)
        img.data = _check_layout(p, img.data)
        if img.display is not None:
            img.display = _check_layout(p, img.display)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(f"{p}: not enough memory to decode this {fmt.upper()} file "
                             "(close other programs or use a smaller image)") from exc
    except NOT_DECODER_ERRORS:
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything, even Rust panics (BaseException)
        raise ImageReadError(f"{p}: cannot decode as {fmt.upper()}: {type(exc).__name__}: {one_line(exc)}") from exc
    img.metadata.setdefault("format", fmt)
    img.metadata.setdefault("source_path", str(p))
    return img


def _format_of(p: Path) -> str:
    """The sniffed format of an existing regular file, or the error both readers give."""
    if not p.exists():
        raise ImageReadError(f"{p}: file does not exist")
    if not p.is_file():
        raise ImageReadError(f"{p}: not a regular file")
    fmt = sniff_format(p)
    if fmt is None:
        raise ImageReadError(f"{p}: not a PNG, JPEG, TIFF or DICOM file (content not recognised)")
    return fmt


def _check_layout(p: Path, data: np.ndarray) -> np.ndarray:
    """Reject what a 2-D X-ray tool cannot show; normalise dtypes napari/vispy dislike."""
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4))):
        raise ImageReadError(
            f"{p}: unsupported image shape {data.shape}; expected 2-D grayscale "
            "or RGB/RGBA with channels last"
        )
    if data.size == 0:
        raise ImageReadError(f"{p}: image is empty (shape {data.shape})")
    if np.iscomplexobj(data):
        raise ImageReadError(f"{p}: complex-valued images are not supported")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float16:
        data = data.astype(np.float32)
    elif data.dtype.kind not in "uif":
        raise ImageReadError(f"{p}: pixel type {data.dtype} is not an image type")
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return np.ascontiguousarray(data)


def image_shape(path: PathLike, limits: ReadLimits | None = None) -> tuple[int, int]:
    """(rows, columns) from the header only, so thousands of files check in a second.

    Refuses what :func:`read_image` refuses (same limits, same errors), so a data set
    check finds a corrupt or gigantic file before training starts.
    """
    p = Path(path)
    limits = ReadLimits.from_env() if limits is None else limits
    fmt = _format_of(p)
    try:
        return _SHAPES[fmt](p, limits)
    except ImageReadError:
        raise
    except NOT_DECODER_ERRORS:
        raise
    except BaseException as exc:  # noqa: BLE001 - any header problem is the file's, named below
        raise ImageReadError(f"{p}: cannot read the image header: {type(exc).__name__}: {one_line(exc)}") from exc


def to_gray(arr: np.ndarray, what: object = "<array>") -> np.ndarray:
    """2-D grey from grey or RGB(A): BT.601 luminance, rounded back to the input dtype."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        luma = arr[..., :3].astype(np.float64) @ _LUMA
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(arr.dtype)
            return np.clip(np.rint(luma), info.min, info.max).astype(arr.dtype)
        return luma.astype(arr.dtype)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0]
    raise ImageReadError(f"{what}: image has shape {arr.shape}; expected 2-D grayscale or RGB")
