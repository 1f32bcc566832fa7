"""The annotation folder (data/annotations.py): read back as a layout with stored splits,
and the AnnotationStore's atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_causalseg.engine.data import annotations
from napari_causalseg.engine.data.annotations import AnnotationStore, safe_case_name
from napari_causalseg.engine.data.cases import DatasetError, load_case, load_image, load_mask
from napari_causalseg.engine.data.layouts import open_dataset

from .data_folders import H, W, case_image, case_mask, raises_naming

# --------------------------------------------------------------------------- annotation folder


def test_annotations_layout(ann_root):
    ds = open_dataset(ann_root)
    assert ds.layout == "annotations"
    assert [c.name for c in ds.train] == ["case0", "case1", "case2", "case3"]
    assert [c.name for c in ds.val] == ["case4"]
    assert [c.name for c in ds.test] == ["held_out"]
    image, mask = load_case(ds.test[0])
    np.testing.assert_array_equal(image, case_image(7))
    np.testing.assert_array_equal(mask, case_mask(3))
    # A folder made by hand (name not in the sanitised form) is read as it is, meta included.
    (ann_root / "cases" / "held_out").rename(ann_root / "cases" / "held out (copy)")
    ds = open_dataset(ann_root)
    assert [c.name for c in ds.test] == ["held out (copy)"]


def test_annotation_folder_errors(ann_root):
    case_dir = ann_root / "cases" / "case2"
    (case_dir / "note.txt").write_text("  \n")
    raises_naming(case_dir / "note.txt", ann_root, match="is empty")
    (case_dir / "note.txt").write_text("ok")
    (case_dir / "mask.png").unlink()
    raises_naming(case_dir, ann_root, match="no mask.png")
    (case_dir / "image.png").unlink()
    raises_naming(case_dir, ann_root, match="no image.png")
    case_dir.rename(ann_root / "cases" / ".hidden")  # hidden folders are not cases
    (ann_root / "cases" / "case3" / "meta.json").write_text('{"split": "holdout"}')
    raises_naming(ann_root / "cases" / "case3" / "meta.json", ann_root, match="unknown split")
    (ann_root / "cases" / "case3" / "meta.json").write_text("[")
    raises_naming(ann_root / "cases" / "case3" / "meta.json", ann_root, match="Cannot read JSON")


# --------------------------------------------------------------------------- annotation store


def test_store_round_trip(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    c8 = store.add_case("a", case_image(1), case_mask(1), "  note a \n", meta={"split": "val", "by": "me"})
    assert c8.image_path.name == "image.png" and c8.note == "note a"
    c16 = store.add_case("b", case_image(2, np.uint16) * 1000, case_mask(2), "note b")
    assert c16.image_path.name == "image.tif"
    cf = store.add_case("c", case_image(3, np.float32) / 7, case_mask(3), "note c")
    assert cf.image_path.name == "image.tif"
    assert [c.name for c in store.cases()] == ["a", "b", "c"]
    assert store.cases()[0] == c8
    np.testing.assert_array_equal(load_image(c8.image_path), case_image(1))
    np.testing.assert_array_equal(load_image(c16.image_path), case_image(2, np.uint16) * 1000)
    np.testing.assert_array_equal(load_image(cf.image_path), case_image(3, np.float32) / 7)
    assert set(np.unique(np.asarray(Image.open(c8.mask_path))).tolist()) == {0, 1}  # one convention
    np.testing.assert_array_equal(load_mask(c8.mask_path), case_mask(1))
    assert store.meta("a") == {"by": "me", "split": "val"}
    assert store.meta("b") == {"split": "train"}  # decided when added
    assert store.case("b") == c16


def test_store_rejects_bad_input(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    with pytest.raises(DatasetError, match="note is empty"):
        store.add_case("x", case_image(0), case_mask(0), "   ")
    with pytest.raises(DatasetError, match="does not match image shape"):
        store.add_case("x", case_image(0), np.zeros((H, W + 1), bool), "n")
    with pytest.raises(DatasetError, match="JSON"):
        store.add_case("x", case_image(0), case_mask(0), "n", meta={"bad": object()})
    with pytest.raises(DatasetError, match="no usable characters"):
        store.add_case("../..", case_image(0), case_mask(0), "n")
    assert store.cases() == []
    assert os.listdir(store.cases_dir) == []


def test_store_names_cannot_escape(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    c = store.add_case("../../evil/..\\x", case_image(0), case_mask(0), "n")
    assert c.image_path.parent.parent == store.cases_dir
    assert c.name == safe_case_name("../../evil/..\\x") == "evil_.._x"
    assert not (tmp_path / "evil").exists()
    assert safe_case_name("CON") == "_CON"
    assert safe_case_name("patient 7 (left)") == "patient_7_left"


def _snapshot(case_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(case_dir.iterdir())}


def test_store_overwrite_failure_keeps_old_case(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", case_image(1), case_mask(1), "first version", meta={"v": 1})
    before = _snapshot(store.cases_dir / "p1")

    def broken_mask_writer(path, mask):
        path.write_bytes(b"half a PNG")  # leave a partial file behind, then fail
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(annotations, "_write_mask", broken_mask_writer)
    with pytest.raises(DatasetError, match="previous version"):
        store.add_case("p1", case_image(2), case_mask(2), "second version")
    assert _snapshot(store.cases_dir / "p1") == before
    assert [c.note for c in store.cases()] == ["first version"]
    assert os.listdir(store.cases_dir) == ["p1"]  # no staging folder left behind

    # A non-I/O failure propagates unchanged and also leaves nothing behind.
    def buggy(path, mask):
        raise RuntimeError("bug")

    monkeypatch.setattr(annotations, "_write_mask", buggy)
    with pytest.raises(RuntimeError, match="bug"):
        store.add_case("p2", case_image(2), case_mask(2), "new case")
    assert os.listdir(store.cases_dir) == ["p1"]


def test_store_failed_swap_restores_old_case(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", case_image(1), case_mask(1), "first version")
    before = _snapshot(store.cases_dir / "p1")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(annotations.os, "replace", replace)
    with pytest.raises(DatasetError, match="p1"):
        store.add_case("p1", case_image(2), case_mask(2), "second version")
    monkeypatch.setattr(annotations.os, "replace", real_replace)
    assert _snapshot(store.cases_dir / "p1") == before
    assert os.listdir(store.cases_dir) == ["p1"]
    # A successful overwrite replaces every file, including a format change PNG -> TIFF.
    c = store.add_case("p1", case_image(2, np.uint16), case_mask(2), "second version")
    assert sorted(os.listdir(store.cases_dir / "p1")) == ["image.tif", "mask.png", "meta.json", "note.txt"]
    assert store.cases() == [c]


def test_store_recovers_backup_orphaned_by_crash(tmp_path):
    store = AnnotationStore(tmp_path / "ann")
    store.add_case("p1", case_image(1), case_mask(1), "kept")
    # Simulate a crash between "move old aside" and "move new into place".
    os.replace(store.cases_dir / "p1", store.cases_dir / ".old-p1-0123abcd")
    assert store.cases() == []
    store2 = AnnotationStore(tmp_path / "ann")
    assert [c.note for c in store2.cases()] == ["kept"]
    assert os.listdir(store2.cases_dir) == ["p1"]
