"""The Worklist dock widget as a user drives it: open, next/previous, draw, save, resume, keys.

Needs a display (Xvfb in CI). Masks are drawn with the Labels layer's own brush, as a user
would; one test runs a tiny real model through "Segment from note".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("wait_for_workers")]

from qtpy.QtCore import Qt  # noqa: E402

from napari_causalseg.engine.data.annotations import AnnotationStore  # noqa: E402
from napari_causalseg.engine.data.cases import load_image, load_mask  # noqa: E402
from napari_causalseg.engine.worklist import ItemState  # noqa: E402
from napari_causalseg.widgets import FineTuneWidget, SegmentWidget, WorklistWidget  # noqa: E402

from .test_worklist import NOTE, make_sgseg, make_study  # noqa: E402
from .widget_helpers import ARTIFACTS, prepared_widget, segment_and_wait  # noqa: E402


@pytest.fixture
def study(tmp_path) -> Path:
    return make_study(tmp_path / "study")


@pytest.fixture
def ann(tmp_path) -> Path:
    return tmp_path / "annotations"


def docked_worklist(viewer, source: Path, ann: Path) -> WorklistWidget:
    widget = WorklistWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Worklist")
    widget.folder.value = ann
    widget.source.value = source
    assert widget.open() is not None
    return widget


def draw(viewer, name: str, box=(slice(5, 20), slice(8, 30)), value: int = 1):
    """Brush (or with value 0 erase) a box in '<name> lesion' (made here if the model did not)."""
    image = viewer.layers[name]
    labels = next((lyr for lyr in viewer.layers if lyr.name == f"{name} lesion"), None)
    if labels is None:
        labels = viewer.add_labels(np.zeros(image.data.shape[:2], np.uint8), name=f"{name} lesion")
    labels.brush_size = 1
    for y in range(box[0].start, box[0].stop):
        for x in range(box[1].start, box[1].stop):
            labels.paint((y, x), value)
    return labels


def test_widget_loads_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-causalseg", "Worklist")
    assert isinstance(widget, WorklistWidget)


def test_next_previous_and_the_count(make_napari_viewer, study, ann):
    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    assert [lyr.name for lyr in viewer.layers] == ["img2"]
    np.testing.assert_array_equal(viewer.layers["img2"].data, load_image(study / "img2.png"))
    assert widget.progress.value == "0 of 4 saved"
    assert widget.state.value == "new" and widget.items.value == 0
    assert not widget.prev_button.enabled
    widget.next_button.changed.emit(True)  # a click
    assert [lyr.name for lyr in viewer.layers] == ["img10"]  # the image left is closed
    assert widget.state.value == "new" and widget.items.value == 1
    widget.go(3)
    assert [lyr.name for lyr in viewer.layers] == ["1.2.840.113619.2.55"]  # extension-less DICOM
    assert viewer.layers[0].metadata["format"] == "dicom" and not widget.next_button.enabled
    assert not widget.next()
    assert widget.previous() and viewer.layers[0].name == "scan"
    assert widget.items.value == 2 and "3. scan.tif" in widget.items.native.currentText()


def test_save_and_next_writes_the_case_and_counts(make_napari_viewer, qtbot, study, ann):
    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    labels = draw(viewer, "img2")
    qtbot.waitUntil(lambda: widget.worklist.current.state is ItemState.CORRECTED, timeout=5000)
    assert "corrected (not saved)" in widget.state.value and "1 corrected" in widget.progress.value
    assert widget.save_and_next() is None  # no note anywhere yet
    assert "no note" in widget.status.value and AnnotationStore(ann).cases() == []
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment from note")
    seg.note.value = NOTE
    fine = FineTuneWidget(viewer)
    fine.folder.value = ann
    viewer.window.add_dock_widget(fine, name="Fine-tune")
    expected = np.asarray(labels.data) > 0
    case = widget.save_and_next()
    assert case is not None and case.note == NOTE
    assert fine.cases.choices == (case.name,)  # Fine-tune lists it at once
    assert WorklistWidget(viewer).folder.value == ann  # a new panel takes Fine-tune's folder
    np.testing.assert_array_equal(load_mask(case.mask_path), expected)
    np.testing.assert_array_equal(load_image(case.image_path), load_image(study / "img2.png"))
    assert widget.progress.value == "1 of 4 saved"
    assert [lyr.name for lyr in viewer.layers] == ["img10"]
    assert widget.state.value == "new" and widget.items.value == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    Image.fromarray(shot).save(ARTIFACTS / "worklist.png")
    assert shot.std() > 10


def test_a_saved_image_shows_its_case_and_is_never_overwritten(make_napari_viewer, qtbot, study, ann):
    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    draw(viewer, "img2")
    viewer.layers["img2 lesion"].metadata["note"] = NOTE
    case = widget.save_and_next()
    saved = case.mask_path.read_bytes()
    widget.previous()
    labels = viewer.layers["img2 lesion"]  # the saved mask, back as a layer
    np.testing.assert_array_equal(labels.data > 0, load_mask(case.mask_path))
    assert widget.state.value == "saved"
    assert widget.save_and_next() is None and widget.worklist.index == 1  # unchanged: just moves on
    widget.previous()
    draw(viewer, "img2", box=(slice(30, 35), slice(30, 35)))
    widget.refresh_state()
    assert "edited since" in widget.state.value
    assert widget.save_and_next() is None
    assert "never overwritten" in widget.status.value and widget.worklist.index == 0
    assert case.mask_path.read_bytes() == saved and len(AnnotationStore(ann).cases()) == 1


def test_closing_and_reopening_resumes_with_the_unsaved_mask(make_napari_viewer, qtbot, study, ann):
    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    draw(viewer, "img2")
    viewer.layers["img2 lesion"].metadata["note"] = NOTE
    widget.save_and_next()
    drawn = draw(viewer, "img10", box=(slice(2, 9), slice(3, 11))).data.copy()
    from napari.utils.key_bindings import coerce_keybinding

    assert coerce_keybinding("PageDown") in viewer.keymap
    widget.native.parent().destroyOnClose()  # the panel's close button
    assert widget.worklist is None
    assert coerce_keybinding("PageDown") not in viewer.keymap  # the keys are given back
    assert [lyr.name for lyr in viewer.layers] == ["img10", "img10 lesion"]  # left to the user

    def reopen() -> WorklistWidget:
        again = WorklistWidget(viewer)
        viewer.window.add_dock_widget(again, name="Worklist")
        again.folder.value = ann
        assert Path(again.source.value) == study.resolve()  # the last worklist, prefilled
        assert again.open() is not None
        assert again.progress.value == "1 of 4 saved · 1 corrected"
        assert again.state.value == "corrected (not saved)" and again.items.value == 1
        np.testing.assert_array_equal(viewer.layers["img10 lesion"].data, drawn)
        return again

    again = reopen()  # the open image and its mask are taken over, not opened twice
    assert again.open() is not None  # opening again in the same panel: the same
    assert again.state.value == "corrected (not saved)"
    np.testing.assert_array_equal(viewer.layers["img10 lesion"].data, drawn)
    assert [lyr.name for lyr in viewer.layers] == ["img10", "img10 lesion"]
    again.native.parent().destroyOnClose()
    for layer in list(viewer.layers):  # as after restarting napari
        viewer.layers.remove(layer)
    reopen()  # the kept mask comes back from the annotation folder
    assert [lyr.name for lyr in viewer.layers] == ["img10", "img10 lesion"]


def test_strokes_are_kept_within_seconds_in_case_napari_dies(make_napari_viewer, qtbot, study, ann):
    from napari_causalseg.engine.worklist import Worklist

    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    drawn = draw(viewer, "img2").data.copy()
    assert widget.open() is not None  # opened again at once: the strokes come along
    assert widget.state.value == "corrected (not saved)"
    np.testing.assert_array_equal(viewer.layers["img2 lesion"].data, drawn)
    draw(viewer, "img2", box=(slice(30, 32), slice(30, 32)))
    drawn = viewer.layers["img2 lesion"].data.copy()
    qtbot.waitUntil(lambda: widget.worklist.drafts.has("img2.png"), timeout=10_000)
    qtbot.waitUntil(lambda: (widget.worklist.drafts.get("img2.png") == (drawn > 0)).all(), timeout=10_000)
    after_crash = Worklist.open(study, ann)  # what a new session finds, napari never closed
    assert after_crash.current.state is ItemState.CORRECTED
    np.testing.assert_array_equal(after_crash.mask(), drawn > 0)


def test_keyboard_shortcuts_on_the_canvas(make_napari_viewer, qtbot, study, ann):
    viewer = make_napari_viewer()
    widget = docked_worklist(viewer, study, ann)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_PageDown)
    assert widget.worklist.index == 1 and viewer.layers[0].name == "img10"
    labels = draw(viewer, "img10")  # a Labels layer is now the active one: keys still work
    labels.metadata["note"] = NOTE
    assert viewer.layers.selection.active is labels
    qtbot.keyClick(canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert widget.progress.value == "1 of 4 saved" and widget.worklist.index == 2
    qtbot.keyClick(canvas, Qt.Key.Key_PageUp)
    assert widget.worklist.index == 1 and "saved" in widget.state.value


def test_data_set_captions_reach_segment_from_note(make_napari_viewer, tmp_path, ann):
    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment from note")
    widget = docked_worklist(viewer, make_sgseg(tmp_path / "QaTa"), ann)
    assert seg.note.value == f"{NOTE} (train 0)" and seg.image.value is widget.image_layer
    seg.note.value = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
    widget.next()
    assert seg.note.value == f"{NOTE} (train 1)"  # the next image's own caption


def test_segmented_then_corrected_then_saved_with_the_models_note(
    make_napari_viewer, qtbot, study, ann, tiny_checkpoint
):
    viewer = make_napari_viewer()
    seg = prepared_widget(viewer, tiny_checkpoint)
    widget = docked_worklist(viewer, study, ann)
    seg.note.value = NOTE
    segment_and_wait(qtbot, seg)
    qtbot.waitUntil(lambda: widget.worklist.current.state is ItemState.SEGMENTED, timeout=5000)
    assert "segmented by the model" in widget.state.value
    box = (slice(0, 3), slice(0, 3))
    draw(viewer, "img2", box=box, value=0 if viewer.layers["img2 lesion"].data[box].any() else 1)
    qtbot.waitUntil(lambda: widget.worklist.current.state is ItemState.CORRECTED, timeout=5000)
    note = viewer.layers["img2 lesion"].metadata["note"]
    case = widget.save_and_next()
    assert case is not None and case.note == note
    assert "img2" not in seg.results  # the closed image's probability map is let go
