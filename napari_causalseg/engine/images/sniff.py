"""Which format a file holds, from its first bytes: content decides, not the name."""

from __future__ import annotations

import os
from pathlib import Path

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_EXTENSIONS)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_SNIFF_BYTES = 132  # DICOM: 128-byte preamble + b"DICM"


def sniff_format(path: Path) -> str | None:
    """'png', 'jpeg', 'tiff', 'bmp', 'dicom' or None. Never raises on I/O problems.

    Preamble-less DICOM has no magic: it is trusted only with a DICOM file name.
    """
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, ValueError):
        return None
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"BM" and len(head) >= 26 and path.suffix.lower() == ".bmp":
        return "bmp"
    # Old files written without the Part 10 header start directly with a
    # group 0x0008 element (little endian). Only trust that with a DICOM name.
    if path.suffix.lower() in DICOM_EXTENSIONS and head[:2] == b"\x08\x00" and len(head) >= 8:
        return "dicom"
    return None


def can_read(path: str | os.PathLike) -> bool:
    """Cheap check (reads 132 bytes) whether ``read_image`` should be tried.

    A ``.dcm`` full of random bytes is refused, an extension-less file with the DICM
    preamble is accepted.
    """
    try:
        return sniff_format(Path(path)) is not None
    except (TypeError, ValueError):  # not a path at all (e.g. embedded NUL)
        return False
