"""`python -m napari_causalseg`: the main job. Opens napari with both widgets docked, the
sample radiograph loaded and its note filled in, on the demo model (trained on first use,
with a progress bar in the terminal). Without a display it says so and points to the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_causalseg", description=__doc__)
    parser.add_argument("--screenshot", default=None,
                        help="segment once, save a screenshot of the viewer to this PNG and quit")
    args = parser.parse_args(argv)
    if not has_display():
        print("napari-causalseg: no display found (DISPLAY is not set), so napari cannot open.\n"
              "Segment from the command line instead, e.g.\n"
              "  causalseg synth demo-data --count 20\n"
              "  causalseg segment demo-data/Test_Folder/img/*.png --note "
              "'Unilateral pulmonary infection, one infected area, lower right lung.' --out masks/\n"
              "or run this under a virtual display: xvfb-run -a python -m napari_causalseg",
              file=sys.stderr)
        return 2

    from .engine.demo import demo_checkpoint

    demo_checkpoint(progress=True)  # first use: train in the terminal, before the GUI opens

    import napari

    from .widgets import FineTuneWidget, SegmentWidget

    viewer = napari.Viewer(title="napari-causalseg")
    viewer.open_sample("napari-causalseg", "synthetic_chest_xray")
    segment = SegmentWidget(viewer)
    finetune = FineTuneWidget(viewer, segment_widget=segment)
    segment_dock = viewer.window.add_dock_widget(segment, name="Segment from note", area="right")
    viewer.window.add_dock_widget(finetune, name="Fine-tune", area="right", tabify=True)
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, segment_dock.raise_)  # the tab a new user needs first, once docked
    if args.screenshot:
        return _screenshot_and_quit(viewer, segment, args.screenshot)
    napari.run()
    return 0


def _screenshot_and_quit(viewer, segment, path: str) -> int:
    """One Segment click, then a picture of the whole window (used to check the demo)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    worker = segment.segment()
    outcome = {"rc": 1}

    def done() -> None:
        viewer.reset_view()
        from PIL import Image

        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
        print(f"screenshot saved to {path}")
        outcome["rc"] = 0
        QTimer.singleShot(200, viewer.close)

    worker.finished.connect(lambda: QTimer.singleShot(500, done))
    QApplication.instance().exec()
    return outcome["rc"]


if __name__ == "__main__":
    sys.exit(main())
