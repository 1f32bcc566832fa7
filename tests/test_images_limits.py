"""Size limits: a header that claims a huge image is refused before anything is decoded.

Each file is a small valid image whose header is then patched to claim a size no chest
X-ray has, as an attacker or a corrupt disk would. The readers must refuse it with
their own error (file, claimed size, limit, how to raise it) and never try to allocate it.
"""

from __future__ import annotations

import io
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_causalseg import _reader
from napari_causalseg.engine.images import (
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    ImageReadError,
    ImageTooLargeError,
    ReadLimits,
    image_shape,
    read_image,
)
from napari_causalseg.engine.images.sniff import PNG_MAGIC

from .dicom_files import make_dicom

CLAIMED_ROWS = 4_294_934_336  # the row count of the TIFF found by fuzzing (issue 13)


def tiff_claiming_rows(path, rows: int = CLAIMED_ROWS):
    """A 16 x 16 uint8 TIFF whose ImageLength tag is patched to ``rows`` (LONG)."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((16, 16), np.uint8))
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 257:  # ImageLength
            struct.pack_into("<HHII", data, entry, 257, 4, 1, rows)
            break
    else:
        raise AssertionError("no ImageLength tag written")
    path.write_bytes(bytes(data))
    return path


def png_claiming(path, width: int, height: int):
    """A PNG whose IHDR (with a valid CRC) claims ``width`` x ``height``, holding one tiny IDAT."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def jpeg_claiming(path, width: int, height: int):
    """A small baseline JPEG whose SOF0 segment is patched to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def dicom_claiming(path, rows: int, cols: int, frames: int | None = None):
    import pydicom

    make_dicom(path, np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.save_as(path)
    return path


HUGE = {
    "tiff": lambda p: tiff_claiming_rows(p / "rows.tif"),
    "dicom": lambda p: dicom_claiming(p / "huge.dcm", 65535, 65535),
    "png_bomb": lambda p: png_claiming(p / "bomb.png", 0x7FFFFFFF, 0x7FFFFFFF),
    "png_over_limit": lambda p: png_claiming(p / "big.png", 9000, 9000),  # under Pillow's limit
    "png_pillow_warns": lambda p: png_claiming(p / "warn.png", 10000, 10000),  # Pillow warns
    "jpeg": lambda p: jpeg_claiming(p / "huge.jpg", 65500, 65500),
    "jpeg_over_limit": lambda p: jpeg_claiming(p / "big.jpg", 9000, 9000),
}


@pytest.fixture(params=sorted(HUGE))
def huge_file(request, tmp_path):
    return HUGE[request.param](tmp_path)


def test_huge_claims_are_refused_with_the_readers_own_error(huge_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak
        with pytest.raises(ImageTooLargeError) as info:
            read_image(huge_file)
    text = str(info.value)
    assert str(huge_file) in text
    assert "over the" in text and "limit" in text
    assert MAX_PIXELS_ENV in text  # how to raise it


def test_error_text_names_claimed_size_and_limit(tmp_path):
    with pytest.raises(ImageTooLargeError) as info:
        read_image(tiff_claiming_rows(tmp_path / "rows.tif"))
    text = str(info.value)
    assert "4,294,934,336 x 16 pixels" in text
    assert "67.1 megapixel limit" in text
    assert MAX_PIXELS_ENV in text and MAX_BYTES_ENV in text


def test_header_only_shape_check_refuses_too(huge_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match="over the"):
            image_shape(huge_file)


def test_dicom_frames_are_counted_in_the_message(tmp_path):
    f = dicom_claiming(tmp_path / "cine.dcm", 40000, 40000, frames=1000)
    with pytest.raises(ImageTooLargeError, match="1,000 frames"):
        read_image(f)


def test_napari_hook_never_raises_and_says_why(huge_file):
    reader = _reader.napari_get_reader(str(huge_file))
    assert callable(reader)  # the magic bytes are fine: only decoding is refused
    with pytest.warns(UserWarning, match="over the"):  # napari shows it as a notification
        assert reader(str(huge_file)) is None
    assert _reader.napari_get_reader([str(huge_file)]) is reader


def test_env_variable_raises_and_lowers_the_limit(tmp_path, monkeypatch):
    f = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(f)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0.0005")  # 500 pixels < 600
    with pytest.raises(ImageTooLargeError, match="20 x 30 pixels"):
        read_image(f)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0.0006")
    assert read_image(f).data.shape == (20, 30)
    monkeypatch.setenv(MAX_BYTES_ENV, "0.0001")  # 104 bytes < 600
    with pytest.raises(ImageTooLargeError, match="600 bytes decoded, over the 104 bytes limit"):
        read_image(f)


def test_pillows_bomb_error_defers_to_our_limit(tmp_path, monkeypatch):
    """Over twice Pillow's MAX_IMAGE_PIXELS (lowered here to keep the test small), Pillow
    refuses in ``Image.open``; the file is read when under our limit, and refused with our
    message (not Pillow's) when over it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    f = tmp_path / "wide.png"
    arr = (np.arange(60 * 70) % 251).astype(np.uint8).reshape(60, 70)  # 4,200 > 2 x 1,000 pixels
    Image.fromarray(arr).save(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(read_image(f).data, arr)
        assert image_shape(f) == (60, 70)
        with pytest.raises(ImageTooLargeError, match="the header claims 60 x 70 pixels") as info:
            read_image(f, ReadLimits(max_pixels=4000))
    assert "MAX_IMAGE_PIXELS" not in str(info.value)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_bad_env_value_is_a_clear_read_error(tmp_path, monkeypatch, value):
    f = tmp_path / "small.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(f)
    monkeypatch.setenv(MAX_BYTES_ENV, value)
    with pytest.raises(ImageReadError) as info:
        read_image(f)
    assert f"{MAX_BYTES_ENV}={value!r} is not a positive number" in str(info.value)
    assert "unset it" in str(info.value)
    with pytest.warns(UserWarning, match=MAX_BYTES_ENV):
        assert _reader.napari_get_reader(str(f))(str(f)) is None


def test_read_limits_argument_and_validation(tmp_path):
    f = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(f)
    with pytest.raises(ImageTooLargeError, match="over the 99 bytes limit"):
        read_image(f, ReadLimits(max_bytes=99))
    assert read_image(f, ReadLimits(max_pixels=100, max_bytes=100)).data.shape == (10, 10)
    with pytest.raises(ValueError, match="must be positive"):
        ReadLimits(max_pixels=0)


def test_cli_segment_on_a_huge_file_is_one_line(tmp_path, capsys):
    """One image, one line: it names the file, the claimed size and how to raise the limit;
    the run exits 1 (a batch goes on past a bad image and sums up at the end)."""
    from napari_causalseg.cli import main
    from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, CausalCLIPSeg(get_config("tiny")))
    huge = tiff_claiming_rows(tmp_path / "rows.tif")
    note = "Unilateral pulmonary infection, one infected area, lower right lung."
    rc = main(["segment", str(huge), "--note", note, "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
               "--device", "cpu"])
    _, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err
    lines = [line.split("\r")[-1] for line in err.splitlines()]  # the progress bar redraws with \r
    said = [line for line in lines if str(huge) in line]
    assert len(said) == 1 and said[0].startswith("causalseg segment: error: "), lines
    assert "4,294,934,336" in said[0] and MAX_PIXELS_ENV in said[0]
    assert not any("TiffPage" in line for line in lines)  # tifffile's own log lines stay out


def test_data_set_readers_name_the_case(tmp_path):
    from napari_causalseg.engine.data.cases import Case, DatasetError, check_case_sizes, load_case

    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    case = Case("patient_7", tiff_claiming_rows(tmp_path / "rows.tif"), mask, "note")
    for check in (load_case, check_case_sizes):
        with pytest.raises(DatasetError) as info:
            check(case)
        text = str(info.value)
        assert text.startswith("Case 'patient_7': ") and "4,294,934,336" in text and MAX_PIXELS_ENV in text


def test_limit_check_runs_before_any_allocation(tmp_path):
    """With the address space capped at +1 GiB, the refusals above allocate nothing large."""
    resource = pytest.importorskip("resource")
    del resource
    import subprocess

    files = [HUGE[k](tmp_path) for k in sorted(HUGE)]
    code = (
        "import resource, sys, warnings\n"
        "from napari_causalseg.engine.images import read_image, image_shape, ImageTooLargeError\n"
        "import pydicom, tifffile, PIL.Image, numpy\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))\n"
        "warnings.simplefilter('error')\n"
        "for f in sys.argv[1:]:\n"
        "    for fn in (read_image, image_shape):\n"
        "        try:\n"
        "            fn(f)\n"
        "        except ImageTooLargeError:\n"
        "            continue\n"
        "        raise SystemExit(f'{fn.__name__}({f}) was not refused')\n"
        "print('ok')\n"
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/statm is Linux only")
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_bounded_reader_never_asks_for_more_than_the_file_holds(tmp_path):
    """Under a 1 GiB address-space cap, read(4 GiB) on a small file returns its bytes
    instead of failing to allocate 4 GiB (what a plain file object does)."""
    import subprocess

    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc are Linux only")
    f = tmp_path / "small.bin"
    f.write_bytes(b"0123456789")
    code = (
        "import resource, sys\n"
        "from napari_causalseg.engine.images.base import BoundedReader\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))\n"
        "with BoundedReader(sys.argv[1]) as fh:\n"
        "    fh.seek(4)\n"
        "    print(fh.read(4 << 30), fh.read(4 << 30), fh.read1(4 << 30))\n"
        "try:\n"
        "    open(sys.argv[1], 'rb').read(4 << 30)\n"
        "except MemoryError:\n"
        "    print('plain file: MemoryError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["b'456789' b'' b''", "plain file: MemoryError"], out.stderr[-1500:]


def test_uncompressed_tiff_claiming_more_than_the_file_holds_is_refused_fast(tmp_path):
    """Under the limits (32 MB) but in a 500-byte file: refused from the header, not decoded
    (the fuzz found such a file taking 13 s to zero-fill and fail in tifffile, then Pillow)."""
    import time

    f = tiff_claiming_rows(tmp_path / "tall.tif", rows=2_000_000)
    t0 = time.perf_counter()
    for fn in (read_image, image_shape):
        with pytest.raises(ImageReadError, match=r"2,000,000 x 16 uncompressed pixels .* truncated or corrupt"):
            fn(f)
    assert time.perf_counter() - t0 < 1.0
