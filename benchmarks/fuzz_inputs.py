"""The inputs of the reader fuzz: small valid seeds built here, and their mutations.

Input ``i`` of a run is always the same bytes (seeded per input), so an escape found in
a long run is reproduced from its number alone.
"""

from __future__ import annotations

import io
import random
import struct

_INTERESTING = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFF8040, 0x0000FFFF, 0x00010000, 0xFFFF,
                0x7FFF, 0x8000, 0xFF, 0, 1, 2, 3, 4, 8, 16, 17, 32, 64)
#: File name extension per seed format (sniffing needs it for preamble-less DICOM).
EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm"}


# ------------------------------------------------------------------------ seeds


def _png_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, arr, mode in (
        ("png_gray8", rng.integers(0, 256, (16, 16), dtype=np.uint8), None),
        ("png_gray16", rng.integers(0, 65536, (8, 8), dtype=np.uint16), None),
        ("png_rgb", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), None),
        ("png_palette", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "P"),
    ):
        im = Image.fromarray(arr)
        if mode == "P":
            im = im.convert("P")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out[name] = buf.getvalue()
    return out


def _jpeg_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    out = {}
    for name, arr, kw in (
        ("jpeg_gray", rng.integers(0, 256, (16, 16), dtype=np.uint8), {}),
        ("jpeg_rgb", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), {}),
        ("jpeg_progressive", rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), {"progressive": True}),
    ):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=80, **kw)
        out[name] = buf.getvalue()
    return out


def _tiff_seeds() -> dict[str, bytes]:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(2)
    out = {}
    for name, arr, kw in (
        ("tiff_u8", rng.integers(0, 256, (16, 16), dtype=np.uint8), {}),
        ("tiff_u16_zlib", rng.integers(0, 4096, (16, 16), dtype=np.uint16), {"compression": "zlib"}),
        ("tiff_rgb_planar", rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
         {"photometric": "rgb", "planarconfig": "separate"}),
        ("tiff_f32_tiled", rng.random((32, 32), dtype=np.float32), {"tile": (16, 16)}),
        ("tiff_pages", rng.integers(0, 256, (2, 8, 8), dtype=np.uint8), {"photometric": "minisblack"}),
        ("tiff_big", rng.integers(0, 256, (8, 8), dtype=np.uint8), {"bigtiff": True}),
    ):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[name] = buf.getvalue()
    return out


def _dicom_bytes(pixels, *, photometric="MONOCHROME2", frames=1, rle=False, window=None,
                 rescale=None, implicit=False, voi=None) -> bytes:
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", photometric, str(pixels.shape)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("seed.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if pixels.ndim == 4 or photometric == "RGB" else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi == "SIGMOID":
        ds.VOILUTFunction = "SIGMOID"
    elif voi == "LUT":
        ds.VOILUTSequence = [_voi_lut_item()]
    ds.PixelSpacing = [0.139, 0.139]
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless)
    buf = io.BytesIO()
    if implicit:  # pre-Part-10: no preamble, no file meta
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _voi_lut_item():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "OW", bytes(range(256)) * 2)  # 256 entries, little endian
    return item


def _dicom_seeds() -> dict[str, bytes]:
    import numpy as np

    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 4096, (8, 8), dtype=np.uint16)
    return {
        "dicom_mono2": _dicom_bytes(u16, window=(2048, 4096), rescale=(1, -1024)),
        "dicom_mono1": _dicom_bytes(u16, photometric="MONOCHROME1", rescale=(0.5, 0)),
        "dicom_rgb": _dicom_bytes(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), photometric="RGB"),
        "dicom_frames": _dicom_bytes(rng.integers(0, 4096, (2, 6, 6), dtype=np.uint16), frames=2),
        "dicom_rle": _dicom_bytes(u16, rle=True),
        "dicom_implicit": _dicom_bytes(u16, implicit=True),
        "dicom_sigmoid": _dicom_bytes(u16, window=(2048, 1000), voi="SIGMOID"),
        "dicom_voilut": _dicom_bytes(u16, window=(2048, 1000), voi="LUT"),
    }


def build_seeds() -> dict[str, bytes]:
    """Every seed by name; the name's prefix is its format."""
    return {**_png_seeds(), **_jpeg_seeds(), **_tiff_seeds(), **_dicom_seeds()}


def header_fields(name: str, data: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, byte order) of the size-bearing header fields of a seed."""
    if name.startswith("png"):
        return [(16, 4, ">"), (20, 4, ">"), (24, 1, ">"), (25, 1, ">"), (33, 4, ">")]
    if name.startswith("jpeg"):
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        return [(sof + 2, 2, ">"), (sof + 4, 1, ">"), (sof + 5, 2, ">"), (sof + 7, 2, ">"), (sof + 9, 1, ">")]
    if name.startswith("tiff"):
        return _tiff_fields(data)
    return _dicom_fields(data, implicit=name.endswith("implicit"))


def _tiff_fields(data: bytes) -> list[tuple[int, int, str]]:
    order = "<" if data[:2] == b"II" else ">"
    if data[2] == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        ifd, count_w, entry_w, value_at = struct.unpack_from(order + "Q", data, 8)[0], 8, 20, 12
        count = struct.unpack_from(order + "Q", data, ifd)[0]
    else:
        ifd, count_w, entry_w, value_at = struct.unpack_from(order + "I", data, 4)[0], 2, 12, 8
        count = struct.unpack_from(order + "H", data, ifd)[0]
    fields = [(4, 4, order), (ifd, count_w, order)]
    for k in range(min(count, 64)):
        entry = ifd + count_w + entry_w * k
        fields += [(entry + 2, 2, order), (entry + 4, 4, order), (entry + value_at, 4, order)]
    return fields


_DICOM_TAGS = (b"\x28\x00\x02\x30", b"\x28\x00\x56\x10", b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x02\x00", b"\x28\x00\x00\x01",
               b"\x28\x00\x01\x01", b"\x28\x00\x08\x00", b"\x28\x00\x03\x01", b"\xe0\x7f\x10\x00",
               b"\x02\x00\x00\x00")


def _dicom_fields(data: bytes, implicit: bool) -> list[tuple[int, int, str]]:
    fields = []
    for tag in _DICOM_TAGS:
        at = data.find(tag)
        if at < 0:
            continue
        if implicit:
            fields += [(at + 4, 4, "<"), (at + 8, 2, "<")]
        elif data[at + 4:at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF"):
            fields += [(at + 8, 4, "<"), (at + 12, 4, "<")]
        else:
            fields += [(at + 6, 2, "<"), (at + 8, 2, "<")]
    return fields


# --------------------------------------------------------------------- mutation


def mutate(data: bytes, fields: list[tuple[int, int, str]], rng: random.Random) -> bytes:
    """One to three stacked mutations; the same ``rng`` state gives the same bytes."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.random()
        n = max(len(buf), 1)
        if op < 0.35 and fields:  # header field overwrite
            off, width, order = rng.choice(fields)
            value = rng.choice(_INTERESTING) if rng.random() < 0.8 else rng.getrandbits(32)
            value &= (1 << (8 * width)) - 1
            fmt = order + {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
            if 0 <= off <= len(buf) - width:
                struct.pack_into(fmt, buf, off, value)
        elif op < 0.55:  # byte flips, biased to the header
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(min(n, 512)) if rng.random() < 0.7 else rng.randrange(n)
                if i < len(buf):
                    buf[i] ^= 1 << rng.randrange(8)
        elif op < 0.7:  # truncation
            del buf[rng.randrange(n):]
        elif op < 0.85:  # inserted run
            run = bytes([rng.randrange(256)]) * rng.randint(1, 64) if rng.random() < 0.5 else \
                rng.randbytes(rng.randint(1, 64))
            i = rng.randrange(n)
            buf[i:i] = run
        elif op < 0.95:  # deleted run
            i = rng.randrange(n)
            del buf[i:i + rng.randint(1, 32)]
        else:  # interesting 4-byte value anywhere
            i = rng.randrange(n)
            buf[i:i + 4] = struct.pack("<I", rng.choice(_INTERESTING))
    return bytes(buf)


def make_input(i: int, seed: int, seeds: dict[str, bytes], fields: dict) -> tuple[str, bytes]:
    """Input ``i`` of a run: (seed name, mutated bytes)."""
    names = sorted(seeds)
    name = names[i % len(names)]
    rng = random.Random(seed * 1_000_003 + i)
    return name, mutate(seeds[name], fields[name], rng)
