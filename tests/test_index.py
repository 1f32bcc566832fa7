"""Folder listings and index entries (data/index.py): case-insensitive names, image or
mask names in the index, and the image and mask folders each layout expects."""

from __future__ import annotations

import os

import pytest

from napari_causalseg.engine.data.layouts import open_dataset

from .data_folders import TEST, check_pairs, note_for, raises_naming, write_csv, write_pair


def test_mmi_unet_image_column_may_hold_image_names(mmi_root):
    write_csv(mmi_root / "prompt" / "test.csv", [(n, note_for(k)) for k, n in enumerate(TEST)])
    ds = open_dataset(mmi_root)
    check_pairs(ds.test)
    assert [c.image_path.name for c in ds.test] == TEST


def test_sgseg_case_insensitive_names_and_unlisted_files(sgseg_root):
    d = sgseg_root / "images" / "test"
    # Lower-case names in the JSON, mixed case on disk (as in the SGSeg copy before its fix).
    os.rename(d / "images" / TEST[0], d / "images" / "sub-S1_ses-E1.png")
    ds = open_dataset(sgseg_root)
    assert ds.test[0].image_path.name == "sub-S1_ses-E1.png"
    # An extra file that differs only in case is ignored, and reported.
    write_pair(d / "images", d / "masks", "sub-S2_ses-E2.png", 0)
    ds = open_dataset(sgseg_root)
    assert len(ds.test) == 3
    assert any("only in letter case" in w and "test" in w for w in ds.warnings)


@pytest.mark.parametrize(("layout", "split_dir", "sub", "other"), [
    ("lvit", "Test_Folder", "labelcol", "img"),
    ("lvit", "Train_Folder", "img", "labelcol"),
    ("mmi", "Test", "GTs", "Images"),
    ("mmi", "Train", "Images", "GTs"),
    ("sgseg", "images/test", "masks", "images"),
    ("sgseg", "images/valid", "images", "masks"),
])
def test_missing_image_or_mask_folder(request, layout, split_dir, sub, other):
    import shutil

    root = request.getfixturevalue(f"{layout}_root")
    folder = root / split_dir
    shutil.rmtree(folder / sub)
    msg = raises_naming(folder / sub, root, match="is missing")
    assert f"{folder.name}/{other}" in msg  # says where the layout expects each folder
