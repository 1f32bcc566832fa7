"""PNG, JPEG, BMP (Pillow) and TIFF (tifffile, Pillow as the fallback codec)."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    BoundedReader,
    ImageReadError,
    ImageTooLargeError,
    LoadedImage,
    ReadLimits,
    note,
    one_line,
)
from .sniff import PNG_MAGIC, sniff_format

# Modes Pillow decodes to, and how many bands / bytes per band the array will have.
_WIDE_MODES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_TO_RGBA = ("LA", "PA", "RGBa", "La")
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF"}


def read_pil(p: Path, limits: ReadLimits) -> LoadedImage:
    """Read through Pillow after checking the size its header claims."""
    from PIL import ImageOps

    meta: dict[str, Any] = {}
    with _open_checked(p, limits) as im:
        im.load()
        meta["format"] = (im.format or "").lower() or None
        meta["mode"] = im.mode
        if "dpi" in im.info:
            meta["dpi"] = tuple(float(v) for v in im.info["dpi"])
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            meta["n_frames"] = n_frames
            note(meta, f"file has {n_frames} frames; only the first was read")
        # Phones and some exporters store rotation in EXIF; show what viewers show.
        oriented = ImageOps.exif_transpose(im)
        if oriented is not im and oriented is not None:
            meta["exif_orientation_applied"] = True
            im = oriented
        im = _normalise_pil_mode(im)
        data = np.asarray(im)
    if _is_16bit_colour_png(p):
        note(meta, "16-bit colour PNG: Pillow decodes it to 8 bits per channel")
    return LoadedImage(np.array(data), None, meta)


@contextlib.contextmanager
def _open_checked(p: Path, limits: ReadLimits):
    """``Image.open`` (header only) with the size check done before any pixel is decoded.

    Pillow reads through :class:`BoundedReader`, so a chunk length that claims more than
    the file holds cannot make it allocate that much. Its decompression-bomb check is
    replaced by :class:`ReadLimits`: the warning is silenced (the default limit here is
    lower) and, when its hard error fires, the header is read again without it so that
    the refusal (or, when the user raised the limit, the read) follows this module.
    """
    from PIL import Image

    with BoundedReader(p) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh)
        except Image.DecompressionBombError:
            fh.seek(0)
            im = _open_without_bomb_check(p, fh)
        with im:
            width, height = im.size
            mode = im.mode
            bands = 4 if mode in _TO_RGBA or mode == "P" else len(im.getbands())
            limits.check(p, height, width, bands, _WIDE_MODES.get(mode, 1), getattr(im, "n_frames", 1))
            yield im


def _open_without_bomb_check(p: Path, fh):
    """The header through the format's own Pillow plugin class, which has no bomb check."""
    from PIL import Image

    fmt = _PIL_FORMATS.get(sniff_format(p) or "")
    if fmt is None or fmt not in Image.OPEN:
        raise ImageReadError(f"{p}: Pillow cannot read this file's header")
    factory, _accept = Image.OPEN[fmt]
    return factory(fh, str(p))


def pil_shape(p: Path, limits: ReadLimits) -> tuple[int, int]:
    """(rows, columns) from the header, refused like :func:`read_pil` when over the limits."""
    with _open_checked(p, limits) as im:
        width, height = im.size
    return height, width


def _normalise_pil_mode(im):
    """Map Pillow modes to arrays napari can show: gray, RGB or RGBA."""
    mode = im.mode
    if mode in ("L", "I", "F", "RGB", "RGBA") or mode.startswith("I;16"):
        return im
    if mode == "1":
        return im.convert("L")  # bilevel -> 0/255
    if mode in _TO_RGBA:
        return im.convert("RGBA")
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _is_16bit_colour_png(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    # IHDR data starts at byte 16: width(4) height(4) bit depth(1) colour type(1)
    return head.startswith(PNG_MAGIC) and len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


class _TifffileMessages(logging.Filter):
    """tifffile logs what it finds odd in a file (to stderr when nothing is configured);
    during a read in this thread those messages are collected instead, so a CLI error
    stays one line and a read that succeeds can report them as notes."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(self.local, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


_TIFFFILE_MESSAGES = _TifffileMessages()


@contextlib.contextmanager
def _collect_tifffile_messages():
    log = logging.getLogger("tifffile")
    if _TIFFFILE_MESSAGES not in log.filters:
        log.addFilter(_TIFFFILE_MESSAGES)
    sink: list[str] = []
    _TIFFFILE_MESSAGES.local.sink = sink
    try:
        yield sink
    finally:
        _TIFFFILE_MESSAGES.local.sink = None


def read_tiff(p: Path, limits: ReadLimits) -> LoadedImage:
    """First page through tifffile; Pillow when tifffile lacks the codec (LZW, JPEG).

    tifffile reads through :class:`BoundedReader`: a strip byte count of 4 GiB in a small
    file otherwise makes it allocate 4 GiB before it finds out.
    """
    import tifffile

    meta: dict[str, Any] = {}
    try:
        with _collect_tifffile_messages() as messages, BoundedReader(p) as fh, tifffile.TiffFile(fh) as tif:
            n_pages = len(tif.pages)
            page = tif.pages.first
            _check_page(p, page, limits, n_pages)
            data = page.asarray()
            axes = page.axes
            photometric = page.photometric
            meta["photometric"] = getattr(photometric, "name", str(photometric))
            meta["bits_per_sample"] = int(page.bitspersample)
            spacing = _tiff_spacing(page)
    except (ValueError, ImportError, NotImplementedError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        try:
            img = read_pil(p, limits)
        except ImageTooLargeError:
            raise
        except Exception as pil_exc:  # noqa: BLE001 - report tifffile's reason, it is the primary decoder
            raise ImageReadError(f"{p}: cannot decode TIFF: {one_line(exc)}") from pil_exc
        img.metadata["format"] = "tiff"
        img.metadata["decoder"] = "pillow"
        return img
    for text in dict.fromkeys(messages):  # once each, in order
        note(meta, f"tifffile: {text}")
    if n_pages > 1:
        meta["n_pages"] = n_pages
        note(meta, f"multi-page TIFF with {n_pages} pages; only the first page was read")
    # Planar-separate RGB comes out as (S, Y, X).
    if "S" in axes and data.ndim == 3 and axes.index("S") == 0:
        data = np.moveaxis(data, 0, -1)
    # Min-is-white: invert so higher is brighter, as for DICOM MONOCHROME1.
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and data.ndim == 2:
        data = _invert_miniswhite(data, int(page.bitspersample))
        meta["inverted"] = True
    return LoadedImage(data, spacing, meta)


def _tiff_spacing(page) -> tuple[float, float] | None:
    """(row, column) mm from resolution tags in centimetres; inch resolutions are
    nearly always a default dpi, not a measurement, and give None."""
    import tifffile

    if page.resolutionunit != tifffile.RESUNIT.CENTIMETER:
        return None
    try:
        x_res, y_res = (float(v) for v in page.resolution)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (math.isfinite(x_res) and math.isfinite(y_res) and x_res > 0 and y_res > 0):
        return None
    return (10.0 / y_res, 10.0 / x_res)


def tiff_shape(p: Path, limits: ReadLimits) -> tuple[int, int]:
    """(rows, columns) of the first page from its IFD, refused like :func:`read_tiff`."""
    import tifffile

    with _collect_tifffile_messages(), BoundedReader(p) as fh, tifffile.TiffFile(fh) as tif:
        page = tif.pages.first
        _check_page(p, page, limits, 1)
        return int(page.imagelength), int(page.imagewidth)


def _check_page(p: Path, page, limits: ReadLimits, n_pages: int) -> None:
    """The page's claimed shape and sample type against the limits, before ``asarray``."""
    dtype = page.dtype
    if dtype is None:
        raise ImageReadError(f"{p}: TIFF sample format/bits per sample not supported")
    shape = tuple(int(s) for s in page.shape)
    rows = int(page.imagelength) * max(int(page.imagedepth), 1)
    cols = int(page.imagewidth)
    other = math.prod(shape) // max(rows * cols, 1) if rows * cols else 1
    samples = max(other, int(page.samplesperpixel))
    limits.check(p, rows, cols, samples, np.dtype(dtype).itemsize, n_pages)
    if int(page.compression) == 1:  # uncompressed: every claimed pixel must be in the file
        need = rows * math.ceil(cols * samples * int(page.bitspersample) / 8)
        size = int(page.parent.filehandle.size)
        if need > size:
            # decoding it anyway allocates and zero-fills the whole claimed image first
            raise ImageReadError(f"{p}: the header claims {rows:,} x {cols:,} uncompressed pixels "
                                 f"({need:,} bytes) but the file holds {size:,} bytes: it is truncated "
                                 "or corrupt")


def _invert_miniswhite(data: np.ndarray, bits: int) -> np.ndarray:
    if data.dtype == bool:
        return ~data
    if np.issubdtype(data.dtype, np.unsignedinteger):
        top = (1 << min(bits, data.dtype.itemsize * 8)) - 1
        return (top - data.astype(np.int64)).astype(data.dtype)
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    return (lo + hi - data).astype(data.dtype)
