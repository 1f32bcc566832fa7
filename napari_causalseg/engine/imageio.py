"""Reading chest X-rays and writing label masks, with no Qt or napari import.

The napari reader/writer, the CLI and the datasets all go through here, so an
image means the same thing (values, orientation, spacing) wherever it is opened.

Conventions
-----------
* Brighter is higher. DICOM MONOCHROME1 and TIFF min-is-white images are
  inverted so the model and the user see the same polarity as MONOCHROME2.
* DICOM values are modality values (Rescale Slope/Intercept applied). They are
  never clipped to the stored window; the window only suggests contrast limits.
* ``spacing`` is (row, column) in millimetres, or ``None`` when the file does
  not state it in a physical unit (PNG/JPEG/TIFF dpi is usually a default).
* Metadata holds no patient identifiers, so it is safe to keep in layers and
  in files the user shares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "ImageReadError",
    "LoadedImage",
    "can_read",
    "read_image",
    "write_mask",
]

PathLike = str | os.PathLike

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", *DICOM_EXTENSIONS)
MASK_EXTENSIONS = (".png", ".tif", ".tiff")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_SNIFF_BYTES = 132  # DICOM: 128-byte preamble + b"DICM"


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names file and reason."""


@dataclass
class LoadedImage:
    """Pixel data plus what is needed to show and measure it.

    ``data`` is 2-D (grayscale) or 3-D with 3/4 channels last (RGB/RGBA).
    """

    data: np.ndarray
    spacing: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- sniffing


def _sniff(path: Path) -> str | None:
    """Format from content (magic bytes), falling back to extension only for
    preamble-less DICOM, which has no magic. Never raises on I/O problems."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    # Old files written without the Part 10 header start directly with a
    # group 0x0008 element (little endian). Only trust that with a DICOM name.
    if path.suffix.lower() in DICOM_EXTENSIONS and head[:2] == b"\x08\x00" and len(head) >= 8:
        return "dicom"
    return None


def can_read(path: PathLike) -> bool:
    """Cheap check (reads 132 bytes) whether :func:`read_image` should be tried.

    Content decides, not the name: a ``.dcm`` full of random bytes is refused,
    an extension-less file with the DICM preamble is accepted.
    """
    try:
        return _sniff(Path(path)) is not None
    except (TypeError, ValueError):  # not a path at all (e.g. embedded NUL)
        return False


# ---------------------------------------------------------------------- reading


def read_image(path: PathLike) -> LoadedImage:
    """Read a PNG, JPEG, TIFF or DICOM file.

    Raises :class:`ImageReadError` (a ``ValueError``) naming the file for
    anything missing, unsupported or corrupt, so callers catch one thing.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file does not exist")
    if not p.is_file():
        raise ImageReadError(f"{p}: not a regular file")
    fmt = _sniff(p)
    if fmt is None:
        raise ImageReadError(f"{p}: not a PNG, JPEG, TIFF or DICOM file (content not recognised)")
    readers: dict[str, Callable[[Path], LoadedImage]] = {
        "png": _read_pil,
        "jpeg": _read_pil,
        "tiff": _read_tiff,
        "dicom": _read_dicom,
    }
    try:
        img = readers[fmt](p)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise anything from OSError to KeyError
        raise ImageReadError(f"{p}: cannot decode as {fmt.upper()}: {exc}") from exc
    img.data = _check_layout(p, img.data)
    img.metadata.setdefault("format", fmt)
    img.metadata.setdefault("source_path", str(p))
    return img


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
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return np.ascontiguousarray(data)


def _read_pil(p: Path) -> LoadedImage:
    from PIL import Image, ImageOps

    meta: dict[str, Any] = {}
    with Image.open(p) as im:
        im.load()
        meta["format"] = (im.format or "").lower() or None
        meta["mode"] = im.mode
        if "dpi" in im.info:
            meta["dpi"] = tuple(float(v) for v in im.info["dpi"])
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            meta["n_frames"] = n_frames
            _note(meta, f"file has {n_frames} frames; only the first was read")
        # Phones and some exporters store rotation in EXIF; show what viewers show.
        oriented = ImageOps.exif_transpose(im)
        if oriented is not im and oriented is not None:
            meta["exif_orientation_applied"] = True
            im = oriented
        im = _normalise_pil_mode(im)
        data = np.asarray(im)
    if _is_16bit_colour_png(p):
        _note(meta, "16-bit colour PNG: Pillow decodes it to 8 bits per channel")
    return LoadedImage(np.array(data), None, meta)


def _normalise_pil_mode(im):
    """Map Pillow modes to arrays napari can show: gray, RGB or RGBA."""
    mode = im.mode
    if mode in ("L", "I", "F", "RGB", "RGBA") or mode.startswith("I;16"):
        return im
    if mode == "1":
        return im.convert("L")  # bilevel -> 0/255
    if mode in ("LA", "PA", "RGBa", "La"):
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
    return head.startswith(_PNG_MAGIC) and len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _read_tiff(p: Path) -> LoadedImage:
    import tifffile

    meta: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(p) as tif:
            n_pages = len(tif.pages)
            page = tif.pages[0]
            data = page.asarray()
            axes = page.axes
            photometric = page.photometric
            meta["photometric"] = getattr(photometric, "name", str(photometric))
            meta["bits_per_sample"] = int(page.bitspersample)
    except (ValueError, ImportError, NotImplementedError) as exc:
        # Usually a compression tifffile needs imagecodecs for (LZW, JPEG);
        # Pillow decodes the common ones itself.
        try:
            img = _read_pil(p)
        except Exception as pil_exc:
            raise ImageReadError(f"{p}: cannot decode TIFF: {exc}") from pil_exc
        img.metadata["format"] = "tiff"
        img.metadata["decoder"] = "pillow"
        return img
    if n_pages > 1:
        meta["n_pages"] = n_pages
        _note(meta, f"multi-page TIFF with {n_pages} pages; only the first page was read")
    # Planar-separate RGB comes out as (S, Y, X).
    if "S" in axes and data.ndim == 3 and axes.index("S") == 0:
        data = np.moveaxis(data, 0, -1)
    # Min-is-white: invert so higher is brighter, as for DICOM MONOCHROME1.
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and data.ndim == 2:
        data = _invert_miniswhite(data, int(page.bitspersample))
        meta["inverted"] = True
    return LoadedImage(data, None, meta)


def _invert_miniswhite(data: np.ndarray, bits: int) -> np.ndarray:
    if data.dtype == bool:
        return ~data
    if np.issubdtype(data.dtype, np.unsignedinteger):
        top = (1 << min(bits, data.dtype.itemsize * 8)) - 1
        return (top - data.astype(np.int64)).astype(data.dtype)
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    return (lo + hi - data).astype(data.dtype)


# ------------------------------------------------------------------------ DICOM


def _read_dicom(p: Path) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # force only for preamble-less files, which _sniff accepted by name
        with open(p, "rb") as fh:
            fh.seek(128)
            has_preamble = fh.read(4) == b"DICM"
        ds = pydicom.dcmread(p, force=not has_preamble)
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
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )

    try:
        arr = ds.pixel_array
    except Exception as exc:
        tsuid = ds.file_meta.get("TransferSyntaxUID")
        hint = ""
        if tsuid is not None and getattr(tsuid, "is_compressed", False):
            hint = (
                f" (transfer syntax {tsuid.name} is compressed; install a decoder "
                "such as pylibjpeg[all] or python-gdcm)"
            )
        raise ImageReadError(f"{p}: cannot decode DICOM pixel data: {exc}{hint}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta: dict[str, Any] = {
        "format": "dicom",
        "photometric_interpretation": photometric,
    }
    for key in (
        "Modality",
        "BitsStored",
        "BitsAllocated",
        "PixelRepresentation",
        "ViewPosition",
        "BodyPartExamined",
        "PresentationIntentType",
    ):
        if key in ds and ds[key].value is not None:
            val = ds[key].value
            meta[_snake(key)] = val if isinstance(val, int | float) else str(val)

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        arr = arr[0]
        meta["n_frames"] = n_frames
        _note(meta, f"multi-frame DICOM with {n_frames} frames; only the first frame was read")

    if samples > 1 or photometric.startswith(("RGB", "YBR")):
        # pydicom converts YBR to RGB by default; no rescale/window for colour.
        meta["photometric_interpretation_out"] = "RGB"
        return LoadedImage(arr, _dicom_spacing(ds, meta), meta)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if np.issubdtype(rgb.dtype, np.integer) and rgb.max(initial=0) > 255:
            rgb = (rgb >> 8).astype(np.uint8)  # 16-bit LUT entries -> 8-bit display
        return LoadedImage(rgb, _dicom_spacing(ds, meta), meta)

    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if signed:
        stored_lo, stored_hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        stored_lo, stored_hi = 0, (1 << bits_stored) - 1

    data, lo, hi = _modality_values(ds, arr, stored_lo, stored_hi, meta)

    window = _dicom_window(ds, meta)
    if photometric == "MONOCHROME1":
        # Reflect within the nominal value range, not the image's own min/max,
        # so the same tissue maps to the same value in every image of a series.
        data = _reflect(data, lo, hi)
        if window is not None:
            window = (lo + hi - window[1], lo + hi - window[0])
        meta["inverted"] = True
    if window is not None:
        meta["contrast_limits"] = window
    meta["value_range"] = (lo, hi)
    return LoadedImage(data, _dicom_spacing(ds, meta), meta)


def _modality_values(
    ds, arr: np.ndarray, stored_lo: int, stored_hi: int, meta: dict
) -> tuple[np.ndarray, float, float]:
    """Apply the Modality LUT / rescale; keep integers when the result is integral.

    Returns the data and the nominal (lo, hi) range of modality values.
    """
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        meta["modality_lut"] = True
        out = apply_modality_lut(arr, ds)
        # Values outside the LUT clamp to its ends, so the LUT bounds the range.
        lut = (
            np.asarray(apply_modality_lut(np.arange(stored_lo, stored_hi + 1), ds))
            if stored_hi - stored_lo < (1 << 16)
            else np.asarray(out)
        )
        return out, float(lut.min()), float(lut.max())

    slope = float(ds.get("RescaleSlope", 1) or 1)  # 0 is invalid; treat as absent
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    meta["rescale_slope"] = slope
    meta["rescale_intercept"] = intercept
    if "RescaleType" in ds:
        meta["rescale_type"] = str(ds.RescaleType)
    ends = sorted((slope * stored_lo + intercept, slope * stored_hi + intercept))
    lo, hi = ends
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


def _numbers(value) -> list[float]:
    """DICOM WindowCenter/Width may be multi-valued; the first is the default."""
    if value is None:
        return []
    values = (
        value if isinstance(value, Iterable) and not isinstance(value, str | bytes) else [value]
    )
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _dicom_window(ds, meta: dict) -> tuple[float, float] | None:
    """Record the stored window and turn the first one into (low, high) limits."""
    centers = _numbers(ds.get("WindowCenter"))
    widths = _numbers(ds.get("WindowWidth"))
    if not centers or not widths:
        return None
    center, width = centers[0], widths[0]
    meta["window_center"] = center
    meta["window_width"] = width
    if len(centers) > 1 or len(widths) > 1:
        meta["window_centers"] = centers
        meta["window_widths"] = widths
    if "WindowCenterWidthExplanation" in ds:
        meta["window_explanation"] = str(ds.WindowCenterWidthExplanation)
    if "VOILUTFunction" in ds:
        meta["voi_lut_function"] = str(ds.VOILUTFunction)
    if width <= 1:
        return None
    # PS3.3 C.11.2.1.2.1 linear window: values at or below low are black, above high white.
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    return (low, high)


def _dicom_spacing(ds, meta: dict) -> tuple[float, float] | None:
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


def _note(meta: dict, text: str) -> None:
    """Things the user should know about how the file was read (e.g. pages dropped)."""
    meta.setdefault("notes", []).append(text)


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


# ---------------------------------------------------------------------- writing


def write_mask(path: PathLike, mask: np.ndarray) -> str:
    """Write a label mask as PNG or TIFF (chosen by extension), atomically.

    Label values are written as they are (0 background, 1..N labels), not
    stretched to 0/255: napari Labels can hold several labels and a reload must
    give the same labels back. The smallest unsigned type that holds them is
    used (uint8, then uint16; TIFF also uint32). Consequence: a {0, 1} mask
    looks black in an ordinary image viewer.

    The file is written to a temporary name in the same directory and moved
    into place with ``os.replace``, so a crash or error never leaves a
    half-written file and never damages an existing one. Returns the path.
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


def _mask_array(p: Path, mask, ext: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
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
