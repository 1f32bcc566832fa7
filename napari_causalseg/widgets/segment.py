""""Segment from note": pick an X-ray, type (or compose) the note, get the lesion mask.

All model work runs in napari thread workers; layers are touched only in the
workers' `returned`/`yielded` handlers, which napari runs on the main thread.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    TextEdit,
)
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from superqt.utils import ensure_main_thread

from ..engine.agreement import check_agreement
from ..engine.device import available_devices
from ..engine.model_sources import (
    CHECKPOINT,
    DEMO,
    OPENAI,
    SOURCE_LABELS,
    ModelSource,
    open_segmenter,
)
from ..engine.notes import SIDES, ZONES, make_note
from ..engine.progress import RUN_STEPS, EventBar
from ..engine.segmenter import SegmenterConfig
from ._layers import (
    LESION_SUFFIX,
    NOTE_KEY,
    SOURCE_KEY,
    find_layer,
    image_array,
    rethreshold,
    show_result,
)

if TYPE_CHECKING:
    import napari.viewer


def _cheap_to_open(source: ModelSource) -> bool:
    """A local checkpoint (or the cached demo): no training, no download."""
    if source.kind == CHECKPOINT:
        return source.path is not None and Path(source.path).is_file()
    if source.kind == DEMO:
        from ..engine.demo import demo_checkpoint_path

        return demo_checkpoint_path().is_file()
    return False


class SegmenterHolder:
    """The current Segmenter, (re)opened on demand; safe to call from workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self.segmenter = None
        self.checkpoint: Path | None = None
        self.label = ""

    def is_loaded(self, source: ModelSource, device: str) -> bool:
        return self.segmenter is not None and self._key == (source, device)

    def get(self, source: ModelSource, device: str, on_progress=None):
        key = (source, device)
        with self._lock:
            # a checkpoint rewritten in place since it was loaded is loaded again
            if self.segmenter is None or self._key != key or self.segmenter.weights_file_rewritten():
                if self.segmenter is not None and self.segmenter.prefetch is not None:
                    self.segmenter.prefetch.cancel()
                # prefetch: after the first prompt, every QaTa note's text feature in the
                # background, so that picking zones re-prompts without the text encoder
                self.segmenter, self.checkpoint = open_segmenter(  # never trains in napari
                    source, SegmenterConfig(device=device, prefetch_notes=True),
                    progress=on_progress or False, train_in_child=True,
                )
                self._key, self.label = key, source.label
            return self.segmenter


class SegmentWidget(Container):
    """Dock widget: image + note -> lesion Labels layer and confounder map."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.models = SegmenterHolder()
        self.results: dict[str, Any] = {}  # image layer name -> last SegmentationResult
        self.agreements: dict[str, Any] = {}  # image layer name -> (note, its ZoneAgreement)
        self._workers: set[Any] = set()
        self._prefilled_note = ""

        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.note = TextEdit(label="Note", value="")
        self.note.native.setPlaceholderText(
            "e.g. Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
        )
        self.note.native.setMaximumHeight(80)
        self.zone_boxes = {
            (side, zone): CheckBox(text=zone, value=False) for side in SIDES for zone in ZONES
        }
        rows = [
            Container(widgets=[self.zone_boxes[(side, z)] for z in ZONES], layout="horizontal",
                      label=f"{side.capitalize()} lung (image {side})", labels=False)
            for side in SIDES
        ]
        self.compose = PushButton(text="Compose note from zones")
        self.model = ComboBox(label="Model", choices=[(SOURCE_LABELS[k], k) for k in (DEMO, OPENAI, CHECKPOINT)],
                              value=DEMO)
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors", visible=False)
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.01, value=0.5)
        self.run_button = PushButton(text="Segment")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock over the canvas
        self.extend([self.image, self.note, *rows, self.compose, self.model, self.checkpoint,
                     self.device, self.threshold, self.run_button, self.status])

        self.compose.changed.connect(self.compose_note)
        self.model.changed.connect(self._model_changed)
        self.checkpoint.changed.connect(lambda _: self._prefetch())
        self.device.changed.connect(lambda _: self._prefetch())
        self.image.changed.connect(self._image_changed)
        self.threshold.changed.connect(self._threshold_changed)
        self.run_button.changed.connect(lambda _: self.segment())
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                      viewer.layers.events.reordered):
            event.connect(self._refresh_images)
        self._refresh_images()

    # choices -------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and SOURCE_KEY not in layer.metadata]

    def _refresh_images(self, event: Any = None) -> None:
        """Keep the picker in sync; a newly added image becomes the chosen one."""
        from napari.layers import Image

        if getattr(event, "type", "") == "removed":  # a closed image's maps go with it
            self.results.pop(getattr(event.value, "name", None), None)
        self.image.reset_choices()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if isinstance(added, Image) and SOURCE_KEY not in added.metadata:
            self.image.value = added
        elif self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    def model_source(self) -> ModelSource:
        kind = self.model.value
        path = Path(self.checkpoint.value) if kind == CHECKPOINT and str(self.checkpoint.value) not in ("", ".") else None
        return ModelSource(kind, path)

    def set_note(self, note: str) -> None:
        """Show the note of the image at hand (e.g. a data set's caption); like a note from
        layer metadata, the next image's note replaces it unless the user edits it."""
        self.note.value = note
        self._prefilled_note = note

    def use_checkpoint(self, path: str | Path) -> None:
        """Swap in a checkpoint (e.g. from the Fine-tune widget) for the next Segment."""
        self.checkpoint.value = Path(path)
        self.model.value = CHECKPOINT
        show_info(f"Segment from note now uses {Path(path).name}")

    # reactions -----------------------------------------------------------------
    def _model_changed(self, kind: str) -> None:
        self.checkpoint.visible = kind == CHECKPOINT
        self._prefetch()

    def _image_changed(self, layer: Any) -> None:
        if layer is None:
            return
        note = layer.metadata.get(NOTE_KEY) if hasattr(layer, "metadata") else None
        current = self.note.value.strip()
        if note and (not current or current == self._prefilled_note):
            self.note.value = note
            self._prefilled_note = note
        self._prefetch()

    def compose_note(self, _=None) -> str:
        zones = [sz for sz, box in self.zone_boxes.items() if box.value]
        if not zones:
            show_error("Tick at least one lung zone to compose a note.")
            return ""
        self.note.value = make_note(zones)
        return self.note.value

    def _threshold_changed(self, value: float) -> None:
        layer = self.image.value
        if layer is None or layer.name not in self.results:
            return
        result = self.results[layer.name]
        labels = find_layer(self.viewer, layer.name + LESION_SUFFIX)
        if labels is not None and not rethreshold(labels, result.probability, value):
            self.status.value = "Lesion layer was edited by hand: threshold not applied"
        elif labels is not None and layer.name in self.agreements:  # the mask changed: check again
            note = self.agreements[layer.name][0]
            self._set_status(self._check_zones(layer, np.asarray(labels.data) > 0, note))

    # work ----------------------------------------------------------------------
    def _start(self, worker: Any) -> Any:
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()
        return worker

    def _progress_handler(self):
        """Callback for the first-use demo training: called from the worker thread,
        delivered on the main thread, shown as a napari progress bar."""
        bar = EventBar(lambda total, desc: progress(total=total, desc=desc), RUN_STEPS,
                       "Training the demo model in the background (first use only)")

        @ensure_main_thread
        def on_event(event: dict[str, Any]) -> None:  # from the child process (finetune_process)
            bar.feed(event)

        return on_event

    def _prefetch(self) -> Any | None:
        """Compute image features in the background as soon as an image is chosen."""
        layer = self.image.value
        if layer is None:
            return None
        try:
            image = image_array(layer)
            source = self.model_source()
        except ValueError:
            return None
        device = self.device.value
        if not self.models.is_loaded(source, device) and not _cheap_to_open(source):
            return None  # first-use demo training or a download waits for an explicit Segment
        on_event = self._progress_handler()

        @thread_worker(ignore_errors=True)  # errors are shown by our own handlers
        def work():
            self.models.get(source, device, on_progress=on_event).image_features(image)

        worker = work()
        worker.errored.connect(lambda exc: self._report(exc, "Loading the model failed"))
        self.status.value = "Preparing image features…"
        worker.returned.connect(lambda _: self._set_status("Ready"))
        return self._start(worker)

    def segment(self) -> Any | None:
        """Segment the chosen image from the note; returns the worker (tests wait on it)."""
        try:
            layer = self.image.value
            image = image_array(layer)
            note = self.note.value
            if not note.strip():
                raise ValueError("type the radiology note first (or compose one from the lung zones)")
            source = self.model_source()
        except ValueError as exc:
            show_error(str(exc))
            return None
        device, threshold = self.device.value, self.threshold.value
        on_event = self._progress_handler()

        @thread_worker(ignore_errors=True)  # errors are shown by our own handlers
        def work():
            return self.models.get(source, device, on_progress=on_event).segment(image, note, threshold)

        worker = work()
        worker.returned.connect(lambda result: self._show(layer, result, note))
        worker.errored.connect(lambda exc: self._report(exc, "Segmentation failed"))
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.run_button.enabled = False
        self.status.value = "Segmenting…"
        return self._start(worker)

    def _show(self, layer: Any, result: Any, note: str) -> None:
        if layer not in self.viewer.layers:
            return  # the image was closed while the model ran
        self.results[layer.name] = result
        labels, _, protected = show_result(self.viewer, layer, result, self.models.label)
        if protected:
            show_info(f"'{layer.name} lesion' was edited by hand, so it was kept; "
                      f"the new mask is in '{labels.name}'.")
        if result.dropped:
            show_info(f"The note was cut to fit the model; dropped: '{result.dropped}'")
        fraction = float(np.mean(result.mask))
        zones = self._check_zones(layer, result.mask, note, warn=True)
        self._set_status(f"Lesion covers {fraction:.1%} of the image; {zones}")

    def _check_zones(self, layer: Any, mask: np.ndarray, note: str, warn: bool = False) -> str:
        """Compare the mask's lung zones with the note (engine/agreement.py); a napari
        warning when they disagree. Returns the line for the status."""
        try:
            agreement = check_agreement(mask, note, image=image_array(layer))
        except ValueError as exc:
            return f"lung zones not checked: {exc}"
        self.agreements[layer.name] = (note, agreement)
        if warn and agreement.checked and not agreement.agrees:
            show_warning(f"Mask and note disagree: {agreement.summary}")
        return agreement.summary

    def _set_status(self, text: str) -> None:
        with contextlib.suppress(RuntimeError):  # the dock may be closed while a worker ran
            self.status.value = text

    def _report(self, exc: BaseException, what: str) -> None:
        self._set_status(f"{what}: {exc}")
        show_error(f"{what}: {exc}")
