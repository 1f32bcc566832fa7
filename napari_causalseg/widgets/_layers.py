"""Layers <-> engine inputs and outputs; runs on napari's main thread only."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._layer_meta import MASK_HASH_KEY, NOTE_KEY, SOURCE_KEY, edited, mask_hash
from ..engine.images import MODALITY_VALUES_KEY
from ..engine.segmenter import threshold_mask

LESION_SUFFIX = " lesion"
CONFOUNDER_SUFFIX = " confounders"


def image_array(layer: Any) -> np.ndarray:
    """The 2-D (or RGB) array of an Image layer, with a clear error for anything else.

    A DICOM whose VOI is not linear is shown VOI-transformed; the model still gets the
    modality values, which the reader keeps in the layer's metadata.
    """
    if layer is None:
        raise ValueError("choose an image layer first (open an X-ray or File > Open Sample)")
    data = layer.data
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    modality = getattr(layer, "metadata", {}).get(MODALITY_VALUES_KEY)
    if modality is not None and np.shape(modality) == np.shape(data):
        data = modality
    data = np.asarray(data)
    ndim = data.ndim - (1 if layer.rgb else 0)
    if ndim != 2:
        raise ValueError(
            f"layer {layer.name!r} has {ndim} spatial dimensions; CausalCLIPSeg segments one "
            "2-D radiograph: open a single image or pick one slice into its own layer"
        )
    return data


def user_edited(labels_layer: Any) -> bool:
    """True when the Labels data no longer equals what the plugin last wrote."""
    return edited(labels_layer.metadata, labels_layer.data)


def geometry(image_layer: Any) -> dict[str, Any]:
    """Scale, translate and (napari >= 0.6) units of the image's 2 spatial axes, for the
    output layers; the units tell the writer whether the scale is a spacing in mm."""
    n = 2
    geo = {
        "scale": tuple(image_layer.scale[-n:]),
        "translate": tuple(image_layer.translate[-n:]),
    }
    if getattr(image_layer, "units", None) is not None:
        geo["units"] = tuple(image_layer.units[-n:])
    return geo


def find_layer(viewer: Any, name: str) -> Any | None:
    """The layer called `name`, or None (napari's LayerList has no .get)."""
    return next((layer for layer in viewer.layers if layer.name == name), None)


def _free_name(viewer: Any, name: str) -> str:
    existing = {layer.name for layer in viewer.layers}
    if name not in existing:
        return name
    i = 2
    while f"{name} [{i}]" in existing:
        i += 1
    return f"{name} [{i}]"


def show_result(viewer: Any, image_layer: Any, result: Any, model_label: str) -> tuple[Any, Any, bool]:
    """Add or update "<image> lesion" and "<image> confounders".

    A lesion layer the user has edited is never overwritten: a new layer is added and
    the caller tells the user. Returns (labels, confounders, wrote_new_because_edited).
    """
    geo = geometry(image_layer)
    source = {"image": image_layer.name, "note": result.note, "model": model_label,
              "threshold": result.threshold,
              "source_path": image_layer.metadata.get("source_path")}  # a DICOM SEG refers to it
    mask = result.mask.astype(np.uint8)
    name = image_layer.name + LESION_SUFFIX
    labels = find_layer(viewer, name)
    protected = labels is not None and user_edited(labels)
    if labels is None or protected:
        labels = viewer.add_labels(mask, name=_free_name(viewer, name), **geo)
    else:
        labels.data = mask
        _set_geometry(labels, geo)
    labels.metadata[MASK_HASH_KEY] = mask_hash(mask)
    labels.metadata[SOURCE_KEY] = source
    labels.metadata[NOTE_KEY] = result.note

    conf_name = image_layer.name + CONFOUNDER_SUFFIX
    if conf_name in viewer.layers:
        confounders = viewer.layers[conf_name]
        confounders.data = result.confounder
        _set_geometry(confounders, geo)
    else:
        confounders = viewer.add_image(
            result.confounder, name=conf_name, colormap="inferno", opacity=0.5,
            contrast_limits=(0.0, 1.0), blending="additive", metadata={SOURCE_KEY: source}, **geo,
        )
    confounders.metadata[SOURCE_KEY] = source
    return labels, confounders, protected


def _set_geometry(layer: Any, geo: dict[str, Any]) -> None:
    """Only what changed: each assignment makes napari re-layout and refresh the layer
    (~12 ms per layer for a 2500 x 2048 X-ray), even with the same values."""
    for key, value in geo.items():
        if tuple(getattr(layer, key)) != tuple(value):
            setattr(layer, key, value)


def rethreshold(labels_layer: Any, probability: np.ndarray, threshold: float) -> bool:
    """Replace an unedited lesion layer's mask from the kept probability map."""
    if user_edited(labels_layer):
        return False
    mask = threshold_mask(probability, threshold)
    labels_layer.data = mask
    labels_layer.metadata[MASK_HASH_KEY] = mask_hash(mask)
    labels_layer.metadata.setdefault(SOURCE_KEY, {})["threshold"] = threshold
    return True
