"""Readers for the three QaTa-COV19 layouts and the annotation folder, on tiny files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_causalseg.engine.data import readers
from napari_causalseg.engine.data.readers import (
    AnnotationStore,
    Case,
    DatasetError,
    DatasetSplits,
    detect_layout,
    load_case,
    load_image,
    load_mask,
    open_dataset,
    safe_case_name,
)

H, W = 6, 5


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pair(img_dir: Path, mask_dir: Path, name: str, k: int, size=(H, W)) -> None:
    """Image ``name`` (value k) and ``mask_<name>`` (k+1 pixels set to 255)."""
    _png(img_dir / name, np.full(size, 10 + k, np.uint8))
    m = np.zeros(size, np.uint8)
    m.flat[: k + 1] = 255
    _png(mask_dir / f"mask_{name}", m)


def _note(k: int) -> str:
    return f"unilateral pulmonary infection, one infected area, note {k}."


def _xlsx(path: Path, rows, header=("Image", "Description")) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


TRAIN = [f"covid_{i}.png" for i in range(1, 11)]  # 10 cases -> 8 train + 2 val when split
VAL = ["covid_20.png", "covid_21.png"]
TEST = ["sub-s1_ses-e1.png", "sub-s2_ses-e2.png", "sub-s3_ses-e3.png"]


@pytest.fixture
def lvit_root(tmp_path: Path) -> Path:
    root = tmp_path / "QaTa_LViT"
    rows_tv = []
    for split, names in (("Train", TRAIN), ("Val", VAL)):
        for k, n in enumerate(names):
            _pair(root / f"{split}_Folder" / "img", root / f"{split}_Folder" / "labelcol", n, k)
            rows_tv.append((f"mask_{n}", _note(k)))
    _xlsx(root / "Train_Folder" / "Train_Val_text.xlsx", rows_tv)
    for k, n in enumerate(TEST):
        _pair(root / "Test_Folder" / "img", root / "Test_Folder" / "labelcol", n, k)
    _xlsx(root / "Test_Folder" / "Test_text.xlsx", [(f"mask_{n}", _note(k)) for k, n in enumerate(TEST)])
    return root


def _write_csv(path: Path, rows, header=("", "Image", "Description")) -> None:
    """Like pandas' to_csv: an unnamed index column first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow([i, *r])


# CSV order deliberately not sorted: the split must follow the file, not the name order.
MMI_TRAIN = ["covid_5.png", "covid_1.png", "covid_9.png", "covid_2.png", "covid_7.png",
             "covid_3.png", "covid_8.png", "covid_4.png", "covid_10.png", "covid_6.png"]


@pytest.fixture
def mmi_root(tmp_path: Path) -> Path:
    root = tmp_path / "QaTa-COV19-v2"
    for k, n in enumerate(MMI_TRAIN):
        _pair(root / "Train" / "Images", root / "Train" / "GTs", n, k)
    for k, n in enumerate(TEST):
        _pair(root / "Test" / "Images", root / "Test" / "GTs", n, k)
    _write_csv(root / "prompt" / "train.csv", [(f"mask_{n}", _note(k)) for k, n in enumerate(MMI_TRAIN)])
    _write_csv(root / "prompt" / "test.csv", [(f"mask_{n}", _note(k)) for k, n in enumerate(TEST)])
    return root


@pytest.fixture
def sgseg_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "QaTa"
    ann = {}
    for split, names in (("train", TRAIN), ("valid", VAL), ("test", TEST)):
        d = root / "images" / split
        for k, n in enumerate(names):
            _pair(d / "images", d / "masks", n, k)
        ann[split] = [
            {"image_path": f"mask_{n}", "caption": _note(k), "pseudo_label": [0] * 6}
            for k, n in enumerate(names)
        ]
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "annotation.json").write_text(json.dumps(ann))
    return root


def _image(k: int, dtype=np.uint8) -> np.ndarray:
    return (np.arange(H * W).reshape(H, W) * (k + 1)).astype(dtype)


def _mask(k: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[: k + 1, 1:3] = True
    return m


@pytest.fixture
def ann_root(tmp_path: Path) -> Path:
    root = tmp_path / "annotations"
    store = AnnotationStore(root)
    for k in range(5):
        store.add_case(f"case{k}", _image(k), _mask(k), f"note {k}")
    store.add_case("held_out", _image(7), _mask(3), "test note", meta={"split": "test"})
    return root


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


def _check_pairs(cases: list[Case]) -> None:
    for c in cases:
        assert c.mask_path.name == f"mask_{c.image_path.name}"
        assert c.name == c.image_path.stem
        assert c.image_path.is_file() and c.mask_path.is_file()


def test_lvit(lvit_root):
    ds = open_dataset(lvit_root)
    assert ds.layout == "lvit" and ds.root == lvit_root
    assert ds.sizes() == {"train": 10, "val": 2, "test": 3}
    # Folder membership, sorted by file name (covid_10 sorts before covid_2).
    assert [c.name for c in ds.train][:3] == ["covid_1", "covid_10", "covid_2"]
    for split in ("train", "val", "test"):
        _check_pairs(ds.split(split))
    c = {c.name: c for c in ds.train}["covid_3"]
    assert c.note == _note(2)  # TRAIN index 2
    assert ds.test[0].note == _note(0)
    image, mask = load_case(c)
    assert image.shape == mask.shape == (H, W) and mask.dtype == bool
    assert mask.sum() == 3 and image[0, 0] == 12


def test_lvit_per_split_text_files_and_no_val_folder(lvit_root):
    # Per-split text wins over the shared file.
    _xlsx(lvit_root / "Val_Folder" / "Val_text.xlsx", [(f"mask_{n}", "per-split note") for n in VAL])
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
        _check_pairs(ds.split(split))
    assert ds.val[1].note == _note(9)
    assert ds.test[2].image_path.parent == mmi_root / "Test" / "Images"
    ds2 = open_dataset(mmi_root, val_fraction=0.5)
    assert [c.image_path.name for c in ds2.val] == MMI_TRAIN[5:]
    ds0 = open_dataset(mmi_root, val_fraction=0.0)
    assert len(ds0.train) == 10 and ds0.val == []


def test_mmi_unet_image_column_may_hold_image_names(mmi_root):
    _write_csv(mmi_root / "prompt" / "test.csv", [(n, _note(k)) for k, n in enumerate(TEST)])
    ds = open_dataset(mmi_root)
    _check_pairs(ds.test)
    assert [c.image_path.name for c in ds.test] == TEST


def test_sgseg(sgseg_root):
    ds = open_dataset(sgseg_root)
    assert ds.layout == "sgseg"
    assert ds.sizes() == {"train": 10, "val": 2, "test": 3}
    assert [c.image_path.name for c in ds.train] == TRAIN  # JSON order
    assert [c.image_path.name for c in ds.split("valid")] == VAL
    for split in ("train", "val", "test"):
        _check_pairs(ds.split(split))
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


def test_sgseg_case_insensitive_names_and_unlisted_files(sgseg_root):
    d = sgseg_root / "images" / "test"
    # Lower-case names in the JSON, mixed case on disk (as in the SGSeg copy before its fix).
    os.rename(d / "images" / TEST[0], d / "images" / "sub-S1_ses-E1.png")
    ds = open_dataset(sgseg_root)
    assert ds.test[0].image_path.name == "sub-S1_ses-E1.png"
    # An extra file that differs only in case is ignored, and reported.
    _pair(d / "images", d / "masks", "sub-S2_ses-E2.png", 0)
    ds = open_dataset(sgseg_root)
    assert len(ds.test) == 3
    assert any("only in letter case" in w and "test" in w for w in ds.warnings)


def test_tail_split_matches_ariadne_int_0_8_n():
    cases = [Case(str(i), Path(f"{i}.png"), Path(f"mask_{i}.png"), "n") for i in range(7145)]
    train, val = readers._tail_split(cases, 0.2)
    assert (len(train), len(val)) == (5716, 1429)  # int(0.8 * 7145) = 5716, the QaTa split
    assert val[0].name == "5716" and val[-1].name == "7144"
    train3, val3 = readers._tail_split(cases[:3], 0.2)
    assert (len(train3), len(val3)) == (2, 1)  # int(0.8 * 3) = 2


def test_split_accessor(sgseg_root):
    ds = open_dataset(sgseg_root)
    assert ds.split("val") is ds.val and ds.split("Validation") is ds.val
    with pytest.raises(DatasetError, match="Unknown split 'dev'"):
        ds.split("dev")
    assert isinstance(ds, DatasetSplits)


def test_annotations_layout(ann_root):
    ds = open_dataset(ann_root)
    assert ds.layout == "annotations"
    assert [c.name for c in ds.train] == ["case0", "case1", "case2", "case3"]
    assert [c.name for c in ds.val] == ["case4"]
    assert [c.name for c in ds.test] == ["held_out"]
    image, mask = load_case(ds.test[0])
    np.testing.assert_array_equal(image, _image(7))
    np.testing.assert_array_equal(mask, _mask(3))
    # A folder made by hand (name not in the sanitised form) is read as it is, meta included.
    (ann_root / "cases" / "held_out").rename(ann_root / "cases" / "held out (copy)")
    ds = open_dataset(ann_root)
    assert [c.name for c in ds.test] == ["held out (copy)"]


# --------------------------------------------------------------------------- error paths


def _raises_naming(path: Path, *args, match: str = "", **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        open_dataset(*args, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    if match:
        assert match in msg, msg
    return msg


def test_lvit_errors(lvit_root):
    tf = lvit_root / "Train_Folder"
    # Image without mask.
    (tf / "labelcol" / "mask_covid_4.png").rename(tf / "mask_covid_4.png.bak")
    _raises_naming(tf / "img" / "covid_4.png", lvit_root, match="has no mask")
    (tf / "mask_covid_4.png.bak").rename(tf / "labelcol" / "mask_covid_4.png")
    # Mask without image.
    _png(tf / "labelcol" / "mask_covid_99.png", np.zeros((H, W), np.uint8))
    _raises_naming(tf / "labelcol" / "mask_covid_99.png", lvit_root, match="has no image")
    (tf / "labelcol" / "mask_covid_99.png").unlink()
    # Row missing from the Excel file.
    rows = [(f"mask_{n}", _note(k)) for k, n in enumerate(TRAIN + VAL) if n != "covid_2.png"]
    _xlsx(tf / "Train_Val_text.xlsx", rows)
    _raises_naming(Path("mask_covid_2.png"), lvit_root, match="no description")
    # Empty description.
    _xlsx(tf / "Train_Val_text.xlsx", [*rows, ("mask_covid_2.png", "   ")])
    _raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="no description")
    # Wrong header.
    _xlsx(tf / "Train_Val_text.xlsx", rows, header=("Image", "Caption"))
    _raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="'Description'")
    # Not an Excel file at all.
    (tf / "Train_Val_text.xlsx").write_bytes(b"this is not a zip file")
    _raises_naming(tf / "Train_Val_text.xlsx", lvit_root, match="Cannot read Excel")
    # No text file.
    (tf / "Train_Val_text.xlsx").unlink()
    _raises_naming(tf, lvit_root, match="Train_Val_text.xlsx")


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
    msg = _raises_naming(folder / sub, root, match="is missing")
    assert f"{folder.name}/{other}" in msg  # says where the layout expects each folder


def test_mmi_unet_errors(mmi_root):
    csv_path = mmi_root / "prompt" / "train.csv"
    rows = [(f"mask_{n}", _note(k)) for k, n in enumerate(MMI_TRAIN)]
    # Row naming a missing image, a missing mask, an empty note, a duplicate.
    (mmi_root / "Train" / "Images" / "covid_9.png").unlink()
    msg = _raises_naming(mmi_root / "Train" / "Images" / "covid_9.png", mmi_root)
    assert str(csv_path) in msg and "row 4" in msg  # header is row 1, covid_9 is data row 3
    _pair(mmi_root / "Train" / "Images", mmi_root / "Train" / "GTs", "covid_9.png", 2)
    (mmi_root / "Train" / "GTs" / "mask_covid_2.png").unlink()
    _raises_naming(mmi_root / "Train" / "GTs" / "mask_covid_2.png", mmi_root, match="missing")
    _pair(mmi_root / "Train" / "Images", mmi_root / "Train" / "GTs", "covid_2.png", 3)
    _write_csv(csv_path, [*rows[:-1], (rows[-1][0], "")])
    _raises_naming(csv_path, mmi_root, match="empty description")
    _write_csv(csv_path, [*rows, rows[0]])
    _raises_naming(csv_path, mmi_root, match="repeats case 'covid_5'")
    # Bad header, undecodable bytes.
    _write_csv(csv_path, rows, header=("", "Image", "Text"))
    _raises_naming(csv_path, mmi_root, match="'Description'")
    csv_path.write_bytes(b"Image,Description\n\xff\xfe\xfa,bad\n")
    _raises_naming(csv_path, mmi_root, match="Cannot read CSV")
    # Test folder without its CSV.
    _write_csv(csv_path, rows)
    (mmi_root / "prompt" / "test.csv").unlink()
    _raises_naming(mmi_root / "prompt" / "test.csv", mmi_root, match="is missing")


def test_sgseg_errors(sgseg_root):
    path = sgseg_root / "prompts" / "annotation.json"
    good = json.loads(path.read_text())
    path.write_text("{not json")
    _raises_naming(path, sgseg_root, match="Cannot read JSON")
    bad = json.loads(json.dumps(good))
    bad["test"][1]["caption"] = ""
    path.write_text(json.dumps(bad))
    _raises_naming(path, sgseg_root, match="empty description")
    bad = json.loads(json.dumps(good))
    bad["valid"].append({"image_path": "mask_ghost.png", "caption": "x"})
    path.write_text(json.dumps(bad))
    msg = _raises_naming(sgseg_root / "images" / "valid" / "images" / "ghost.png", sgseg_root)
    assert str(sgseg_root / "images" / "valid" / "masks" / "mask_ghost.png") in msg
    assert "['valid'][2]" in msg
    path.write_text(json.dumps({"train": "oops"}))
    _raises_naming(path, sgseg_root, match="must be a list")


def test_size_mismatch_names_both_files(sgseg_root):
    d = sgseg_root / "images" / "train"
    _png(d / "masks" / "mask_covid_3.png", np.zeros((H + 1, W), np.uint8))
    msg = _raises_naming(d / "images" / "covid_3.png", sgseg_root, match="5x6")
    assert str(d / "masks" / "mask_covid_3.png") in msg and "5x7" in msg
    # validate=False opens quickly; the check then happens when the case is loaded.
    ds = open_dataset(sgseg_root, validate=False)
    case = {c.name: c for c in ds.train}["covid_3"]
    with pytest.raises(DatasetError) as info:
        load_case(case)
    assert str(case.image_path) in str(info.value) and str(case.mask_path) in str(info.value)
    readers.check_case_sizes(ds.train[0])  # a good case passes silently
    with pytest.raises(DatasetError, match=str(case.mask_path)):
        readers.check_case_sizes(case)


def test_bad_val_fraction(sgseg_root):
    with pytest.raises(DatasetError, match="val_fraction"):
        open_dataset(sgseg_root, val_fraction=1.0)


def test_annotation_folder_errors(ann_root):
    case_dir = ann_root / "cases" / "case2"
    (case_dir / "note.txt").write_text("  \n")
    _raises_naming(case_dir / "note.txt", ann_root, match="is empty")
    (case_dir / "note.txt").write_text("ok")
    (case_dir / "mask.png").unlink()
    _raises_naming(case_dir, ann_root, match="no mask.png")
    (case_dir / "image.png").unlink()
    _raises_naming(case_dir, ann_root, match="no image.png")
    case_dir.rename(ann_root / "cases" / ".hidden")  # hidden folders are not cases
    (ann_root / "cases" / "case3" / "meta.json").write_text('{"split": "holdout"}')
    _raises_naming(ann_root / "cases" / "case3" / "meta.json", ann_root, match="unknown split")
    (ann_root / "cases" / "case3" / "meta.json").write_text("[")
    _raises_naming(ann_root / "cases" / "case3" / "meta.json", ann_root, match="Cannot read JSON")


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="junk.png"):
        load_mask(tmp_path / "junk.png")


# --------------------------------------------------------------------------- loading helpers


def test_load_image_rgb_to_luminance_and_16_bit(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # 0.299 * 255 = 76.2 -> 76
    rgb[0, 1] = (0, 255, 0)  # 0.587 * 255 = 149.7 -> 150
    rgb[1, 0] = (0, 0, 255)  # 0.114 * 255 = 29.1 -> 29
    rgb[1, 1] = (200, 200, 200)  # grey stays 200
    _png(tmp_path / "rgb.png", rgb)
    g = load_image(tmp_path / "rgb.png")
    assert g.dtype == np.uint8
    np.testing.assert_array_equal(g, [[76, 150], [29, 200]])
    import tifffile

    a16 = np.array([[0, 1000], [40000, 65535]], np.uint16)
    tifffile.imwrite(tmp_path / "a16.tif", a16)
    np.testing.assert_array_equal(load_image(tmp_path / "a16.tif"), a16)
    _png(tmp_path / "a16.png", a16)
    out = load_image(tmp_path / "a16.png")
    assert out.max() == 65535 and out.ndim == 2


def test_load_mask_binarises_above_zero(tmp_path):
    _png(tmp_path / "m.png", np.array([[0, 1], [128, 255]], np.uint8))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), [[False, True], [True, True]])
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black background is not lesion
    rgba[0, 1, 0] = 1  # any non-zero colour channel is lesion (> 0, not > 127)
    _png(tmp_path / "m4.png", rgba)
    np.testing.assert_array_equal(load_mask(tmp_path / "m4.png"), [[False, True, False]])


# --------------------------------------------------------------------------- annotation store


def test_store_round_trip(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    c8 = store.add_case("a", _image(1), _mask(1), "  note a \n", meta={"split": "val", "by": "me"})
    assert c8.image_path.name == "image.png" and c8.note == "note a"
    c16 = store.add_case("b", _image(2, np.uint16) * 1000, _mask(2), "note b")
    assert c16.image_path.name == "image.tif"
    cf = store.add_case("c", _image(3, np.float32) / 7, _mask(3), "note c")
    assert cf.image_path.name == "image.tif"
    assert [c.name for c in store.cases()] == ["a", "b", "c"]
    assert store.cases()[0] == c8
    np.testing.assert_array_equal(load_image(c8.image_path), _image(1))
    np.testing.assert_array_equal(load_image(c16.image_path), _image(2, np.uint16) * 1000)
    np.testing.assert_array_equal(load_image(cf.image_path), _image(3, np.float32) / 7)
    assert set(np.unique(np.asarray(Image.open(c8.mask_path))).tolist()) == {0, 1}  # one convention
    np.testing.assert_array_equal(load_mask(c8.mask_path), _mask(1))
    assert store.meta("a") == {"by": "me", "split": "val"}
    assert store.meta("b") == {"split": "train"}  # decided when added
    assert store.case("b") == c16


def test_store_rejects_bad_input(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    with pytest.raises(DatasetError, match="note is empty"):
        store.add_case("x", _image(0), _mask(0), "   ")
    with pytest.raises(DatasetError, match="does not match image shape"):
        store.add_case("x", _image(0), np.zeros((H, W + 1), bool), "n")
    with pytest.raises(DatasetError, match="JSON"):
        store.add_case("x", _image(0), _mask(0), "n", meta={"bad": object()})
    with pytest.raises(DatasetError, match="no usable characters"):
        store.add_case("../..", _image(0), _mask(0), "n")
    assert store.cases() == []
    assert os.listdir(store.cases_dir) == []


def test_store_names_cannot_escape(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    c = store.add_case("../../evil/..\\x", _image(0), _mask(0), "n")
    assert c.image_path.parent.parent == store.cases_dir
    assert c.name == safe_case_name("../../evil/..\\x") == "evil_.._x"
    assert not (tmp_path / "evil").exists()
    assert safe_case_name("CON") == "_CON"
    assert safe_case_name("patient 7 (left)") == "patient_7_left"


def _snapshot(case_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(case_dir.iterdir())}


def test_store_overwrite_failure_keeps_old_case(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", _image(1), _mask(1), "first version", meta={"v": 1})
    before = _snapshot(store.cases_dir / "p1")

    def broken_mask_writer(path, mask):
        path.write_bytes(b"half a PNG")  # leave a partial file behind, then fail
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(readers, "_write_mask", broken_mask_writer)
    with pytest.raises(DatasetError, match="previous version"):
        store.add_case("p1", _image(2), _mask(2), "second version")
    assert _snapshot(store.cases_dir / "p1") == before
    assert [c.note for c in store.cases()] == ["first version"]
    assert os.listdir(store.cases_dir) == ["p1"]  # no staging folder left behind

    # A non-I/O failure propagates unchanged and also leaves nothing behind.
    def buggy(path, mask):
        raise RuntimeError("bug")

    monkeypatch.setattr(readers, "_write_mask", buggy)
    with pytest.raises(RuntimeError, match="bug"):
        store.add_case("p2", _image(2), _mask(2), "new case")
    assert os.listdir(store.cases_dir) == ["p1"]


def test_store_failed_swap_restores_old_case(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", _image(1), _mask(1), "first version")
    before = _snapshot(store.cases_dir / "p1")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(readers.os, "replace", replace)
    with pytest.raises(DatasetError, match="p1"):
        store.add_case("p1", _image(2), _mask(2), "second version")
    monkeypatch.setattr(readers.os, "replace", real_replace)
    assert _snapshot(store.cases_dir / "p1") == before
    assert os.listdir(store.cases_dir) == ["p1"]
    # A successful overwrite replaces every file, including a format change PNG -> TIFF.
    c = store.add_case("p1", _image(2, np.uint16), _mask(2), "second version")
    assert sorted(os.listdir(store.cases_dir / "p1")) == ["image.tif", "mask.png", "meta.json", "note.txt"]
    assert store.cases() == [c]


def test_store_recovers_backup_orphaned_by_crash(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", _image(1), _mask(1), "kept")
    # Simulate a crash between "move old aside" and "move new into place".
    os.replace(store.cases_dir / "p1", store.cases_dir / ".old-p1-0123abcd")
    assert store.cases() == []
    store2 = AnnotationStore(tmp_path / "ann")
    assert [c.note for c in store2.cases()] == ["kept"]
    assert os.listdir(store2.cases_dir) == ["p1"]
