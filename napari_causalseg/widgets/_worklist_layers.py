"""The layers of a worklist image: opened as napari's reader opens a file, closed with the
layers made from it; main thread only."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._layer_meta import MASK_HASH_KEY, NOTE_KEY, SOURCE_KEY, mask_hash
from .._reader import _to_layer
from ..engine.images import LoadedImage
from ..engine.worklist import ItemState, Worklist, WorklistError
from ._layers import LESION_SUFFIX

WORKLIST_KEY = "causalseg_worklist"  # image layer metadata: {"source", "image"} of its item


def dock_widget(viewer: Any, cls: type) -> Any | None:
    """The docked widget of type ``cls`` in this viewer, if any (no global registry)."""
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", {}) if window is not None else {}
    return next((w for w in docks.values() if isinstance(w, cls)), None)


def add_image_layer(viewer: Any, wl: Worklist, img: LoadedImage) -> Any:
    """The current item as the reader's Image layer, its caption as the layer's note."""
    item = wl.current
    data, kwargs, _ = _to_layer(str(item.image_path), img)
    kwargs["metadata"][WORKLIST_KEY] = {"source": str(wl.source), "image": item.key}
    if item.caption:
        kwargs["metadata"][NOTE_KEY] = item.caption
    return viewer.add_image(data, **kwargs)


def open_image_layer(viewer: Any, wl: Worklist) -> Any | None:
    """The current item's layer if one is open already (e.g. left by a closed Worklist
    panel, with the user's lesion layer beside it), so reopening adopts it."""
    tag = {"source": str(wl.source), "image": wl.current.key}
    return next((layer for layer in viewer.layers if layer.metadata.get(WORKLIST_KEY) == tag), None)


def add_mask_layer(viewer: Any, image_layer: Any, mask: np.ndarray, state: ItemState,
                   note: str | None) -> Any:
    """A saved or kept mask as '<image> lesion'; unedited (for Segment from note, which may
    then replace it) unless it was a correction."""
    data = np.asarray(mask).astype(np.uint8)
    labels = viewer.add_labels(data, name=image_layer.name + LESION_SUFFIX,
                               scale=image_layer.scale[-2:], translate=image_layer.translate[-2:])
    origin = "saved case" if state is ItemState.SAVED else "kept mask"
    labels.metadata[SOURCE_KEY] = {"image": image_layer.name, "model": origin,
                                   "source_path": image_layer.metadata.get("source_path")}
    if note:
        labels.metadata[NOTE_KEY] = note
    if state is not ItemState.CORRECTED:
        labels.metadata[MASK_HASH_KEY] = mask_hash(data)
    return labels


def lesion_layers(viewer: Any, image_layer: Any | None) -> list[Any]:
    """Labels made for this image (by Segment from note or the worklist) or named for it."""
    from napari.layers import Labels

    if image_layer is None:
        return []
    name = image_layer.name
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and (
        (layer.metadata.get(SOURCE_KEY) or {}).get("image") == name or layer.name == name + LESION_SUFFIX)]


def note_for(lesion: Any, typed: str, caption: str) -> str:
    """The note the mask was made from, else the one typed, else the data set's caption."""
    source = lesion.metadata.get(SOURCE_KEY) or {}
    for note in (lesion.metadata.get(NOTE_KEY), source.get("note"), typed, caption):
        if note and str(note).strip():
            return str(note).strip()
    raise WorklistError("no note for this image: type it in 'Segment from note'")


def remove_image_layers(viewer: Any, image_layer: Any) -> None:
    """Close the image with its lesion and confounder layers (and the probability maps
    Segment from note keeps for it), so hundreds of images do not pile up."""
    if image_layer not in viewer.layers:
        return
    name = image_layer.name
    made = [layer for layer in viewer.layers
            if (layer.metadata.get(SOURCE_KEY) or {}).get("image") == name or layer.name == name + LESION_SUFFIX]
    for layer in [*made, image_layer]:
        viewer.layers.remove(layer)
