"""The worklist engine: which images a source gives, states, saving, resuming, crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_causalseg.engine.data.cases import DatasetError, load_mask
from napari_causalseg.engine.data.layouts import open_dataset
from napari_causalseg.engine.worklist import (
    AlreadySavedError,
    ItemState,
    ScanConfig,
    Worklist,
    WorklistError,
)

from .dicom_files import make_dicom

NOTE = "Unilateral pulmonary infection, one infected area, lower right lung."
DICOM_NAME = "1.2.840.113619.2.55"  # UID-named, no extension
STUDY_KEYS = ["img2.png", "img10.png", "scan.tif", f"series/{DICOM_NAME}"]


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_study(root: Path) -> Path:
    """PNGs named for natural sorting, a 16-bit TIFF, an extension-less DICOM in a subfolder,
    and things a worklist must skip."""
    yy, xx = np.mgrid[0:40, 0:48]
    _png(root / "img10.png", (xx * 5 % 256).astype(np.uint8))
    _png(root / "img2.png", (yy * 6 % 256).astype(np.uint8))
    tifffile.imwrite(root / "scan.tif", (xx * yy * 20).astype(np.uint16))
    (root / "series").mkdir(parents=True)
    make_dicom(root / "series" / DICOM_NAME, (xx * 50).astype(np.uint16))
    (root / "README.txt").write_text("not an image")
    report = make_dicom(root / "series" / "report", (xx * 50).astype(np.uint16))
    import pydicom

    ds = pydicom.dcmread(report)  # a DICOM object without an image, as PACS exports hold
    for tag in ("Rows", "Columns", "PixelData"):
        delattr(ds, tag)
    ds.save_as(report)
    _png(root / ".hidden.png", np.zeros((4, 4), np.uint8))
    _png(root / "mask_img2.png", np.zeros((40, 48), np.uint8))
    _png(root / "labelcol" / "mask_img10.png", np.zeros((40, 48), np.uint8))
    return root


def make_sgseg(root: Path, n: int = 3) -> Path:
    """A small SGSeg-layout data set whose captions differ per image."""
    ann = {"train": [], "test": []}
    for split, names in (("train", [f"covid_{i}.png" for i in range(1, n + 1)]), ("test", ["t_1.png"])):
        for k, name in enumerate(names):
            d = root / "images" / split
            _png(d / "images" / name, np.full((32, 32), 20 + k, np.uint8))
            _png(d / "masks" / f"mask_{name}", np.zeros((32, 32), np.uint8))
            ann[split].append({"image_path": f"mask_{name}", "caption": f"{NOTE} ({split} {k})"})
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "annotation.json").write_text(json.dumps(ann))
    return root


def box_mask(shape, k: int = 0) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[5 + k:15 + k, 10:30] = 1
    return m


@pytest.fixture
def study(tmp_path) -> Path:
    return make_study(tmp_path / "study")


@pytest.fixture
def ann(tmp_path) -> Path:
    return tmp_path / "annotations"


def test_folder_gives_every_readable_image_in_natural_order(study):
    inner_ann = study / "annotations"  # the annotation folder may sit inside the study
    wl = Worklist.open(study, inner_ann)
    first = wl.save(box_mask((40, 48)), NOTE)
    assert first.image_path.is_relative_to(inner_ann)
    again = Worklist.open(study, inner_ann)
    assert [i.key for i in again.items] == STUDY_KEYS  # the saved case's image.png is not listed
    assert again.kind == "folder" and all(i.caption == "" for i in again.items)
    assert again.items[3].name == DICOM_NAME and again.items[0].name == "img2"
    assert again.items[0].state is ItemState.SAVED
    assert len(again.warnings) == 1 and "1 DICOM file(s)" in again.warnings[0]


def test_data_set_captions_become_notes(tmp_path, ann):
    make_sgseg(tmp_path / "data" / "QaTa")
    wl = Worklist.open(tmp_path / "data", ann)  # the data set one level below
    assert wl.kind == "dataset" and wl.layout == "sgseg"
    assert [i.key for i in wl.items] == [
        "QaTa/images/train/images/covid_1.png", "QaTa/images/train/images/covid_2.png",
        "QaTa/images/train/images/covid_3.png", "QaTa/images/test/images/t_1.png"]
    assert wl.items[1].caption == f"{NOTE} (train 1)" and wl.items[3].caption == f"{NOTE} (test 0)"
    folder = Worklist.open(tmp_path / "data", ann, ScanConfig(kind="folder"))
    assert folder.kind == "folder" and len(folder.items) == 4  # masks folders skipped


def test_states_counts_and_navigation(study, ann):
    wl = Worklist.open(study, ann)
    assert wl.index == 0 and wl.progress_text() == "0 of 4 saved"
    assert wl.mark(ItemState.SEGMENTED) is ItemState.SEGMENTED
    assert wl.mark(ItemState.CORRECTED) is ItemState.CORRECTED
    assert wl.next() and wl.current.key == "img10.png"
    assert wl.previous() and wl.index == 0
    assert not wl.previous()
    wl.go(3)
    assert not wl.next() and wl.index == 3
    with pytest.raises(WorklistError, match="No image 5"):
        wl.go(4)
    with pytest.raises(WorklistError):
        wl.mark(ItemState.SAVED)
    counts = wl.counts()
    assert counts[ItemState.CORRECTED] == 1 and counts[ItemState.NEW] == 3


def test_saving_adds_a_training_case_and_a_fresh_worklist_resumes(study, ann):
    wl = Worklist.open(study, ann)
    masks = {}
    for k in range(2):
        masks[wl.current.key] = box_mask((40, 48), k)
        case = wl.save(masks[wl.current.key], NOTE)
        assert wl.current.state is ItemState.SAVED and case.note == NOTE
        wl.next()
    assert wl.progress_text() == "2 of 4 saved" and wl.index == 2
    assert wl.state_path.parent == ann / "worklists" and wl.state_path.is_file()

    again = Worklist.open(study, ann)  # a new session
    assert again.index == 2 and again.current.key == "scan.tif"
    assert [i.state for i in again.items] == [ItemState.SAVED] * 2 + [ItemState.NEW] * 2
    assert again.progress_text() == "2 of 4 saved"
    again.go(1)
    np.testing.assert_array_equal(again.mask(), masks["img10.png"] > 0)

    ds = open_dataset(ann)  # ready for fine-tuning, each case with its split
    cases = ds.train + ds.val
    assert len(cases) == 2 and {c.note for c in cases} == {NOTE}
    meta = json.loads((cases[0].image_path.parent / "meta.json").read_text())
    assert meta["split"] in ("train", "val") and meta["worklist"]["image"] in masks


def test_saving_a_16_bit_tiff_and_a_dicom_keeps_their_values(study, ann):
    wl = Worklist.open(study, ann)
    wl.go(2)
    tif = wl.save(box_mask((40, 48)), NOTE)
    assert tif.image_path.name == "image.tif"
    np.testing.assert_array_equal(tifffile.imread(tif.image_path), tifffile.imread(study / "scan.tif"))
    wl.go(3)
    dcm = wl.save(box_mask((40, 48)), NOTE)
    assert load_mask(dcm.mask_path).sum() == 200


def test_a_saved_correction_is_never_overwritten(study, ann):
    wl = Worklist.open(study, ann)
    case = wl.save(box_mask((40, 48)), NOTE)
    before = case.mask_path.read_bytes()
    with pytest.raises(AlreadySavedError, match="never overwritten") as err:
        wl.save(np.ones((40, 48), np.uint8), "another note")
    assert str(case.image_path.parent) in str(err.value)
    assert case.mask_path.read_bytes() == before
    fresh = Worklist.open(study, ann)  # the same through a new session
    with pytest.raises(AlreadySavedError):
        fresh.save(np.ones((40, 48), np.uint8), NOTE)
    assert case.mask_path.read_bytes() == before and len(fresh.store.cases()) == 1
    import shutil

    shutil.rmtree(case.image_path.parent)  # what the message says to do to redo an image
    redo = Worklist.open(study, ann)
    assert redo.current.state is ItemState.NEW
    assert load_mask(redo.save(np.ones((40, 48), np.uint8), NOTE).mask_path).all()


def test_unsaved_masks_are_kept_with_their_state(study, ann):
    wl = Worklist.open(study, ann)
    wl.mark(ItemState.CORRECTED)
    wl.keep_draft(box_mask((40, 48), 3))
    wl.next()
    wl.mark(ItemState.SEGMENTED)
    wl.keep_draft(box_mask((40, 48), 1))
    again = Worklist.open(study, ann)
    assert [i.state for i in again.items[:3]] == [ItemState.CORRECTED, ItemState.SEGMENTED, ItemState.NEW]
    again.go(0)
    np.testing.assert_array_equal(again.mask(), box_mask((40, 48), 3) > 0)
    again.save(again.mask(), NOTE)
    assert not again.drafts.has("img2.png")  # the draft goes once the case is saved


def test_a_crash_between_case_and_state_loses_nothing(study, ann, monkeypatch):
    from napari_causalseg.engine.worklist import worklist as module

    wl = Worklist.open(study, ann)
    wl.mark(ItemState.CORRECTED)

    def crash(*_a, **_k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(module, "write_state", crash)
    with pytest.raises(KeyboardInterrupt):
        wl.save(box_mask((40, 48)), NOTE)
    monkeypatch.undo()
    again = Worklist.open(study, ann)
    assert again.items[0].state is ItemState.SAVED and again.progress_text() == "1 of 4 saved"
    with pytest.raises(AlreadySavedError):  # and no second case for the same image
        again.save(box_mask((40, 48)), NOTE)


def test_a_crash_while_writing_the_case_leaves_the_draft(study, ann, monkeypatch):
    from napari_causalseg.engine.data import annotations

    wl = Worklist.open(study, ann)
    wl.mark(ItemState.CORRECTED)
    wl.keep_draft(box_mask((40, 48)))

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(annotations, "_write_mask", disk_full)
    with pytest.raises(DatasetError, match="No space left"):
        wl.save(box_mask((40, 48)), NOTE)
    monkeypatch.undo()
    assert wl.store.cases() == [] and not any(p.name.startswith(".") for p in wl.store.cases_dir.iterdir())
    again = Worklist.open(study, ann)
    assert again.current.state is ItemState.CORRECTED
    np.testing.assert_array_equal(again.mask(), box_mask((40, 48)) > 0)


def test_a_damaged_state_file_is_set_aside_and_progress_rebuilt(study, ann):
    wl = Worklist.open(study, ann)
    wl.save(box_mask((40, 48)), NOTE)
    wl.next()
    wl.mark(ItemState.CORRECTED)
    wl.keep_draft(box_mask((40, 48), 2))
    wl.state_path.write_text('{"version": 1, "items": ')  # truncated by hand or by a bad disk
    again = Worklist.open(study, ann)
    damaged = [text for text in again.warnings if text.startswith("The worklist state")]
    assert len(damaged) == 1 and "progress was rebuilt" in damaged[0]
    backups = list(wl.state_path.parent.glob("*.corrupt-*.json"))
    assert len(backups) == 1 and backups[0].read_text() == '{"version": 1, "items": '
    assert [i.state for i in again.items[:2]] == [ItemState.SAVED, ItemState.CORRECTED]
    assert again.index == 1  # the first unsaved image
    assert json.loads(wl.state_path.read_text())["version"] == 1  # a good file again


def test_the_source_is_never_written(study, ann):
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
    wl = Worklist.open(study, ann)
    wl.save(box_mask((40, 48)), NOTE)
    wl.next()
    wl.keep_draft(box_mask((40, 48)))
    assert {p: p.stat().st_mtime_ns for p in study.rglob("*")} == before


def test_clear_errors(tmp_path, study, ann):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorklistError, match="holds no image"):
        Worklist.open(tmp_path / "empty", ann)
    with pytest.raises(WorklistError, match="not a folder"):
        Worklist.open(tmp_path / "missing", ann)
    Worklist.open(study, ann)
    with pytest.raises(WorklistError, match="inside the annotation folder"):
        Worklist.open(ann / "cases", ann)
    with pytest.raises(WorklistError, match="Choose the annotation folder"):
        Worklist.open(study, "")
    with pytest.raises(WorklistError, match="more than 2 images"):
        Worklist.open(study, ann, ScanConfig(max_items=2))
    wl = Worklist.open(study, ann)
    with pytest.raises(WorklistError, match="differ in size"):
        wl.save(np.ones((10, 10), np.uint8), NOTE)
    with pytest.raises(DatasetError, match="note is empty"):
        wl.save(box_mask((40, 48)), "  ")
    assert wl.current.state is ItemState.NEW
