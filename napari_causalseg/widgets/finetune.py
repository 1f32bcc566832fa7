""""Fine-tune": save corrected cases at once, then fine-tune in a child process.

Every "Add case" writes the image, the corrected mask and the note to the annotation
folder immediately (atomically), so a crash never loses a correction; the case's split
(every fifth case is held out for validation) is decided then and never changes.
Training runs the engine's fine-tuning workflow (engine/finetune.py) in a separate Python
process: napari never builds an optimizer, a crash of the run (segfault, out of memory,
kill) becomes a notification, and the run's memory goes back to the system when it ends.
Cancel stops it between steps and keeps the previous model. A finished run is a new
checkpoint in <folder>/models/ beside the earlier ones (rollback = pick an older file),
swapped into "Segment from note" unless validation showed it is worse.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
)
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from ..engine.data.annotations import AnnotationStore, safe_case_name
from ..engine.data.cases import Case
from ..engine.finetune import FinetuneConfig
from ..engine.finetune_process import FinetuneCrashed, FinetuneFailed, FinetuneProcess
from ..engine.images import to_gray
from ..engine.model_sources import CHECKPOINT, DEMO
from ..engine.progress import EPOCHS, EventBar
from ._layers import NOTE_KEY, SOURCE_KEY, image_array

if TYPE_CHECKING:
    import napari.viewer


def default_annotation_dir() -> Path:
    """In the user data directory, never the working directory."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-causalseg")) / "annotations"


class FineTuneWidget(Container):
    """Dock widget: collect corrected cases and fine-tune the current model on them."""

    def __init__(self, viewer: napari.viewer.Viewer, segment_widget: Any | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._segment_widget = segment_widget
        self.worker: Any | None = None
        self.process: FinetuneProcess | None = None
        self.last_checkpoint: Path | None = None
        self.last_result: dict[str, Any] | None = None

        self.folder = FileEdit(label="Annotation folder", mode="d", value=default_annotation_dir())
        self.image = ComboBox(label="Image", choices=self._layers_of("Image"), nullable=True)
        self.labels = ComboBox(label="Corrected mask", choices=self._layers_of("Labels"), nullable=True)
        self.add_button = PushButton(text="Add case")
        self._case_choices: list[tuple[str, str]] = []
        # a callable: napari resets a docked widget's choices on every layer change
        self.cases = Select(label="Cases", choices=lambda _w=None: self._case_choices, allow_multiple=True)
        self.minutes = FloatSpinBox(label="Time budget (min)", min=0.5, max=24 * 60, step=0.5, value=5.0)
        self.epochs = SpinBox(label="Epochs", min=0, max=2000, value=0)
        self.epochs.native.setSpecialValueText("auto (the time budget decides)")
        self.lr = FloatSpinBox(label="Learning rate", min=0.0, max=1e-1, step=1e-5, value=0.0)
        self.lr.native.setDecimals(7)
        self.lr.native.setSpecialValueText("auto")
        self.lam = FloatSpinBox(label="Lambda (L_s weight)", min=0.0, max=1.0, step=0.01, value=0.05)
        self.freeze = ComboBox(label="Freeze CLIP encoders",
                               choices=[("auto", None), ("yes", True), ("no", False)], value=None)
        self.start_button = PushButton(text="Start fine-tuning")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock over the canvas
        self.extend([self.folder, self.image, self.labels, self.add_button, self.cases, self.minutes,
                     self.epochs, self.lr, self.lam, self.freeze, self.start_button,
                     self.cancel_button, self.status])

        self.add_button.changed.connect(lambda _: self.add_case())
        self.start_button.changed.connect(lambda _: self.start())
        self.cancel_button.changed.connect(lambda _: self.cancel())
        self.folder.changed.connect(lambda _: self.refresh_cases())
        self.image.changed.connect(self._pair_labels)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                      viewer.layers.events.reordered):
            event.connect(lambda _e: self._reset_layer_choices())
        self._reset_layer_choices()
        self.refresh_cases()

    # layers ------------------------------------------------------------------
    def _layers_of(self, kind: str):
        def choices(_widget=None) -> list[tuple[str, Any]]:
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

        return choices

    def _reset_layer_choices(self) -> None:
        self.image.reset_choices()
        self.labels.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]
        self._pair_labels(self.image.value)

    def _pair_labels(self, image_layer: Any) -> None:
        """Pick "<image> lesion" (the newest one) for the chosen image when there is one."""
        if image_layer is None:
            return
        from napari.layers import Labels

        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, Labels) and layer.metadata.get(SOURCE_KEY, {}).get("image") == image_layer.name:
                self.labels.value = layer
                return

    @property
    def segment_widget(self) -> Any | None:
        """The "Segment from note" widget of this viewer (linked or found in the dock)."""
        if self._segment_widget is None:
            from .segment import SegmentWidget

            window = getattr(self.viewer, "window", None)
            docks = getattr(window, "dock_widgets", {}) if window is not None else {}
            for widget in docks.values():
                if isinstance(widget, SegmentWidget):
                    self._segment_widget = widget
                    break
        return self._segment_widget

    # cases -------------------------------------------------------------------
    @property
    def store(self) -> AnnotationStore:
        return AnnotationStore(Path(self.folder.value))

    def refresh_cases(self) -> list[Case]:
        try:
            cases = self.store.cases()
        except (ValueError, OSError) as exc:
            self.status.value = f"Annotation folder unusable: {exc}"
            return []
        splits = self.store.splits()
        self._case_choices = [(f"{c.name} (validation)" if splits[c.name] == "val" else c.name, c.name)
                              for c in cases]
        self.cases.reset_choices()
        self.status.value = f"{len(cases)} case(s) in {self.folder.value}"
        return cases

    def _note_for(self, image_layer: Any, labels_layer: Any) -> str:
        for meta in (labels_layer.metadata, labels_layer.metadata.get(SOURCE_KEY, {}), image_layer.metadata):
            if meta.get(NOTE_KEY):
                return meta[NOTE_KEY]
        widget = self.segment_widget
        if widget is not None and widget.note.value.strip():
            return widget.note.value
        raise ValueError("no note for this case: segment it from a note first, or type one in "
                         "'Segment from note'")

    def add_case(self) -> Case | None:
        """Write the chosen image, its corrected mask and note to the folder at once."""
        try:
            image_layer, labels_layer = self.image.value, self.labels.value
            if labels_layer is None:
                raise ValueError("choose the corrected Labels layer (the lesion mask)")
            image = image_array(image_layer)
            image = to_gray(image, image_layer.name)  # RGB -> luminance, as cases are read back
            mask = np.asarray(labels_layer.data) > 0
            if mask.shape != image.shape[:2]:
                raise ValueError(f"the mask {mask.shape} and the image {image.shape[:2]} differ in size")
            note = self._note_for(image_layer, labels_layer)
            store = self.store
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            taken = {c.name for c in store.cases()}
            name, i = safe_case_name(f"{image_layer.name}-{stamp}"), 1
            while name in taken:  # several corrections within one second
                i += 1
                name = safe_case_name(f"{image_layer.name}-{stamp}-{i}")
            split = store.next_split()
            case = store.add_case(name, image, mask, note, meta={
                "split": split,
                "image_layer": image_layer.name, "labels_layer": labels_layer.name,
                "added": _dt.datetime.now().isoformat(timespec="seconds"),
                "model": labels_layer.metadata.get(SOURCE_KEY, {}).get("model"),
            })
        except (ValueError, OSError) as exc:
            show_error(f"Add case failed: {exc}")
            return None
        self.refresh_cases()
        held_out = " (held out for validation, as every fifth case is)" if split == "val" else ""
        show_info(f"Saved case '{case.name}' to {self.folder.value}{held_out}")
        return case

    # training ----------------------------------------------------------------
    def finetune_config(self) -> FinetuneConfig:
        """The run the widget's settings describe, starting from Segment's current model."""
        widget = self.segment_widget
        if widget is None:
            raise ValueError("open 'Segment from note' first: fine-tuning starts from its model")
        source = widget.model_source()
        if source.kind not in (DEMO, CHECKPOINT):
            raise ValueError("fine-tuning starts from a checkpoint: choose the demo model or a "
                             "checkpoint file in 'Segment from note'")
        return FinetuneConfig(
            checkpoint=source.path if source.kind == CHECKPOINT else None,
            out_dir=Path(self.folder.value) / "models", minutes=float(self.minutes.value),
            epochs=self.epochs.value or None, lr=self.lr.value or None,
            freeze_encoders=self.freeze.value, lam=float(self.lam.value), device=widget.device.value,
        )

    def start(self) -> Any | None:
        """Fine-tune in a child process; returns the worker that relays its events."""
        if self.worker is not None:
            show_error("Fine-tuning is already running")
            return None
        try:
            cases = self.refresh_cases()
            if not cases:
                raise ValueError("add at least one corrected case first")
            config = self.finetune_config()
            root = Path(self.folder.value)
            self.process = process = FinetuneProcess(root, config, log_dir=root / "models" / "logs")
        except (ValueError, OSError) as exc:
            show_error(f"Cannot start fine-tuning: {exc}")
            return None

        @thread_worker(ignore_errors=True)  # errors are shown by our own handlers
        def relay():  # only reads the child's pipe: no model, no optimizer in napari
            result = None
            for event in process.events():
                if event.get("kind") == "finished":
                    result = event.get("result")
                yield event
            return result

        bar = progress(total=0, desc="Fine-tuning: starting")

        def reuse_bar(total: int, desc: str) -> Any:
            bar.total = total
            bar.set_description(desc)
            return bar

        feed = EventBar(reuse_bar, EPOCHS, "Fine-tuning")
        self.worker = worker = relay()
        worker.yielded.connect(lambda event: self._on_event(event, feed))
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._finished(bar))
        self.start_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"Fine-tuning on the cases in {root} (process {process.pid})…"
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()
        self.status.value = "Cancelling after the current step…"

    def _on_event(self, event: dict[str, Any], feed: EventBar) -> None:
        line = feed.feed(event)
        kind = event.get("kind")
        if kind == "plan":
            self.status.value = f"Plan: {event.get('message')}"
        elif kind in ("prepare", "baseline") and event.get("message"):
            self.status.value = event["message"]
        elif line:
            self.status.value = line

    def _on_done(self, result: dict[str, Any] | None) -> None:
        self.last_result = result
        if not result or result.get("checkpoint") is None:
            self.status.value = "Cancelled: the previous model is still in use"
            show_info("Fine-tuning cancelled; the previous model is kept.")
            return
        self.last_checkpoint = Path(result["checkpoint"])
        summary = result["summary"]
        if result["verdict"] == "worse":
            self.status.value = f"{summary}; the previous model stays in use"
            show_warning(f"Fine-tuned model {self.last_checkpoint} is worse on the validation cases; "
                         f"the previous model stays in use. {summary}")
            return
        self.status.value = summary
        show_info(f"Fine-tuned model saved to {self.last_checkpoint}: {summary}")
        if self.segment_widget is not None:
            self.segment_widget.use_checkpoint(self.last_checkpoint)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, FinetuneCrashed):
            text = f"Fine-tuning crashed: {exc} Start it again when ready."
        elif isinstance(exc, FinetuneFailed):
            text = f"Fine-tuning failed: {exc}"
        else:
            text = f"Fine-tuning failed: {type(exc).__name__}: {exc}"
        self.status.value = text[:300]
        show_error(text)

    def _finished(self, bar: Any) -> None:
        bar.close()
        self.worker, self.process = None, None
        self.start_button.enabled, self.cancel_button.enabled = True, False
