"""Work through a study set one X-ray at a time; saving adds the case to the annotation folder.

The annotation folder is the record. Each image saves to a case whose name is fixed by the
image (``<name>-<hash of source and path>``), so:

* a saved correction is never overwritten: saving an image whose case exists refuses with
  a message that names the case folder (delete it to redo the image);
* a crash between writing the case and writing the state file loses nothing: reopening
  finds the case and marks the image saved;
* the progress ("12 of 200 saved") is recounted from ``cases/`` on every open.

Masks of images left unsaved are kept as drafts (see drafts.py) and come back with their
state. Reopening the same source resumes at the image the user was on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.annotations import AnnotationStore, safe_case_name
from ..data.cases import Case, load_mask
from ..images import ImageReadError, read_image, to_gray
from .drafts import DraftStore
from .items import ItemState, ScanConfig, WorklistError, WorklistItem, collect_items
from .state import WORKLISTS_DIR, WorklistState, read_state, source_id, state_path, write_state


class AlreadySavedError(WorklistError):
    """The image's case exists: it is never overwritten."""


def _resolved(path: str | os.PathLike, what: str) -> Path:
    text = os.fspath(path).strip()
    if not text or text == ".":
        raise WorklistError(f"Choose the {what} first.")
    return Path(text).expanduser().resolve()


@dataclass
class Worklist:
    """The images of one source, their states and the current position; see Worklist.open."""

    source: Path
    annotations: Path
    items: list[WorklistItem]
    kind: str = "folder"  # 'folder' or 'dataset'
    layout: str | None = None
    index: int = 0
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, source: str | os.PathLike, annotations: str | os.PathLike,
             config: ScanConfig | None = None) -> Worklist:
        """List the source's images and restore the progress kept in ``annotations``."""
        src, ann = _resolved(source, "folder of X-rays"), _resolved(annotations, "annotation folder")
        items, kind, layout, warnings = collect_items(src, ann, config or ScanConfig())
        wl = cls(src, ann, items, kind, layout, 0, warnings)

        wl._restore()
        return wl

    # places ----------------------------------------------------------------
    @property
    def id(self) -> str:
        return source_id(self.source)

    @property
    def state_path(self) -> Path:
        return state_path(self.annotations, self.source)

    @property
    def drafts(self) -> DraftStore:
        return DraftStore(self.annotations / WORKLISTS_DIR / self.id / "drafts")

    @property
    def store(self) -> AnnotationStore:
        return AnnotationStore(self.annotations)

    def case_name(self, item: WorklistItem) -> str:
        """The case an image saves to: readable, and unique to this source and path."""
        digest = hashlib.sha256(f"{self.source}\n{item.key}".encode()).hexdigest()[:8]
        return safe_case_name(f"{item.name[:80]}-{digest}")

    # progress --------------------------------------------------------------
    def _restore(self) -> None:
        """States from the state file, checked against cases/ and the drafts folder."""
        saved, warning = read_state(self.state_path)
        if warning:
            self.warnings.append(warning)
        if saved is not None and saved.source != str(self.source):
            saved = None  # another source with the same hash prefix: start afresh
        records = saved.items if saved is not None else {}
        cases = self.store.cases_dir
        existing = {e.name for e in os.scandir(cases) if e.is_dir()} if cases.is_dir() else set()
        drafts = self.drafts
        for item in self.items:
            name = self.case_name(item)
            if name in existing:
                item.state, item.case = ItemState.SAVED, name
            elif drafts.has(item.key):
                kept = records.get(item.key, {}).get("state")
                item.state = ItemState.SEGMENTED if kept == ItemState.SEGMENTED.value else ItemState.CORRECTED
            else:
                item.state = ItemState.NEW
        keys = [item.key for item in self.items]
        if saved is not None and saved.current in keys:
            self.index = keys.index(saved.current)
        else:
            self.index = self.first_unsaved() or 0
        self._write()

    def _write(self) -> None:
        records = {item.key: {"state": item.state.value, **({"case": item.case} if item.case else {})}
                   for item in self.items if item.state is not ItemState.NEW}
        write_state(self.state_path, WorklistState(str(self.source), self.kind, self.current.key, records))

    def counts(self) -> dict[ItemState, int]:
        found = Counter(item.state for item in self.items)
        return {state: found.get(state, 0) for state in ItemState}

    def progress_text(self) -> str:
        """e.g. '12 of 200 saved'."""
        return f"{self.counts()[ItemState.SAVED]} of {len(self.items)} saved"

    def first_unsaved(self, start: int = 0) -> int | None:
        return next((i for i in range(start, len(self.items))
                     if self.items[i].state is not ItemState.SAVED), None)

    # navigation ------------------------------------------------------------
    @property
    def current(self) -> WorklistItem:
        return self.items[self.index]

    def go(self, index: int) -> WorklistItem:
        if not 0 <= index < len(self.items):
            raise WorklistError(f"No image {index + 1}: the worklist has {len(self.items)}.")
        self.index = index
        self._write()
        return self.current

    def next(self) -> bool:
        """Move on; False at the last image."""
        if self.index + 1 >= len(self.items):
            return False
        self.go(self.index + 1)
        return True

    def previous(self) -> bool:
        if self.index == 0:
            return False
        self.go(self.index - 1)
        return True

    # states and masks ------------------------------------------------------
    def mark(self, state: ItemState) -> ItemState:
        """Set the current image's working state; a saved image stays saved."""
        if state is ItemState.SAVED:
            raise WorklistError("An image becomes saved by Worklist.save, not by mark.")
        item = self.current
        if item.state is not ItemState.SAVED and item.state is not state:
            item.state = state
            self._write()
        return item.state

    def keep_draft(self, mask: np.ndarray) -> None:
        """Keep the current, unsaved image's mask until it is saved (no-op once saved)."""
        item = self.current
        if item.state is not ItemState.SAVED:
            self.drafts.put(item.key, mask)
            self._write()

    def saved_case(self) -> Case | None:
        """The current image's case in the annotation folder, if it is saved (and readable)."""
        item = self.current
        if item.state is not ItemState.SAVED or not item.case:
            return None
        try:
            return self.store.case(item.case)
        except ValueError:
            return None  # removed or damaged by hand since: the image shows without a mask

    def mask(self) -> np.ndarray | None:
        """The current image's mask: the saved case's, else the kept draft, else None."""
        case = self.saved_case()
        if case is not None:
            try:
                return load_mask(case.mask_path)
            except ValueError:
                return None
        return None if self.current.state is ItemState.SAVED else self.drafts.get(self.current.key)

    def read_image(self) -> np.ndarray:
        """The current X-ray as stored in a case (2-D, RGB as luminance)."""
        path = self.current.image_path
        try:
            return to_gray(read_image(path).data, path)
        except ImageReadError as exc:
            raise WorklistError(f"Cannot read {path}: {exc}") from exc

    def save(self, mask: np.ndarray, note: str, image: np.ndarray | None = None,
             meta: dict | None = None) -> Case:
        """Add the current image, ``mask`` and ``note`` to the annotation folder as a new case.

        Refuses (AlreadySavedError) when the image's case exists. ``image`` defaults to the
        file read again; the store decides the case's split as for any added case.
        """
        item = self.current
        store = self.store
        name = self.case_name(item)
        if (store.cases_dir / name).exists():
            item.state, item.case = ItemState.SAVED, name
            self._write()
            raise AlreadySavedError(
                f"{item.key} is already saved as case {store.cases_dir / name}; a saved correction "
                "is never overwritten. To redo this image, delete that folder and save again.")
        image = self.read_image() if image is None else to_gray(np.asarray(image), item.key)
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise WorklistError(f"The mask {mask.shape} and {item.key} {image.shape[:2]} differ in size; "
                                "draw the mask on this image.")
        info = {"worklist": {"source": str(self.source), "image": item.key, "state": item.state.value},
                "added": _dt.datetime.now().isoformat(timespec="seconds"), **(meta or {})}
        case = store.add_case(name, image, mask > 0, note, meta=info)
        item.state, item.case = ItemState.SAVED, name
        self.drafts.drop(item.key)
        self._write()
        return case
