"""Every output format read back with an independent reader and compared exactly.

PNG/TIFF through the package's reader (and tifffile), NIfTI through nibabel, DICOM SEG
through highdicom. Spacing, SEG references and algorithm types are checked as written.
"""

from __future__ import annotations

import sys

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from napari_causalseg import _writer
from napari_causalseg._layer_meta import MASK_HASH_KEY, SOURCE_KEY, mask_hash
from napari_causalseg.engine.atomic import OutputExistsError
from napari_causalseg.engine.images import read_image
from napari_causalseg.engine.images.dicom_seg import SegInfo, read_dicom_seg, write_dicom_seg
from napari_causalseg.engine.images.export import (
    ExportOptions,
    format_of,
    require_format,
    write_confounders,
    write_lesion,
)
from napari_causalseg.engine.images.extras import MissingExtraError
from napari_causalseg.engine.images.nifti import read_nifti

from .dicom_files import make_dicom


@pytest.fixture
def hd():
    """highdicom (the formats extra); PNG/TIFF tests run without it."""
    return pytest.importorskip("highdicom")


@pytest.fixture
def nib():
    return pytest.importorskip("nibabel")

SPACING = (0.139, 0.143)  # (row, column) mm, deliberately unequal
NOTE = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def _mask(shape=(30, 20)):
    mask = np.zeros(shape, np.uint8)
    mask[3:11, 4:13] = 1
    mask[20:, :3] = 1  # touches the border and is not symmetric: catches transposes and flips
    return mask


def _probability(shape=(30, 20)):
    return np.random.default_rng(1).random(shape).astype(np.float32)


@pytest.fixture
def source(tmp_path):
    pixels = (np.arange(30 * 20).reshape(30, 20) * 7 % 4096).astype(np.uint16)
    return make_dicom(tmp_path / "cxr.dcm", pixels, spacing=SPACING)


# -------------------------------------------------------------- PNG, TIFF, NIfTI


@pytest.mark.parametrize(("fmt", "name"), [("png", "m.png"), ("tiff", "m.tif"),
                                           ("nifti", "m.nii.gz"), ("nifti", "m.nii")])
def test_lesion_mask_round_trip_is_exact_and_keeps_spacing(tmp_path, fmt, name, nib):
    mask = _mask()
    out = write_lesion(tmp_path / name, mask, ExportOptions(fmt=fmt, spacing=SPACING))
    assert format_of(out) == fmt
    if fmt == "nifti":
        back = read_nifti(out)
        img = nib.load(out)  # the raw file, as another tool sees it
        assert img.shape == (20, 30, 1) and img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0].T, mask)
        np.testing.assert_allclose(np.diag(img.affine)[:3], (-SPACING[1], -SPACING[0], 1.0), rtol=1e-6)
        assert img.header.get_xyzt_units()[0] == "mm"
    else:
        back = read_image(out)
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, mask)
    if fmt == "png":
        assert back.spacing is None  # PNG does not keep it (documented)
    else:
        assert back.spacing == pytest.approx(SPACING, rel=1e-6)


def test_confounder_map_formats(tmp_path, nib):
    prob = _probability()
    options = ExportOptions(fmt="tiff", spacing=SPACING)
    tif = write_confounders(tmp_path / "c.tif", prob, options)
    back = read_image(tif)
    assert back.data.dtype == np.float32 and back.spacing == pytest.approx(SPACING, rel=1e-6)
    np.testing.assert_array_equal(back.data, prob)
    nii = write_confounders(tmp_path / "c.nii.gz", prob, ExportOptions(fmt="nifti", spacing=SPACING))
    np.testing.assert_array_equal(read_nifti(nii).data, prob)
    png = write_confounders(tmp_path / "c.png", prob, ExportOptions(fmt="png"))
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.rint(prob * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        write_confounders(tmp_path / "bad.tif", prob * 2, options)
    with pytest.raises(ValueError, match="integer labels"):
        write_lesion(tmp_path / "bad.png", prob, ExportOptions())  # a map is not a mask
    assert not (tmp_path / "bad.tif").exists() and not (tmp_path / "bad.png").exists()


def test_tiff_spacing_is_read_only_from_centimetre_resolution(tmp_path):
    arr = np.zeros((4, 5), np.uint8)
    tifffile.imwrite(tmp_path / "dpi.tif", arr, resolution=(72, 72), resolutionunit="INCH")
    assert read_image(tmp_path / "dpi.tif").spacing is None  # a default dpi, not a measurement
    tifffile.imwrite(tmp_path / "cm.tif", arr, resolution=(50, 100), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "cm.tif").spacing == pytest.approx((0.1, 0.2))


def test_no_overwrite_keeps_the_existing_file(tmp_path, nib):
    target = tmp_path / "corrected.nii.gz"
    write_lesion(target, _mask(), ExportOptions(fmt="nifti"))
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists and was kept"):
        write_lesion(target, np.zeros((30, 20), np.uint8), ExportOptions(fmt="nifti", overwrite=False))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["corrected.nii.gz"]  # no temp left
    write_lesion(target, np.zeros((30, 20), np.uint8), ExportOptions(fmt="nifti", overwrite=True))
    assert not read_nifti(target).data.any()


def test_missing_extra_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'napari-causalseg\[formats\]'"):
        require_format("nifti")
    with pytest.raises(ValueError, match="nibabel"):
        write_lesion(tmp_path / "m.nii.gz", _mask(), ExportOptions(fmt="nifti"))


# ------------------------------------------------------------------- DICOM SEG


def _referenced(seg):
    series = seg.ReferencedSeriesSequence[0]
    return series.SeriesInstanceUID, series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID


def test_dicom_seg_lesion_is_binary_exact_and_references_the_source(tmp_path, source, hd):
    src = pydicom.dcmread(source)
    mask = _mask()
    info = SegInfo(note=NOTE, model="demo.safetensors", threshold=0.5)
    out = write_lesion(tmp_path / "lesion.dcm", mask, ExportOptions(fmt="dicom-seg", source=source, seg=info))
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY"
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID],
                                               segment_numbers=[1], combine_segments=False)
    assert pixels.shape == (1, 30, 20, 1)
    np.testing.assert_array_equal(pixels[0, :, :, 0], mask)
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert _referenced(seg) == (src.SeriesInstanceUID, src.SOPInstanceUID)
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID != src.SOPInstanceUID
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "napari-causalseg CausalCLIPSeg"
    from napari_causalseg import __version__

    assert algo.AlgorithmVersion == __version__
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert segment.SegmentDescription == NOTE  # the whole note (ST)
    assert len(seg.SeriesDescription) <= 64 and seg.SeriesDescription.endswith("...")
    assert seg.SeriesDescription.startswith("CausalCLIPSeg lesion: Bilateral pulmonary")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(SPACING)
    # the package's own reader agrees
    back, _ = read_dicom_seg(out)
    np.testing.assert_array_equal(back, mask)


def test_dicom_seg_algorithm_type_follows_edits(tmp_path, source, hd):
    mask = _mask()
    for kind, expected in (("SEMIAUTOMATIC", "SEMIAUTOMATIC"), ("MANUAL", "MANUAL")):
        out = write_dicom_seg(tmp_path / f"{kind}.dcm", mask, source, "lesion",
                              SegInfo(note="x", algorithm_type=kind))
        segment = pydicom.dcmread(out).SegmentSequence[0]
        assert segment.SegmentAlgorithmType == expected
        assert ("SegmentationAlgorithmIdentificationSequence" in segment) == (kind != "MANUAL")
    with pytest.raises(ValueError, match="algorithm_type"):
        SegInfo(algorithm_type="automatic-ish")


def test_dicom_seg_confounders_are_fractional_probability(tmp_path, source, hd):
    src = pydicom.dcmread(source)
    prob = _probability()
    out = write_confounders(tmp_path / "conf.dcm", prob,
                            ExportOptions(fmt="dicom-seg", source=source, seg=SegInfo(note=NOTE)))
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    stored = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1],
        combine_segments=False, rescale_fractional=False)[0, :, :, 0]
    np.testing.assert_array_equal(stored, np.rint(prob * 255).astype(np.uint8))
    assert _referenced(seg)[1] == src.SOPInstanceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_dicom_seg_errors(tmp_path, source, hd):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(png)
    with pytest.raises(ValueError, match="DICOM SEG needs a DICOM source image.*--format nifti or tiff"):
        require_format("dicom-seg", png)
    with pytest.raises(ValueError, match="DICOM SEG needs a DICOM source image"):
        write_dicom_seg(tmp_path / "s.dcm", _mask(), png)
    with pytest.raises(ValueError, match="source image is 30 x 20"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((20, 30), np.uint8), source)
    with pytest.raises(ValueError, match="needs the source DICOM"):
        write_lesion(tmp_path / "s.dcm", _mask(), ExportOptions(fmt="dicom-seg"))
    ds = pydicom.dcmread(source)
    del ds.StudyInstanceUID
    with pytest.raises(ValueError, match="lacks StudyInstanceUID, which a SEG needs to reference it"):
        write_dicom_seg(tmp_path / "s.dcm", _mask(), ds)
    ds = pydicom.dcmread(source)
    ds.NumberOfFrames = 3
    with pytest.raises(ValueError, match="single-frame source images; this one has 3 frames"):
        write_dicom_seg(tmp_path / "s.dcm", _mask(), ds)
    assert not (tmp_path / "s.dcm").exists()


def test_dicom_seg_of_sources_without_pixel_spacing_or_preamble(tmp_path, hd):
    mask = _mask()
    detector_only = make_dicom(tmp_path / "dx.dcm", np.zeros((30, 20), np.uint16), spacing=None,
                               imager_spacing=(0.15, 0.15))
    bare = make_dicom(tmp_path / "old.dcm", np.zeros((30, 20), np.uint16), preamble=False)
    for src in (detector_only, bare):
        back, seg = read_dicom_seg(write_dicom_seg(tmp_path / f"seg-{src.name}", mask, src))
        np.testing.assert_array_equal(back, mask)
        assert _referenced(seg)[1] == pydicom.dcmread(src, force=True).SOPInstanceUID


# --------------------------------------------------------------- napari writer


def _layer_meta(source, mask, **extra):
    return {"name": "cxr lesion", "scale": SPACING, "units": ("millimeter", "millimeter"),
            "metadata": {MASK_HASH_KEY: mask_hash(mask),
                         SOURCE_KEY: {"image": "cxr", "note": NOTE, "model": "demo", "threshold": 0.5,
                                      "source_path": str(source)}, **extra}}


def test_napari_writer_nifti_and_dicom_seg(tmp_path, source, nib, hd):
    mask = _mask()
    meta = _layer_meta(source, mask)
    (nii,) = _writer.write_labels(str(tmp_path / "m.nii.gz"), mask, meta)
    back = read_nifti(nii)
    np.testing.assert_array_equal(back.data, mask)
    assert back.spacing == pytest.approx(SPACING, rel=1e-6)
    (tif,) = _writer.write_labels(str(tmp_path / "m.tif"), mask, meta)
    assert read_image(tif).spacing == pytest.approx(SPACING, rel=1e-6)
    (tif,) = _writer.write_labels(str(tmp_path / "px.tif"), mask, {**meta, "units": ("pixel", "pixel")})
    assert read_image(tif).spacing is None  # a scale in pixels is not a spacing

    (seg_path,) = _writer.write_labels(str(tmp_path / "auto.dcm"), mask, meta)
    back, seg = read_dicom_seg(seg_path)
    np.testing.assert_array_equal(back, mask)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentDescription == NOTE

    edited = mask.copy()
    edited[0, 0] = 1  # one brush stroke
    (seg_path,) = _writer.write_labels(str(tmp_path / "edited.dcm"), edited, meta)
    back, seg = read_dicom_seg(seg_path)
    np.testing.assert_array_equal(back, edited)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert _referenced(seg)[1] == pydicom.dcmread(source).SOPInstanceUID


def test_napari_writer_dicom_seg_without_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs the source DICOM file of 'x'.*\\.nii\\.gz or \\.tif"):
        _writer.write_labels(str(tmp_path / "m.dcm"), _mask(), {"name": "x", "metadata": {}})
    with pytest.raises(ValueError, match="cannot tell the output format"):
        _writer.write_labels(str(tmp_path / "m.jpg"), _mask(), {"name": "x"})


def test_napari_lesion_layer_saves_as_dicom_seg_with_its_history(tmp_path, source, nib, hd):
    """The real path in napari: reader -> Segment's layers -> Save (no Qt needed)."""
    pytest.importorskip("napari")
    from napari.components import ViewerModel
    from napari.layers import Layer

    from napari_causalseg._reader import napari_get_reader
    from napari_causalseg.engine.segmenter import SegmentationResult
    from napari_causalseg.widgets._layers import show_result

    viewer = ViewerModel()
    ((data, kwargs, kind),) = napari_get_reader(str(source))(str(source))
    image = viewer.add_layer(Layer.create(data, kwargs, kind))
    result = SegmentationResult(mask=_mask(), probability=_mask().astype(np.float32),
                                confounder=_probability(), note=NOTE, threshold=0.5)
    labels, _, _ = show_result(viewer, image, result, "demo model")
    assert tuple(labels.scale) == pytest.approx(SPACING)

    (saved,) = _writer.write_labels(str(tmp_path / "auto.dcm"), *labels.as_layer_data_tuple()[:2])
    back, seg = read_dicom_seg(saved)
    np.testing.assert_array_equal(back, _mask())
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert _referenced(seg)[1] == pydicom.dcmread(source).SOPInstanceUID

    labels.data[0, 0] = 1  # the user paints one pixel
    (saved,) = _writer.write_labels(str(tmp_path / "edited.dcm"), *labels.as_layer_data_tuple()[:2])
    back, seg = read_dicom_seg(saved)
    assert back[0, 0] == 1 and seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    (nii,) = _writer.write_labels(str(tmp_path / "edited.nii.gz"), *labels.as_layer_data_tuple()[:2])
    assert read_nifti(nii).spacing == pytest.approx(SPACING, rel=1e-6)
