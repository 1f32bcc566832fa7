"""Cases and their pixels (data/cases.py): split access, size checks and image/mask
loading through the image stack."""

from __future__ import annotations

import numpy as np
import pytest

from napari_causalseg.engine.data.cases import (
    DatasetError,
    DatasetSplits,
    check_case_sizes,
    load_case,
    load_image,
    load_mask,
)
from napari_causalseg.engine.data.layouts import open_dataset

from .data_folders import H, W, raises_naming, write_png


def test_split_accessor(sgseg_root):
    ds = open_dataset(sgseg_root)
    assert ds.split("val") is ds.val and ds.split("Validation") is ds.val
    with pytest.raises(DatasetError, match="Unknown split 'dev'"):
        ds.split("dev")
    assert isinstance(ds, DatasetSplits)


def test_size_mismatch_names_both_files(sgseg_root):
    d = sgseg_root / "images" / "train"
    write_png(d / "masks" / "mask_covid_3.png", np.zeros((H + 1, W), np.uint8))
    msg = raises_naming(d / "images" / "covid_3.png", sgseg_root, match="5x6")
    assert str(d / "masks" / "mask_covid_3.png") in msg and "5x7" in msg
    # validate=False opens quickly; the check then happens when the case is loaded.
    ds = open_dataset(sgseg_root, validate=False)
    case = {c.name: c for c in ds.train}["covid_3"]
    with pytest.raises(DatasetError) as info:
        load_case(case)
    assert str(case.image_path) in str(info.value) and str(case.mask_path) in str(info.value)
    check_case_sizes(ds.train[0])  # a good case passes silently
    with pytest.raises(DatasetError, match=str(case.mask_path)):
        check_case_sizes(case)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="junk.png"):
        load_mask(tmp_path / "junk.png")


def test_load_image_rgb_to_luminance_and_16_bit(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # 0.299 * 255 = 76.2 -> 76
    rgb[0, 1] = (0, 255, 0)  # 0.587 * 255 = 149.7 -> 150
    rgb[1, 0] = (0, 0, 255)  # 0.114 * 255 = 29.1 -> 29
    rgb[1, 1] = (200, 200, 200)  # grey stays 200
    write_png(tmp_path / "rgb.png", rgb)
    g = load_image(tmp_path / "rgb.png")
    assert g.dtype == np.uint8
    np.testing.assert_array_equal(g, [[76, 150], [29, 200]])
    import tifffile

    a16 = np.array([[0, 1000], [40000, 65535]], np.uint16)
    tifffile.imwrite(tmp_path / "a16.tif", a16)
    np.testing.assert_array_equal(load_image(tmp_path / "a16.tif"), a16)
    write_png(tmp_path / "a16.png", a16)
    out = load_image(tmp_path / "a16.png")
    assert out.max() == 65535 and out.ndim == 2


def test_load_mask_binarises_above_zero(tmp_path):
    write_png(tmp_path / "m.png", np.array([[0, 1], [128, 255]], np.uint8))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, True], [True, True]])
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black background is not lesion
    rgba[0, 1, 0] = 1  # any non-zero colour channel is lesion (> 0, not > 127)
    write_png(tmp_path / "m4.png", rgba)
    np.testing.assert_array_equal(load_mask(tmp_path / "m4.png"), [[False, True, False]])
