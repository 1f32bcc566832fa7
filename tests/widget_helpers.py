"""What the napari widget tests share: where screenshots go, the sample's name, a clock on
the event loop, and a Segment widget docked and pointed at a checkpoint."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qtpy.QtCore import QTimer

from napari_causalseg.engine.model_sources import CHECKPOINT
from napari_causalseg.widgets import SegmentWidget

ARTIFACTS = Path(os.environ.get("CAUSALSEG_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
SAMPLE = "synthetic chest X-ray"


class TickRecorder:
    """Longest gap between 10 ms timer ticks: how long the event loop was blocked."""

    def __init__(self):
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def max_gap_until(self, until: float = float("inf")) -> float:
        ticks = [t for t in self.ticks if t <= until]
        return max((b - a for a, b in zip(ticks, ticks[1:])), default=0.0)

    @property
    def max_gap(self) -> float:
        return self.max_gap_until()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()


def segment_and_wait(qtbot, widget: SegmentWidget, timeout: int = 120_000):
    worker = widget.segment()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget._workers, timeout=timeout)
    return worker


def prepared_widget(viewer, checkpoint: Path) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    SegmentWidget._test_instances.append(widget)
    viewer.window.add_dock_widget(widget, name="Segment from note")
    widget.checkpoint.value = checkpoint
    widget.model.value = CHECKPOINT
    widget.device.value = "cpu"
    return widget
