"""Data set layouts (data/layouts.py): detection and the three QaTa-COV19 layouts read
as their projects read them, with the errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_causalseg.engine.data import layouts
from napari_causalseg.engine.data.cases import Case, DatasetError, load_case
from napari_causalseg.engine.data.layouts import detect_layout, open_dataset

from .data_folders import (
    MMI_TRAIN,
    TRAIN,
    VAL,
    H,
    W,
    check_pairs,
    note_for,
    raises_naming,
    write_csv,
    write_pair,
    write_png,
    write_xlsx,
)

# --------------------------------------------------------------------------- detection


def test_detect_each_layout(lvit_root, mmi_root, sgseg_root, ann_root, tmp_path):
    assert detect_layout(lvit_root) == "lvit"
    assert detect_layout(mmi_root) == "mmi_unet"
    assert detect_layout(sgseg_root) == "sgseg"
    assert detect_layout(ann_root) == "annotations"
    # A download folder above the data set (SGSeg keeps it at <repo>/data/QaTa).
    assert detect_layout(tmp_path / "data") == "sgseg"
    ds = open_dataset(tmp_path / "data")
    assert ds.root == sgseg_root


def test_detect_ambiguous_and_unknown(lvit_root, mmi_root, tmp_path):
    with pytest.raises(DatasetError, match="more than one layout"):
        detect_layout(tmp_path)  # holds both an LViT and an MMI-UNet data set
    assert open_dataset(tmp_path, layout="mmi_unet").root == mmi_root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=str(empty)):
        detect_layout(empty)
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(missing)
    with pytest.raises(DatasetError, match="Unknown layout"):
        open_dataset(lvit_root, layout="kaggle")


# --------------------------------------------------------------------------- each layout


def test_lvit(lvit_root):
    ds = open_dataset(lvit_root)
    assert ds.layout == "lvit" and ds.root == lvit_root
    assert ds.sizes() == {"train": 10, "val": 2, "test": 3}
    # Folder membership, sorted by file name (covid_10 sorts before covid_2).
    assert [c.name for c in ds.train][:3] == ["covid_1", "covid_10", "covid_2"]
    for split in ("train", "val", "test"):
        check_pairs(ds.split(split))
    c = {c.name: c for c in ds.train}["covid_3"]
    assert c.note == note_for(2)  # TRAIN index 2
    assert ds.test[0].note == note_for(0)
    image, mask = load_case(c)
    assert image.shape == mask.shape == (H, W) and mask.dtype == bool
    assert mask.sum() == 3 and image[0, 0] == 12


def test_lvit_per_split_text_files_and_no_val_folder(lvit_root):
    # Per-split text wins over the shared file.
    write_xlsx(lvit_root / "Val_Folder" / "Val_text.xlsx", [(f"mask_{n}", "per-split note") for n in VAL])
    ds = open_dataset(lvit_root)
    assert {c.note for c in ds.val} == {"per-split note"}
    # Without Val_Folder, val is the last 20% of train in name order.
    import shutil

    shutil.rmtree(lvit_root / "Val_Folder")
    ds = open_dataset(lvit_root)
    names = sorted(TRAIN)
    assert [c.image_path.name for c in ds.train] == names[:8]
    assert [c.image_path.name for c in ds.val] == names[8:]


def test_mmi_unet(mmi_root):
    ds = open_dataset(mmi_root)
    assert ds.layout == "mmi_unet"
    assert ds.sizes() == {"train": 8, "val": 2, "test": 3}
    # The CSV order decides; val is the LAST 20% of train.csv, not of the sorted names.
    assert [c.image_path.name for c in ds.train] == MMI_TRAIN[:8]
    assert [c.image_path.name for c in ds.val] == MMI_TRAIN[8:]
    for split in ("train", "val", "test"):
        check_pairs(ds.split(split))
    assert ds.val[1].note == note_for(9)
    assert ds.test[2].image_path.parent == mmi_root / "Test" / "Images"
    ds2 = open_dataset(mmi_root, val_fraction=0.5)
    assert [c.image_path.name for c in ds2.val] == MMI_TRAIN[5:]
    ds0 = open_dataset(mmi_root, val_fraction=0.0)
    assert len(ds0.train) == 10 and ds0.val == []


def test_sgseg(sgseg_root):
    ds = open_dataset(sgseg_root)
    assert ds.layout == "sgseg"
    assert ds.sizes() == {"train": 10, "val": 2, "test": 3}
    assert [c.image_path.name for c in ds.train] == TRAIN  # JSON order
    assert [c.image_path.name for c in ds.split("valid")] == VAL
    for split in ("train", "val", "test"):
        check_pairs(ds.split(split))
    assert ds.warnings == []


def test_sgseg_without_valid_takes_last_20_percent(sgseg_root):
    path = sgseg_root / "prompts" / "annotation.json"
    ann = json.loads(path.read_text())
    del ann["valid"]
    path.write_text(json.dumps(ann))
    ds = open_dataset(sgseg_root)
    assert [c.image_path.name for c in ds.train] == TRAIN[:8]
    assert [c.image_path.name for c in ds.val] == TRAIN[8:]
    assert any("last 20%" in w for w in ds.warnings)


def test_tail_split_matches_ariadne_int_0_8_n():
    cases = [Case(str(i), Path(f"{i}.png"), Path(f"mask_{i}.png"), "n") for i in range(7145)]
    train, val = layouts._tail_split(cases, 0.2)
    assert (len(train), len(val)) == (5716, 1429)  # int(0.8 * 7145) = 5716, the QaTa split
    assert val[0].name == "5716" and val[-1].name == "7144"
    train3, val3 = layouts._tail_split(cases[:3], 0.2)
    assert (len(train3), len(val3)) == (2, 1)  # int(0.8 * 3) = 2


def test_bad_val_fraction(sgseg_root):
    with pytest.raises(DatasetError, match="val_fraction"):
        open_dataset(sgseg_root, val_fraction=1.0)


# --------------------------------------------------------------------------- error paths


def test_lvit_errors(lvit_root):
    tf = lvit_root / "Train_Folder"
    # Image without mask.
    (tf / "labelcol" / "mask_covid_4.png").rename(tf / "mask_covid_4.png.bak")
    raises_naming(tf / "img" / "covid_4.png", lvit_root, match="has no mask")
    (tf / "mask_covid_4.png.bak").rename(tf / "labelcol" / "mask_covid_4.png")
    # Mask without image.
    write_png(tf / "labelcol" / "mask_covid_99.png", np.zeros((H, W), np.uint8))
    raises_naming(tf / "labelcol" / "mask_covid_99.png", lvit_root, match="has no image")
    (tf / "labelcol" / "mask_covid_99.png").unlink()
    # Row missing from the Excel file.
    rows = [(f"mask_{n}", note_for(k)) for k, n in enumerate(TRAIN + VAL) if n != "covid_2.png"]
    write_xlsx(tf / "Train_Val_text.xlsx", rows)
    raises_naming(Path("mask_covid_2.png"), lvit_root, match="no description")
    # Empty description.
    write_xlsx(tf / "Train_Val_text.xlsx", [*rows, ("mask_covid_2.png", "   ")])
    raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="no description")
    # Wrong header.
    write_xlsx(tf / "Train_Val_text.xlsx", rows, header=("Image", "Caption"))
    raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="'Description'")
    # Not an Excel file at all.
    (tf / "Train_Val_text.xlsx").write_bytes(b"this is not a zip file")
    raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="Cannot read Excel")
    # No text file.
    (tf / "Train_Val_text.xlsx").unlink()
    raises_naming(tf, lvit_root, match="Train_Val_text.xlsx")


def test_mmi_unet_errors(mmi_root):
    csv_path = mmi_root / "prompt" / "train.csv"
    rows = [(f"mask_{n}", note_for(k)) for k, n in enumerate(MMI_TRAIN)]
    # Row naming a missing image, a missing mask, an empty note, a duplicate.
    (mmi_root / "Train" / "Images" / "covid_9.png").unlink()
    msg = raises_naming(mmi_root / "Train" / "Images" / "covid_9.png", mmi_root)
    assert str(csv_path) in msg and "row 4" in msg  # header is row 1, covid_9 is data row 3
    write_pair(mmi_root / "Train" / "Images", mmi_root / "Train" / "GTs", "covid_9.png", 2)
    (mmi_root / "Train" / "GTs" / "mask_covid_2.png").unlink()
    raises_naming(mmi_root / "Train" / "GTs" / "mask_covid_2.png", mmi_root, match="missing")
    write_pair(mmi_root / "Train" / "Images", mmi_root / "Train" / "GTs", "covid_2.png", 3)
    write_csv(csv_path, [*rows[:-1], (rows[-1][0], "")])
    raises_naming(csv_path, mmi_root, match="empty description")
    write_csv(csv_path, [*rows, rows[0]])
    raises_naming(csv_path, mmi_root, match="repeats case 'covid_5'")
    # Bad header, undecodable bytes.
    write_csv(csv_path, rows, header=("", "Image", "Text"))
    raises_naming(csv_path, mmi_root, match="'Description'")
    csv_path.write_bytes(b"Image,Description\n\xff\xfe\xfa,bad\n")
    raises_naming(csv_path, mmi_root, match="Cannot read CSV")
    # Test folder without its CSV.
    write_csv(csv_path, rows)
    (mmi_root / "prompt" / "test.csv").unlink()
    raises_naming(mmi_root / "prompt" / "test.csv", mmi_root, match="is missing")


def test_sgseg_errors(sgseg_root):
    path = sgseg_root / "prompts" / "annotation.json"
    good = json.loads(path.read_text())
    path.write_text("{not json")
    raises_naming(path, sgseg_root, match="Cannot read JSON")
    bad = json.loads(json.dumps(good))
    bad["test"][1]["caption"] = ""
    path.write_text(json.dumps(bad))
    raises_naming(path, sgseg_root, match="empty description")
    bad = json.loads(json.dumps(good))
    bad["valid"].append({"image_path": "mask_ghost.png", "caption": "x"})
    path.write_text(json.dumps(bad))
    msg = raises_naming(sgseg_root / "images" / "valid" / "images" / "ghost.png", sgseg_root)
    assert str(sgseg_root / "images" / "valid" / "masks" / "mask_ghost.png") in msg
    assert "['valid'][2]" in msg
    path.write_text(json.dumps({"train": "oops"}))
    raises_naming(path, sgseg_root, match="must be a list")
