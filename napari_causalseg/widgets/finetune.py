""""Fine-tune": save corrected cases at once, then fine-tune in the background.

Every "Add case" writes the image, the corrected mask and the note to the annotation
folder immediately (atomically), so a crash never loses a correction. Training runs
the engine's Trainer in a napari thread worker; Cancel stops it between steps and
keeps the previous model. A finished run is saved as a new checkpoint next to the
earlier ones (rollback = pick an older file) and swapped into "Segment from note".
"""

from __future__ import annotations

import datetime as _dt
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
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
from napari.utils.notifications import show_error, show_info

from ..engine.atomic import atomic_write
from ..engine.checkpoint import load_checkpoint
from ..engine.data.readers import AnnotationStore, Case, safe_case_name, to_gray
from ..engine.evaluate import evaluate_cases
from ..engine.trainer import TrainConfig, Trainer, preload_optimizer_imports
from ._layers import NOTE_KEY, SOURCE_KEY, image_array
from ._llvm_guard import block_triton_if_llvm_loaded

if TYPE_CHECKING:
    import napari.viewer


def default_annotation_dir() -> Path:
    """In the user data directory, never the working directory."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-causalseg")) / "annotations"


def split_cases(cases: list[Case], val_share: float) -> tuple[list[Case], list[Case]]:
    """Last share of the (sorted) cases for validation; at least one case for training."""
    cases = sorted(cases, key=lambda c: c.name)
    n_val = int(round(len(cases) * val_share)) if len(cases) > 1 else 0
    n_val = min(n_val, len(cases) - 1)
    return cases[: len(cases) - n_val], cases[len(cases) - n_val:]


class FineTuneWidget(Container):
    """Dock widget: collect corrected cases and fine-tune the current model on them."""

    def __init__(self, viewer: napari.viewer.Viewer, segment_widget: Any | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._segment_widget = segment_widget
        self.worker: Any | None = None
        self.trainer: Trainer | None = None
        self.last_checkpoint: Path | None = None
        self._cancel_requested = False

        self.folder = FileEdit(label="Annotation folder", mode="d", value=default_annotation_dir())
        self.image = ComboBox(label="Image", choices=self._layers_of("Image"), nullable=True)
        self.labels = ComboBox(label="Corrected mask", choices=self._layers_of("Labels"), nullable=True)
        self.add_button = PushButton(text="Add case")
        self.cases = Select(label="Cases", choices=[], allow_multiple=True)
        self.epochs = SpinBox(label="Epochs", min=1, max=1000, value=10)
        self.lr = FloatSpinBox(label="Learning rate", min=1e-7, max=1e-1, step=1e-5, value=1e-4)
        self.lr.native.setDecimals(7)
        self.lam = FloatSpinBox(label="Lambda (L_s weight)", min=0.0, max=1.0, step=0.01, value=0.05)
        self.freeze = CheckBox(text="Freeze CLIP encoders", value=True)
        self.val_share = FloatSpinBox(label="Validation share", min=0.0, max=0.9, step=0.05, value=0.2)
        self.start_button = PushButton(text="Start fine-tuning")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([self.folder, self.image, self.labels, self.add_button, self.cases, self.epochs,
                     self.lr, self.lam, self.freeze, self.val_share, self.start_button,
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
        self.optimizer_ready = threading.Event()
        self._preload_optimizer()

    def _preload_optimizer(self) -> None:
        """torch's optimizer imports, in the background now rather than on Start."""
        block_triton_if_llvm_loaded()  # before anything can import Triton (see _llvm_guard)

        @thread_worker(ignore_errors=True)  # a failure here shows again, clearly, on Start
        def work() -> None:
            preload_optimizer_imports()

        worker = work()
        worker.finished.connect(self.optimizer_ready.set)
        worker.start()

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
        self.cases.choices = [c.name for c in cases]
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
            case = store.add_case(name, image, mask, note, meta={
                "image_layer": image_layer.name, "labels_layer": labels_layer.name,
                "added": _dt.datetime.now().isoformat(timespec="seconds"),
                "model": labels_layer.metadata.get(SOURCE_KEY, {}).get("model"),
            })
        except (ValueError, OSError) as exc:
            show_error(f"Add case failed: {exc}")
            return None
        self.refresh_cases()
        show_info(f"Saved case '{case.name}' to {self.folder.value}")
        return case

    # training ----------------------------------------------------------------
    def start(self) -> Any | None:
        """Fine-tune in a worker; returns it (tests wait on it)."""
        if self.worker is not None:
            show_error("Fine-tuning is already running")
            return None
        block_triton_if_llvm_loaded()  # the optimizer would load Triton (see _llvm_guard)
        try:
            cases = self.refresh_cases()
            if not cases:
                raise ValueError("add at least one corrected case first")
            widget = self.segment_widget
            if widget is None:
                raise ValueError("open 'Segment from note' first: fine-tuning starts from its model")
            source, device = widget.model_source(), widget.device.value
            train, val = split_cases(cases, self.val_share.value)
            config = TrainConfig(epochs=self.epochs.value, batch_size=min(4, len(train)),
                                 lr=self.lr.value, lam=self.lam.value, patience=self.epochs.value,
                                 freeze_encoders=self.freeze.value, device=device)
            root = Path(self.folder.value)
        except ValueError as exc:
            show_error(f"Cannot start fine-tuning: {exc}")
            return None
        self._cancel_requested = False

        @thread_worker(ignore_errors=True)  # errors are shown by our own handlers
        def work():
            widget.models.get(source, device)
            start = widget.models.checkpoint
            if start is None:
                raise ValueError("fine-tuning starts from a checkpoint: use the demo model or a "
                                 "checkpoint file in 'Segment from note'")
            model, info = load_checkpoint(start)
            before = evaluate_cases(model, val)["per_image"]["dice"] if val else None
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = root / "runs" / stamp
            self.trainer = Trainer(model, train, val, config, out_dir=run_dir, provenance={
                "finetuned_from": str(start), "cases": [c.name for c in cases],
                "init_provenance": info.provenance})
            if self._cancel_requested:
                self.trainer.cancel()
            for event in self.trainer.run():
                yield event
            if event.stopped == "cancelled" or event.best_path is None:
                return {"cancelled": True}
            best, _ = load_checkpoint(event.best_path)
            after = evaluate_cases(best, val)["per_image"]["dice"] if val else None
            target = root / "models" / f"finetuned-{stamp}.safetensors"
            for suffix in (".safetensors", ".json"):
                atomic_write(target.with_suffix(suffix),
                             lambda tmp, s=suffix: shutil.copyfile(event.best_path.with_suffix(s), tmp))
            return {"cancelled": False, "checkpoint": target, "before": before, "after": after,
                    "previous": start}

        bar = progress(total=config.epochs, desc="Fine-tuning")
        self.worker = worker = work()
        worker.yielded.connect(lambda event: self._on_event(event, bar))
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda exc: show_error(f"Fine-tuning failed: {exc}"))
        worker.finished.connect(lambda: self._finished(bar))
        self.start_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"Fine-tuning on {len(train)} case(s), validating on {len(val)}…"
        worker.start()
        return worker

    def cancel(self) -> None:
        self._cancel_requested = True
        if self.trainer is not None:
            self.trainer.cancel()
        self.status.value = "Cancelling after the current step…"

    def _on_event(self, event: Any, bar: Any) -> None:
        if event.kind == "step":
            bar.set_description(f"Fine-tuning epoch {event.epoch}: L_c {event.loss_c:.3f}, L_s {event.loss_s:.3f}")
        elif event.kind == "epoch":
            dice = event.val["per_image"]["dice"] if event.val else None
            bar.update(1)
            text = f"epoch {event.epoch}/{event.epochs}: L_c {event.loss_c:.3f}, L_s {event.loss_s:.3f}"
            self.status.value = text + (f", val Dice {dice:.3f}" if dice is not None else "")

    def _on_done(self, outcome: dict[str, Any]) -> None:
        if outcome.get("cancelled"):
            self.status.value = "Cancelled: the previous model is still in use"
            show_info("Fine-tuning cancelled; the previous model is kept.")
            return
        self.last_checkpoint = outcome["checkpoint"]
        before, after = outcome["before"], outcome["after"]
        summary = (f"validation Dice {before:.3f} -> {after:.3f}" if before is not None
                   else "no validation cases")
        self.status.value = f"Saved {self.last_checkpoint.name} ({summary})"
        show_info(f"Fine-tuned model saved to {self.last_checkpoint} ({summary}); previous: "
                  f"{outcome['previous']}")
        if self.segment_widget is not None:
            self.segment_widget.use_checkpoint(self.last_checkpoint)

    def _finished(self, bar: Any) -> None:
        bar.close()
        self.worker, self.trainer = None, None
        self.start_button.enabled, self.cancel_button.enabled = True, False
