"""DICOM read right: VOI LUT Function and VOI LUT Sequence as pydicom defines them, and
compressed transfer syntaxes (with and without the ``dicom`` extra).

Every file is built here; expected values come from pydicom's own ``apply_modality_lut``,
``apply_windowing`` and ``apply_voi_lut`` on the same file.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from napari_causalseg import _reader
from napari_causalseg.engine.images import MODALITY_VALUES_KEY, ImageReadError, read_image

from .dicom_files import make_dicom
from .test_images import _stored_u16


def _dicom(tmp_path, name="voi.dcm", *, photometric="MONOCHROME2", slope=2, intercept=-1000, **attrs):
    """A 12-bit DX image with rescale, then ``attrs`` set on the dataset."""
    path = make_dicom(tmp_path / name, _stored_u16(16, 16), photometric=photometric, slope=slope,
                      intercept=intercept)
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path, pydicom.dcmread(path)


def _pydicom_display(ds) -> np.ndarray:
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


def _modality(ds) -> np.ndarray:
    return apply_modality_lut(ds.pixel_array, ds)


def _y_range(ds) -> tuple[float, float]:
    with np.errstate(over="ignore"):
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
    return float(lo), float(hi)


def _napari_grey(values: np.ndarray, limits, y_range) -> np.ndarray:
    """What napari shows for contrast limits: linear between them, clipped outside."""
    lo, hi = limits
    frac = np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1)
    return frac * (y_range[1] - y_range[0]) + y_range[0]


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT"])
@pytest.mark.parametrize("window", [(1000.0, 2001.0), (-300.0, 40.0), (5000.5, 3.0)])
def test_linear_windows_become_contrast_limits_equal_to_pydicom(tmp_path, function, window):
    attrs = {"WindowCenter": window[0], "WindowWidth": window[1]}
    if function:
        attrs["VOILUTFunction"] = function
    path, ds = _dicom(tmp_path, **attrs)
    img = read_image(path)
    assert img.display is None  # linear: the data stays modality values
    np.testing.assert_array_equal(img.data, _modality(ds))
    limits = img.metadata["contrast_limits"]
    # every value of the image, and values around both limits, shown as pydicom windows them
    probe = np.concatenate([img.data.ravel().astype(np.float64),
                            np.linspace(limits[0] - 3, limits[1] + 3, 997)])
    expected = apply_windowing(probe.copy(), ds)
    np.testing.assert_allclose(_napari_grey(probe, limits, _y_range(ds)), expected, rtol=0, atol=1e-6)


def test_linear_exact_differs_from_linear_by_the_half_terms(tmp_path):
    lin, _ = _dicom(tmp_path, "a.dcm", WindowCenter=100, WindowWidth=11)
    exact, _ = _dicom(tmp_path, "b.dcm", WindowCenter=100, WindowWidth=11, VOILUTFunction="LINEAR_EXACT")
    assert read_image(lin).metadata["contrast_limits"] == (94.5, 104.5)  # c - 0.5 -+ (w - 1) / 2
    assert read_image(exact).metadata["contrast_limits"] == (94.5, 105.5)  # c -+ w / 2


def test_sigmoid_shows_pydicoms_output_and_keeps_modality_values(tmp_path):
    path, ds = _dicom(tmp_path, WindowCenter=1500, WindowWidth=2000, VOILUTFunction="SIGMOID")
    img = read_image(path)
    np.testing.assert_array_equal(img.data, _modality(ds))  # what the model reads
    expected = _pydicom_display(ds)
    assert img.display is not None and img.display.dtype == np.float32
    np.testing.assert_array_equal(img.display, expected.astype(np.float32))
    assert img.metadata["contrast_limits"] == _y_range(ds)
    assert img.metadata["voi_lut_function"] == "SIGMOID"


def _voi_lut_item(table: np.ndarray, first: int, bits: int, as_ow: bool):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    item.LUTExplanation = "vendor curve"
    if as_ow:
        item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in table])
    return item


@pytest.mark.parametrize("as_ow", [False, True])
def test_voi_lut_sequence_is_applied_as_pydicom_does_and_wins_over_the_window(tmp_path, as_ow):
    from pydicom.sequence import Sequence

    # a non-linear (gamma) 12-bit curve over modality values 100 .. 8190 (first mapped: 100)
    entries = np.arange(0, 7800, 32)
    table = np.round(4095 * ((entries / entries[-1]) ** 0.5)).astype(np.uint16)
    path, ds = _dicom(tmp_path, intercept=0, WindowCenter=0, WindowWidth=100,
                      VOILUTSequence=Sequence([_voi_lut_item(np.repeat(table, 32), 100, 12, as_ow)]))
    img = read_image(path)
    np.testing.assert_array_equal(img.data, _modality(ds))
    np.testing.assert_array_equal(img.display, _pydicom_display(ds))  # the LUT, not the window
    assert img.metadata["contrast_limits"] == (0.0, 4095.0)
    assert img.metadata["voi_lut"] == "vendor curve"


def test_monochrome1_display_is_reflected_within_the_output_range(tmp_path):
    path, ds = _dicom(tmp_path, photometric="MONOCHROME1", WindowCenter=1500, WindowWidth=900,
                      VOILUTFunction="SIGMOID")
    img = read_image(path)
    lo, hi = _y_range(ds)
    np.testing.assert_allclose(img.display, lo + hi - _pydicom_display(ds), rtol=0, atol=2e-3)
    assert img.metadata["inverted"] is True


@pytest.mark.parametrize("attrs, text", [
    ({"WindowCenter": 10, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"}, "not valid for SIGMOID"),
    ({"WindowCenter": 10, "WindowWidth": 50, "VOILUTFunction": "GAMMA"}, "applied as LINEAR"),
])
def test_odd_voi_attributes_are_notes_not_errors(tmp_path, attrs, text):
    path, _ = _dicom(tmp_path, **attrs)
    img = read_image(path)
    assert any(text in n for n in img.metadata["notes"])


def test_reader_layer_shows_the_voi_and_the_segment_widget_reads_modality_values(tmp_path):
    """The napari layer holds the displayed values; ``image_array`` (what the Segment widget
    feeds the model) returns the modality values from the layer's metadata."""
    napari = pytest.importorskip("napari")
    from napari_causalseg.widgets._layers import image_array

    path, ds = _dicom(tmp_path, WindowCenter=1500, WindowWidth=2000, VOILUTFunction="SIGMOID")
    [(data, kwargs, kind)] = _reader.napari_get_reader(str(path))(str(path))
    layer = napari.layers.Image(data, **kwargs)
    np.testing.assert_array_equal(layer.data, _pydicom_display(ds).astype(np.float32))
    assert tuple(layer.contrast_limits) == pytest.approx(_y_range(ds))
    np.testing.assert_array_equal(image_array(layer), _modality(ds))
    assert image_array(layer) is kwargs["metadata"][MODALITY_VALUES_KEY]
    linear, _ = _dicom(tmp_path, "lin.dcm", WindowCenter=1500, WindowWidth=2000)
    [(data, kwargs, _)] = _reader.napari_get_reader(str(linear))(str(linear))
    assert MODALITY_VALUES_KEY not in kwargs["metadata"]
    np.testing.assert_array_equal(image_array(napari.layers.Image(data, **kwargs)), data)


# ----------------------------------------------------------- compressed syntaxes


def _encoder_available(uid) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return get_encoder(uid).is_available
    except (NotImplementedError, ValueError):
        return False


def _compressed(tmp_path, uid, name="c.dcm"):
    from pydicom.uid import UID

    uid = UID(uid)
    if not _encoder_available(uid):
        pytest.skip(f"no encoder for {uid.name} installed (pydicom.pixels.encoders)")
    pixels = _stored_u16(64, 48)  # JPEG 2000 needs 32+ pixels a side for its default levels
    path = make_dicom(tmp_path / name, pixels)
    ds = pydicom.dcmread(path)
    ds.compress(uid)
    ds.save_as(path)
    return path, pixels


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"],
                         ids=["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntaxes_decode_exactly(tmp_path, uid):
    path, pixels = _compressed(tmp_path, uid)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(read_image(path).data, pixels)


def test_jpeg_lossless_process14_has_no_encoder_to_build_a_test_file():
    if _encoder_available("1.2.840.10008.1.2.4.70"):
        pytest.fail("an encoder for JPEG Lossless SV1 exists now: add it to the test above")
    pytest.skip("pydicom has no JPEG Lossless (Process 14) encoder; decoding is pylibjpeg-libjpeg's")


_BLOCKED = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls", "gdcm")


def test_without_the_dicom_extra_the_error_names_it(tmp_path):
    """In a child with the decoder packages made unimportable, a JPEG-LS file fails with an
    error naming the extra, and RLE (pydicom decodes it natively) still reads."""
    jpegls, _ = _compressed(tmp_path, "1.2.840.10008.1.2.4.80", "ls.dcm")
    rle, pixels = _compressed(tmp_path, "1.2.840.10008.1.2.5", "rle.dcm")
    code = (
        "import sys\n"
        f"for name in {_BLOCKED!r}:\n"
        "    sys.modules[name] = None  # import fails: as if not installed\n"
        "from napari_causalseg.engine.images import read_image, ImageReadError\n"
        "try:\n"
        "    read_image(sys.argv[1])\n"
        "    print('decoded')\n"
        "except ImageReadError as exc:\n"
        "    print(exc)\n"
        "print(read_image(sys.argv[2]).data.sum())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(jpegls), str(rle)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()
    assert str(jpegls) in first and "JPEG-LS Lossless" in first
    assert "pip install 'napari-causalseg[dicom]'" in first
    assert int(second) == int(pixels.sum())


def test_corrupt_compressed_data_does_not_blame_the_missing_extra(tmp_path):
    path, _ = _compressed(tmp_path, "1.2.840.10008.1.2.5")
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([(2).to_bytes(4, "little") + bytes(60)])  # an RLE header, no segments
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="cannot decode DICOM pixel data") as info:
        read_image(path)
    assert "napari-causalseg[dicom]" not in str(info.value) and "\n" not in str(info.value)
