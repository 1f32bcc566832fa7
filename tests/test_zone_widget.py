"""The Segment widget tells the user when the mask and the note name different lung zones."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_causalseg.engine.segmenter import SegmentationResult  # noqa: E402
from napari_causalseg.widgets import SegmentWidget  # noqa: E402


def result_for(mask: np.ndarray, note: str) -> SegmentationResult:
    """What the segmenter hands the widget, with a chosen mask (the model is not under test)."""
    prob = mask.astype(np.float32)
    return SegmentationResult(mask=mask.astype(np.uint8), probability=prob,
                              confounder=np.zeros_like(prob), note=note.lower(), threshold=0.5)


def test_disagreement_is_a_warning_and_in_the_status_line(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-causalseg", "synthetic_chest_xray")
    image = viewer.layers["synthetic chest X-ray"]
    reference = np.asarray(viewer.layers["synthetic chest X-ray reference lesion"].data) > 0
    note = image.metadata["note"]
    widget = SegmentWidget(viewer)
    seen = len(notification_manager.records)

    widget._show(image, result_for(reference, note), note)  # the true mask: agrees
    assert "mask and note agree on the lung zones" in widget.status.value
    assert not any(r.severity == "warning" for r in notification_manager.records[seen:])

    assert note.endswith("lower left lung and lower right lung.")
    left_only = reference.copy()
    left_only[:, reference.shape[1] // 2:] = False  # the lesion of the image-right lung is gone
    widget._show(image, result_for(left_only, note), note)
    warnings = [r.message for r in notification_manager.records[seen:] if r.severity == "warning"]
    assert warnings == [("Mask and note disagree: the note names the lower right lung (image right), "
                        "the mask has nothing there")]
    assert "the mask has nothing there" in widget.status.value
    assert widget.agreements[image.name][1].agrees is False
    widget.image.value = image
    widget.threshold.value = 0.7  # a new mask from the kept probabilities is checked again
    assert widget.status.value == widget.agreements[image.name][1].summary
    assert widget.status.value.endswith("the mask has nothing there")

    widget._show(image, result_for(reference, note), "left lung looks hazy")  # free text
    assert widget.status.value.endswith("cannot check: note not in the QaTa grammar")
    assert len([r for r in notification_manager.records[seen:] if r.severity == "warning"]) == 1
