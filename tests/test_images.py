"""Reading X-rays and writing masks: engine.images plus the thin napari hooks.

Every file is built here, so expected values are known exactly.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_causalseg import _reader, _writer
from napari_causalseg.engine.images import (
    ImageReadError,
    LoadedImage,
    can_read,
    masks,
    read_image,
    write_mask,
)
from napari_causalseg.engine.images.sniff import PNG_MAGIC

from .dicom_files import make_dicom

# ----------------------------------------------------------------- file makers


def _gray_u8(h=17, w=23):
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 7 % 256).astype(np.uint8)


def _rgb_u8(h=9, w=11):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _stored_u16(h=6, w=5, bits=12):
    """Stored values spanning the whole BitsStored range, including both ends."""
    top = (1 << bits) - 1
    vals = np.linspace(0, top, h * w).round().astype(np.uint16)
    return vals.reshape(h, w)


# ------------------------------------------------------------------ PNG / JPEG


def test_png_gray_8bit_exact(tmp_path):
    arr = _gray_u8()
    f = tmp_path / "cxr.png"
    Image.fromarray(arr).save(f)
    img = read_image(f)
    assert isinstance(img, LoadedImage)
    assert img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, arr)
    assert img.spacing is None
    assert img.metadata["format"] == "png"


def test_png_16bit_gray_keeps_depth(tmp_path):
    arr = (np.arange(40, dtype=np.uint16).reshape(5, 8) * 1600).astype(np.uint16)
    f = tmp_path / "deep.png"
    Image.fromarray(arr).save(f)
    img = read_image(f)
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, arr)


def test_png_rgb_exact(tmp_path):
    arr = _rgb_u8()
    f = tmp_path / "rgb.png"
    Image.fromarray(arr).save(f)
    img = read_image(f)
    assert img.data.shape == (9, 11, 3)
    np.testing.assert_array_equal(img.data, arr)


def _png_bytes(arr: np.ndarray, colour_type: int) -> bytes:
    """Hand-made PNG: Pillow cannot write 16-bit colour."""
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    h, w = arr.shape[:2]
    ihdr = struct.pack(">IIBBBBB", w, h, arr.dtype.itemsize * 8, colour_type, 0, 0, 0)
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)
    return (
        PNG_MAGIC
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_png_16bit_rgb_reduction_is_reported(tmp_path):
    arr = np.full((3, 4, 3), 40000, np.uint16)
    f = tmp_path / "rgb16.png"
    f.write_bytes(_png_bytes(arr, colour_type=2))
    img = read_image(f)
    assert img.data.shape == (3, 4, 3)
    assert any("16-bit colour" in n for n in img.metadata["notes"])


def test_jpeg_gray_and_rgb(tmp_path):
    gray = np.full((16, 24), 120, np.uint8)
    gray[:, 12:] = 200
    f = tmp_path / "x.jpg"
    Image.fromarray(gray).save(f, quality=100)
    img = read_image(f)
    assert img.data.shape == (16, 24) and img.data.dtype == np.uint8
    assert np.abs(img.data.astype(int) - gray).max() <= 3  # lossy
    assert img.metadata["format"] == "jpeg"

    f2 = tmp_path / "c.jpeg"
    Image.fromarray(np.dstack([gray] * 3)).save(f2, quality=95)
    assert read_image(f2).data.shape == (16, 24, 3)


# ------------------------------------------------------------------------ TIFF


def test_tiff_uint16_exact(tmp_path):
    arr = (np.arange(30, dtype=np.uint32).reshape(5, 6) * 2000).astype(np.uint16)
    f = tmp_path / "a.tif"
    tifffile.imwrite(f, arr)
    img = read_image(f)
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, arr)
    assert img.metadata["format"] == "tiff"
    assert "notes" not in img.metadata


def test_tiff_float32_exact(tmp_path):
    arr = np.linspace(-1.5, 3.25, 20, dtype=np.float32).reshape(4, 5)
    f = tmp_path / "a.tiff"
    tifffile.imwrite(f, arr)
    img = read_image(f)
    assert img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data, arr)


def test_tiff_rgb_and_planar(tmp_path):
    rgb = _rgb_u8()
    f = tmp_path / "rgb.tif"
    tifffile.imwrite(f, rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(f).data, rgb)
    f2 = tmp_path / "planar.tif"
    tifffile.imwrite(f2, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(f2).data, rgb)


def test_tiff_multipage_reads_first_and_says_so(tmp_path):
    pages = np.stack([np.full((5, 7), i, np.uint8) for i in (10, 20, 30)])
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, pages, photometric="minisblack")
    img = read_image(f)
    np.testing.assert_array_equal(img.data, pages[0])
    assert img.metadata["n_pages"] == 3
    assert any("first page" in n for n in img.metadata["notes"])
    # napari turns warnings into notifications: the user learns that pages were left out
    from napari_causalseg import _reader

    with pytest.warns(UserWarning, match="stack.tif: multi-page TIFF with 3 pages; only the first"):
        ((data, _, _),) = _reader.napari_get_reader(str(f))(str(f))
    np.testing.assert_array_equal(data, pages[0])


def test_tiff_min_is_white_inverted(tmp_path):
    arr = np.array([[0, 100], [255, 7]], np.uint8)
    f = tmp_path / "miw.tif"
    tifffile.imwrite(f, arr, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(f).data, 255 - arr)


# ----------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_rescale_spacing_window(tmp_path):
    stored = _stored_u16()
    f = make_dicom(tmp_path / "m2.dcm", stored, slope=2, intercept=-1024, window=(1500, 801))
    img = read_image(f)
    expected = stored.astype(np.int64) * 2 - 1024
    np.testing.assert_array_equal(img.data, expected)
    assert np.issubdtype(img.data.dtype, np.signedinteger)
    assert img.spacing == pytest.approx((0.139, 0.143))
    m = img.metadata
    assert m["format"] == "dicom"
    assert m["modality"] == "DX"
    assert m["photometric_interpretation"] == "MONOCHROME2"
    assert m["rescale_slope"] == 2 and m["rescale_intercept"] == -1024
    assert m["window_center"] == 1500 and m["window_width"] == 801
    assert m["spacing_source"] == "PixelSpacing"
    # PS3.3 linear window: [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]
    assert m["contrast_limits"] == pytest.approx((1099.5, 1899.5))
    # Window only suggests display; data is not clipped to it.
    assert img.data.min() == -1024 and img.data.max() == 2 * 4095 - 1024
    # No patient identifiers leak into layer metadata.
    flat = repr(m)
    assert "Secret" not in flat and "ID-12345" not in flat


def test_dicom_monochrome1_inverted_within_value_range(tmp_path):
    stored = _stored_u16(bits=12)
    f = make_dicom(
        tmp_path / "m1.dcm",
        stored,
        photometric="MONOCHROME1",
        slope=0.5,
        intercept=10,
        window=(600, 400),
    )
    img = read_image(f)
    lo, hi = 10.0, 0.5 * 4095 + 10  # rescaled nominal range of 12-bit stored values
    expected = lo + hi - (stored * 0.5 + 10)
    np.testing.assert_array_equal(img.data, expected.astype(np.float32))
    # stored 0 (white in MONOCHROME1) is now the brightest value, stored max the darkest
    assert img.data[0, 0] == hi and img.data[-1, -1] == lo
    assert img.metadata["inverted"] is True
    assert img.metadata["value_range"] == (lo, hi)
    # The window is reflected with the data, so it frames the same tissue.
    c, w = 600, 400
    assert img.metadata["contrast_limits"] == pytest.approx(
        (lo + hi - (c - 0.5 + (w - 1) / 2), lo + hi - (c - 0.5 - (w - 1) / 2))
    )
    assert img.metadata["window_center"] == 600  # as stored in the file


def test_dicom_monochrome1_integer_no_rescale(tmp_path):
    stored = _stored_u16(bits=10)
    f = make_dicom(tmp_path / "m1i.dcm", stored, photometric="MONOCHROME1", bits_stored=10)
    img = read_image(f)
    np.testing.assert_array_equal(img.data, 1023 - stored.astype(np.int64))
    assert np.issubdtype(img.data.dtype, np.integer)
    assert "contrast_limits" not in img.metadata


def test_dicom_modality_lut_sequence(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    stored = _stored_u16()
    f = make_dicom(tmp_path / "lut.dcm", stored, photometric="MONOCHROME1")
    ds = pydicom.dcmread(f)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "OD"
    item.add_new("LUTData", "US", [int(v) for v in np.arange(4096) * 3])
    ds.ModalityLUTSequence = [item]
    ds.save_as(f)
    img = read_image(f)
    assert img.metadata["modality_lut"] is True
    assert img.metadata["value_range"] == (0, 3 * 4095)
    np.testing.assert_array_equal(img.data, 3 * 4095 - stored.astype(np.int64) * 3)


def test_dicom_imager_pixel_spacing_fallback(tmp_path):
    f = make_dicom(tmp_path / "ips.dcm", _stored_u16(), spacing=None, imager_spacing=(0.2, 0.25))
    img = read_image(f)
    assert img.spacing == (0.2, 0.25)
    assert img.metadata["spacing_source"] == "ImagerPixelSpacing"


def test_dicom_without_extension_and_without_spacing(tmp_path):
    stored = _stored_u16()
    f = make_dicom(tmp_path / "1.2.840.113619.2.55", stored, spacing=None)  # UID-named
    assert can_read(f)
    img = read_image(f)
    np.testing.assert_array_equal(img.data, stored)
    assert img.spacing is None
    ((data, kw, _),) = _reader.napari_get_reader(str(f))(str(f))
    assert kw["name"] == "1.2.840.113619.2.55"
    assert kw["scale"] == (1.0, 1.0) and "units" not in kw


def test_dicom_without_preamble_needs_dicom_name(tmp_path):
    stored = _stored_u16()
    f = make_dicom(tmp_path / "old.dcm", stored, preamble=False)
    assert f.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(f).data, stored)
    g = tmp_path / "old_noext"
    g.write_bytes(f.read_bytes())
    assert not can_read(g)  # no magic and no DICOM name: not ours


def test_dicom_without_pixel_data_is_a_clear_error(tmp_path):
    f = make_dicom(tmp_path / "nopix.dcm", _stored_u16())
    import pydicom

    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm.*no pixel data"):
        read_image(f)


# --------------------------------------------------------- errors and can_read


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"no pain, small effusion\n"),
        ("fake.dcm", bytes(range(256)) * 4),
        ("fake.png", b"definitely not a png"),
        ("empty.tif", b""),
        ("random", os.urandom(300)),
    ],
)
def test_foreign_files_refused(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    assert not can_read(f)
    assert _reader.napari_get_reader(str(f)) is None
    assert _reader.napari_get_reader([str(f)]) is None
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
        read_image(f)


def test_get_reader_never_raises_on_odd_paths(tmp_path):
    assert _reader.napari_get_reader(str(tmp_path)) is None  # a directory
    assert _reader.napari_get_reader(str(tmp_path / "missing.png")) is None
    assert _reader.napari_get_reader([]) is None
    assert _reader.napari_get_reader("https://example.org/x.dcm") is None
    assert _reader.napari_get_reader("bad\0path.png") is None
    assert not can_read("bad\0path.png")


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")


def test_truncated_png_gives_read_error_and_reader_returns_none(tmp_path):
    f = tmp_path / "cut.png"
    Image.fromarray(_gray_u8(64, 64)).save(f)
    f.write_bytes(f.read_bytes()[:60])  # magic intact, body gone
    assert can_read(f)
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_image(f)
    reader = _reader.napari_get_reader(str(f))
    assert reader is not None
    assert reader(str(f)) is None  # napari moves on to other readers


def test_unsupported_shape_is_refused(tmp_path):
    f = tmp_path / "five.tif"
    tifffile.imwrite(
        f, np.zeros((4, 4, 5), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    with pytest.raises(ImageReadError, match="shape"):
        read_image(f)


# --------------------------------------------------------------- napari reader


def test_reader_layer_tuples(tmp_path):
    stored = _stored_u16()
    d = make_dicom(tmp_path / "chest.dcm", stored, photometric="MONOCHROME1", window=(2000, 1001))
    p = tmp_path / "rgb.png"
    Image.fromarray(_rgb_u8()).save(p)
    reader = _reader.napari_get_reader([str(d), str(p)])
    assert callable(reader)
    layers = reader([str(d), str(p)])
    assert len(layers) == 2
    (data, kw, kind), (rdata, rkw, rkind) = layers
    assert kind == rkind == "image"
    np.testing.assert_array_equal(data, 4095 - stored.astype(np.int64))
    assert kw["name"] == "chest"
    assert kw["scale"] == pytest.approx((0.139, 0.143))
    assert kw["units"] == ("mm", "mm")
    assert kw["rgb"] is False
    lo, hi = 4095 - (2000 - 0.5 + 500), 4095 - (2000 - 0.5 - 500)
    assert kw["contrast_limits"] == pytest.approx([lo, hi])
    assert kw["metadata"]["photometric_interpretation"] == "MONOCHROME1"
    assert rkw["rgb"] is True and rkw["scale"] == (1.0, 1.0) and rkw["name"] == "rgb"
    assert "contrast_limits" not in rkw and "units" not in rkw


def test_reader_kwargs_are_valid_napari_layer_kwargs(tmp_path):
    layers_mod = pytest.importorskip("napari.layers")
    d = make_dicom(tmp_path / "c.dcm", _stored_u16(), slope=1, intercept=-1000, window=(0, 500))
    ((data, kw, kind),) = _reader.napari_get_reader(str(d))(str(d))
    layer = layers_mod.Layer.create(data, kw, kind)
    assert tuple(layer.scale) == pytest.approx((0.139, 0.143))
    # metadata keeps the exact window (-250.5, 248.5); napari rounds limits of integer data
    assert tuple(layer.contrast_limits) == pytest.approx((-250.5, 248.5), abs=0.5)


# ---------------------------------------------------------------------- writer


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".PNG"])
def test_write_mask_round_trip_keeps_label_values(tmp_path, ext):
    mask = np.zeros((12, 10), np.int64)  # napari Labels are int64 or int32
    mask[2:5, 3:7] = 1
    mask[8:, :2] = 3
    out = _writer.write_labels(str(tmp_path / f"m{ext}"), mask, {"name": "lesion"})
    assert out == [str(tmp_path / f"m{ext}")]
    back = read_image(out[0]).data
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)


def test_write_mask_bool_and_uint16_labels(tmp_path):
    b = np.eye(6, dtype=bool)
    np.testing.assert_array_equal(
        read_image(write_mask(tmp_path / "b.png", b)).data, b.astype(np.uint8)
    )
    big = np.array([[0, 300], [65535, 2]], np.int32)
    back = read_image(write_mask(tmp_path / "big.png", big)).data
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, big)
    huge = np.array([[0, 70000]], np.int64)
    with pytest.raises(ValueError, match="tif"):
        write_mask(tmp_path / "huge.png", huge)
    np.testing.assert_array_equal(tifffile.imread(write_mask(tmp_path / "huge.tif", huge)), huge)


def test_write_mask_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.tif, \.tiff"):
        write_mask(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="negative"):
        write_mask(tmp_path / "m.png", -np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="integer"):
        write_mask(tmp_path / "m.png", np.full((2, 2), 0.5))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "corrected.png"
    good = np.zeros((5, 5), np.uint8)
    good[1:3, 1:3] = 1
    write_mask(target, good)
    before = target.read_bytes()

    def explode(fh, arr, ext, *rest):
        fh.write(b"\x89PNG partial")  # something reached the disk before the failure
        raise OSError("disk full")

    monkeypatch.setattr(masks, "_encode_mask", explode)
    with pytest.raises(OSError, match="disk full"):
        _writer.write_labels(str(target), np.ones((5, 5), np.uint8), {})
    assert target.read_bytes() == before  # the user's previous correction survives
    assert sorted(x.name for x in tmp_path.iterdir()) == ["corrected.png"]  # no temp left

    with pytest.raises(OSError):
        write_mask(tmp_path / "new.tif", good)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["corrected.png"]


def test_write_leaves_no_temp_and_normal_permissions(tmp_path):
    target = write_mask(tmp_path / "m.tif", np.ones((3, 3), np.uint8))
    assert os.listdir(tmp_path) == ["m.tif"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
