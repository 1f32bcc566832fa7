""""Worklist": go through a folder of X-rays or a data set, one image at a time.

A thin view over engine.worklist: the engine lists the images, keeps states, progress and
unsaved masks in the annotation folder and writes saved cases; this widget shows the
current image as a layer (read as napari's reader does), follows its lesion layer to tell
"segmented" from "corrected" (as Segment from note does, by the hash of what the model
wrote), and binds PageDown / PageUp / Ctrl+Enter on the viewer while it is docked.
The note of a data set's image reaches "Segment from note" through the image layer's
metadata, as the sample data's note does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from .._layer_meta import MASK_HASH_KEY, SOURCE_KEY, mask_hash
from ..engine.data.cases import Case
from ..engine.images import read_image
from ..engine.worklist import ItemState, ScanConfig, Worklist, WorklistError, recent_sources
from ._layers import LESION_SUFFIX, image_array, user_edited
from ._panel import PanelWatcher, ViewerShortcuts, settle_timer
from ._worklist_layers import (
    add_image_layer,
    add_mask_layer,
    dock_widget,
    lesion_layers,
    note_for,
    open_image_layer,
    remove_image_layers,
)
from .finetune import FineTuneWidget, default_annotation_dir

if TYPE_CHECKING:
    import napari.viewer

#: napari key name -> widget method; none of these is a napari default (labels tools use
#: letters, digits, [ ] - = and Enter; File > Save is Ctrl+S).
SHORTCUTS = {"PageDown": "next", "PageUp": "previous", "Control-Enter": "save_and_next"}
_STATE_TEXT = {ItemState.NEW: "new", ItemState.SEGMENTED: "segmented by the model (not saved)",
               ItemState.CORRECTED: "corrected (not saved)", ItemState.SAVED: "saved"}
_MARK = {ItemState.NEW: "○", ItemState.SEGMENTED: "◐", ItemState.CORRECTED: "●", ItemState.SAVED: "✓"}


class WorklistWidget(Container):
    """Dock widget: Previous / Next / Save and next through a study set."""

    def __init__(self, viewer: napari.viewer.Viewer, segment_widget: Any | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._segment_widget = segment_widget
        self.worklist: Worklist | None = None
        self.image_layer: Any | None = None
        self.shortcuts = ViewerShortcuts(viewer, {key: getattr(self, name) for key, name in SHORTCUTS.items()})
        self._choosing = False
        self._check = settle_timer(150, self.refresh_state)  # the state follows painting, not each pixel
        self._autosave = settle_timer(2000, self.keep_draft)  # a crash loses at most the last strokes

        self.source = FileEdit(label="X-rays", mode="d")
        self.source.tooltip = ("A folder of X-rays (PNG, JPEG, TIFF, DICOM with or without extension; "
                               "subfolders included) or a data set in a known layout (its captions "
                               "become the notes)")
        self.read_as = ComboBox(label="Read as", choices=[("auto", "auto"), ("folder of images", "folder"),
                                                          ("data set (captions as notes)", "dataset")])
        fine = dock_widget(viewer, FineTuneWidget)
        self.folder = FileEdit(label="Annotation folder", mode="d",
                               value=fine.folder.value if fine is not None else default_annotation_dir())
        self.open_button = PushButton(text="Open worklist")
        self.progress = Label(label="Progress", value="No worklist open")
        self.items = ComboBox(label="Image", choices=self._item_choices)  # napari resets choices
        self.state = Label(label="This image", value="")
        self.prev_button = PushButton(text="◀ Previous  [PgUp]")
        self.next_button = PushButton(text="Next ▶  [PgDn]")
        self.save_button = PushButton(text="Save and next  [Ctrl+Enter]")
        self.save_button.tooltip = ("Add the image, its lesion mask and note to the annotation folder, "
                                    "then go to the next image not yet saved")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        for label in (self.progress, self.state, self.status):  # full rows, text from the left
            label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        nav = Container(widgets=[self.prev_button, self.next_button], layout="horizontal", labels=False)
        nav.margins = (0, 0, 0, 0)
        for row in (self.progress, self.state, self.status, nav):
            row.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.extend([self.source, self.read_as, self.folder, self.open_button, self.progress,
                     self.items, self.state, nav, self.save_button, self.status])
        for button in (self.prev_button, self.next_button, self.save_button):
            button.native.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep reaching the canvas
        self._enable(False)

        self.open_button.changed.connect(lambda _: self.open())
        self.prev_button.changed.connect(lambda _: self.previous())
        self.next_button.changed.connect(lambda _: self.next())
        self.save_button.changed.connect(lambda _: self.save_and_next())
        self.items.changed.connect(self._item_chosen)
        self.folder.changed.connect(lambda _: self._suggest_source())
        viewer.layers.events.inserted.connect(self._layer_inserted)
        self._watcher = PanelWatcher(self)  # closing the panel closes the worklist
        self.native.installEventFilter(self._watcher)
        self._suggest_source()
        self.shortcuts.bind()

    # cooperation ----------------------------------------------------------------
    @property
    def segment_widget(self) -> Any | None:
        if self._segment_widget is None:
            from .segment import SegmentWidget

            self._segment_widget = dock_widget(self.viewer, SegmentWidget)
        return self._segment_widget

    def _suggest_source(self) -> None:
        """Prefill the last worklist of this annotation folder, so reopening is one click."""
        if str(self.source.value) in ("", ".") and str(self.folder.value) not in ("", "."):
            recent = recent_sources(Path(self.folder.value).expanduser())
            if recent:
                self.source.value = recent[0]

    # panel life ---------------------------------------------------------------------
    def on_dock(self) -> None:
        self.shortcuts.bind()

    def on_undock(self) -> None:
        self.close_worklist()

    def on_hide(self) -> None:
        self.keep_draft()

    # opening --------------------------------------------------------------------
    def open(self) -> Worklist | None:
        """Open (or resume) the worklist of the chosen source; returns it (tests use it)."""
        if not self.keep_draft():  # first, so that reopening the same source reads it back
            return None
        try:
            wl = Worklist.open(self.source.value, self.folder.value, ScanConfig(kind=self.read_as.value))
        except (ValueError, OSError) as exc:
            self._error("Cannot open the worklist", exc)
            return None
        self._leave()
        self.worklist = wl
        for text in wl.warnings:
            show_warning(text)
        self._choosing = True
        self.items.reset_choices()
        self._choosing = False
        self._enable(True)
        what = f"data set ({wl.layout} layout)" if wl.kind == "dataset" else "folder"
        self.status.value = f"{len(wl.items)} images from the {what}"
        self._show_current()
        return wl

    def close_worklist(self) -> None:
        """Keep the unsaved mask, free the keys; the layers stay for the user."""
        self.keep_draft()
        self.shortcuts.unbind()
        self.worklist, self.image_layer = None, None
        self._enable(False)

    # navigation -----------------------------------------------------------------
    def next(self) -> bool:
        wl = self.worklist
        return wl is not None and self.go(wl.index + 1)

    def previous(self) -> bool:
        wl = self.worklist
        return wl is not None and self.go(wl.index - 1)

    def go(self, index: int) -> bool:
        """Show image ``index`` (0-based); the image left keeps its unsaved mask."""
        wl = self.worklist
        if wl is None:
            show_info("Open a worklist first.")
            return False
        if not 0 <= index < len(wl.items):
            show_info("This is the last image." if index > 0 else "This is the first image.")
            return False
        if not self._leave():
            return False
        try:
            wl.go(index)
        except ValueError as exc:
            self._error("Cannot move", exc)
        self._show_current()
        return True

    def save_and_next(self) -> Case | None:
        """Save the current image's lesion mask as a case, then go to the next unsaved image."""
        wl = self.worklist
        if wl is None or self.image_layer is None:
            show_error("Open a worklist first (and an image that can be read).")
            return None
        self.refresh_state()
        item, lesion = wl.current, self.lesion_layer()
        case = None
        if item.state is not ItemState.SAVED or (lesion is not None and user_edited(lesion)):
            try:
                case = self._save(lesion)
            except (ValueError, OSError) as exc:
                self._error("Not saved", exc)
                self._update_labels()
                return None
            show_info(f"Saved {item.key} as case '{case.name}' in {wl.annotations}")
            fine = dock_widget(self.viewer, FineTuneWidget)
            if fine is not None and Path(fine.folder.value).expanduser().resolve() == wl.annotations:
                fine.refresh_cases()
        after = wl.first_unsaved(wl.index + 1)
        after = wl.first_unsaved() if after is None else after
        if after is None:
            self._update_labels()
            show_info(f"All {len(wl.items)} images are saved.")
        else:
            self.go(after)
        return case

    def _save(self, lesion: Any | None) -> Case:
        wl, layer = self.worklist, self.image_layer
        if lesion is None:
            raise WorklistError(
                f"nothing to save for {wl.current.key}: press Segment in 'Segment from note', or "
                f"draw the lesion in a Labels layer named '{layer.name}{LESION_SUFFIX}'")
        source = lesion.metadata.get(SOURCE_KEY) or {}
        seg = self.segment_widget
        note = note_for(lesion, seg.note.value if seg is not None else "", wl.current.caption)
        case = wl.save(np.asarray(lesion.data) > 0, note, image=image_array(layer),
                       meta={"model": source.get("model"), "labels_layer": lesion.name})
        lesion.metadata[MASK_HASH_KEY] = mask_hash(np.asarray(lesion.data))  # as saved: unedited
        return case

    # the current image's layers ----------------------------------------------------
    def lesion_layers(self) -> list[Any]:
        return lesion_layers(self.viewer, self.image_layer)

    def lesion_layer(self) -> Any | None:
        """The selected lesion layer of this image, else the newest one."""
        layers = self.lesion_layers()
        active = self.viewer.layers.selection.active
        return active if active in layers else (layers[-1] if layers else None)

    def refresh_state(self) -> None:
        """Segmented while the mask is what the model wrote, corrected once edited."""
        wl = self.worklist
        lesion = self.lesion_layer()
        if wl is not None and lesion is not None and wl.current.state is not ItemState.SAVED:
            wl.mark(ItemState.CORRECTED if user_edited(lesion) else ItemState.SEGMENTED)
        self._update_labels()

    def keep_draft(self) -> bool:
        """Keep the current unsaved mask in the annotation folder; False if that failed."""
        wl, lesion = self.worklist, self.lesion_layer()
        if wl is None or lesion is None:
            return True
        self.refresh_state()
        if wl.current.state in (ItemState.SEGMENTED, ItemState.CORRECTED):
            try:
                wl.keep_draft(np.asarray(lesion.data))
            except (ValueError, OSError) as exc:
                self._error("Cannot keep the unsaved mask, so the image stays open", exc)
                return False
        return True

    def _leave(self) -> bool:
        """Keep the unsaved mask, then close the image and the layers made from it."""
        if not self.keep_draft():
            return False
        layer, self.image_layer = self.image_layer, None
        if layer is not None:
            remove_image_layers(self.viewer, layer)
        return True

    def _show_current(self) -> None:
        """Open the current image (or adopt it when open already) with its saved or kept mask."""
        wl = self.worklist
        item = wl.current
        self.image_layer = open_image_layer(self.viewer, wl)
        if self.image_layer is not None:  # with its lesion layers, as the user left them
            for layer in self.lesion_layers():
                self._follow(layer)
        else:
            try:
                img = read_image(item.image_path)
                mask = wl.mask()
            except ValueError as exc:
                self._error(f"Cannot show image {wl.index + 1} ({item.key}); go on with Next", exc)
                self._update_labels()
                return
            self.image_layer = layer = add_image_layer(self.viewer, wl, img)
            if mask is not None:
                case = wl.saved_case()
                add_mask_layer(self.viewer, layer, mask, item.state, case.note if case is not None else None)
            self.viewer.reset_view()
            self.status.value = "; ".join(img.metadata.get("notes", []))  # e.g. "first of 3 frames"
        seg = self.segment_widget
        if item.caption and seg is not None:
            seg.set_note(item.caption)
        self.items.tooltip = str(item.image_path)
        self.refresh_state()

    def _layer_inserted(self, event: Any) -> None:
        """Follow edits of Labels layers (Segment from note names its layer's image only
        after inserting it, so every Labels layer is followed and the check filters)."""
        from napari.layers import Labels

        if isinstance(event.value, Labels):
            self._follow(event.value)

    def _follow(self, labels: Any) -> None:
        labels.events.paint.connect(self._edited)
        labels.events.data.connect(self._edited)
        self._edited()

    def _edited(self, _event: Any = None) -> None:
        if self.worklist is not None:
            self._check.start()
            self._autosave.start()

    # labels ------------------------------------------------------------------------
    def _item_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        wl = self.worklist
        return [] if wl is None else [(self._item_text(i), i) for i in range(len(wl.items))]

    def _item_text(self, i: int) -> str:
        item = self.worklist.items[i]
        return f"{_MARK[item.state]} {i + 1}. {item.key}"

    def _item_chosen(self, index: Any) -> None:
        if not self._choosing and index is not None and self.worklist is not None and index != self.worklist.index:
            self.go(int(index))

    def _update_labels(self) -> None:
        wl = self.worklist
        if wl is None:
            return
        counts = wl.counts()
        extra = [f"{counts[s]} {s.value}" for s in (ItemState.CORRECTED, ItemState.SEGMENTED) if counts[s]]
        with contextlib.suppress(RuntimeError):  # closed while a handler ran
            self.progress.value = " · ".join([wl.progress_text(), *extra])
            self.state.value = self._state_text()
            for i in {wl.index, self.items.value} - {None}:
                self.items.native.setItemText(i, self._item_text(i))
            self._choosing = True
            self.items.value = wl.index
            self._choosing = False
            self.prev_button.enabled = wl.index > 0
            self.next_button.enabled = wl.index + 1 < len(wl.items)

    def _state_text(self) -> str:
        text = _STATE_TEXT[self.worklist.current.state]
        lesion = self.lesion_layer()
        if self.worklist.current.state is ItemState.SAVED and lesion is not None and user_edited(lesion):
            text += " (edited since; a saved case is never overwritten)"
        return text

    def _enable(self, on: bool) -> None:
        for w in (self.items, self.prev_button, self.next_button, self.save_button):
            w.enabled = on

    def _error(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {exc}"
        with contextlib.suppress(RuntimeError):
            self.status.value = text[:300]
        show_error(text)
