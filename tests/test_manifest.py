"""The plugin as napari sees it: a valid manifest, widgets that load through it, sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("wait_for_workers")]

from napari_causalseg.widgets import FineTuneWidget, SegmentWidget  # noqa: E402

from .widget_helpers import SAMPLE  # noqa: E402


def test_manifest_is_valid():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-causalseg"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    top = Path(__file__).parent.parent / "napari.yaml"
    assert top.resolve() == (Path(__file__).parent.parent / "napari_causalseg" / "napari.yaml").resolve()


def test_widgets_load_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-causalseg", "Segment from note")
    _, fine = viewer.window.add_plugin_dock_widget("napari-causalseg", "Fine-tune")
    assert isinstance(seg, SegmentWidget) and isinstance(fine, FineTuneWidget)
    assert fine.segment_widget is seg  # found through the dock, no global registry


def test_sample_fills_the_note(viewer_with_sample):
    widget = SegmentWidget(viewer_with_sample)
    layer = viewer_with_sample.layers[SAMPLE]
    assert widget.image.value is layer
    assert widget.note.value == layer.metadata["note"]
    assert "pulmonary infection" in widget.note.value

