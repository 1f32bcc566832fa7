"""Layers <-> engine inputs and outputs; runs on napari's main thread only."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..engine.segmenter import threshold_mask

LESION_SUFFIX = " lesion"
CONFOUNDER_SUFFIX = " confounders"
NOTE_KEY = "note"  # image layer metadata: the note shown to the user (sample data sets it)
MASK_HASH_KEY = "causalseg_mask_hash"  # what we last wrote, to tell user edits apart
SOURCE_KEY = "causalseg_source"  # lesion layer: image layer name, note, model


def image_array(layer: Any) -> np.ndarray:
    """The 2-D (or RGB) array of an Image layer, with a clear error for anything else."""
    if layer is None:
        raise ValueError("choose an image layer first (open an X-ray or File > Open Sample)")
    data = layer.data
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    data = np.asarray(data)
    ndim = data.ndim - (1 if layer.rgb else 0)
    if ndim != 2:
        raise ValueError(
            f"layer {layer.name!r} has {ndim} spatial dimensions; CausalCLIPSeg segments one "
            "2-D radiograph: open a single image or pick one slice into its own layer"
        )
    return data


def mask_hash(mask: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(mask).data, digest_size=16).hexdigest()


def user_edited(labels_layer: Any) -> bool:
    """True when the Labels data no longer equals what the plugin last wrote."""
    written = labels_layer.metadata.get(MASK_HASH_KEY)
    return written is None or written != mask_hash(np.asarray(labels_layer.data))


def geometry(image_layer: Any) -> dict[str, Any]:
    """Scale and translate of the image's 2 spatial axes, for the output layers."""
    n = 2
    return {
        "scale": tuple(image_layer.scale[-n:]),
        "translate": tuple(image_layer.translate[-n:]),
    }


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
              "threshold": result.threshold}
    mask = result.mask.astype(np.uint8)
    name = image_layer.name + LESION_SUFFIX
    labels = find_layer(viewer, name)
    protected = labels is not None and user_edited(labels)
    if labels is None or protected:
        labels = viewer.add_labels(mask, name=_free_name(viewer, name), **geo)
    else:
        labels.data = mask
        labels.scale, labels.translate = geo["scale"], geo["translate"]
    labels.metadata[MASK_HASH_KEY] = mask_hash(mask)
    labels.metadata[SOURCE_KEY] = source
    labels.metadata[NOTE_KEY] = result.note

    conf_name = image_layer.name + CONFOUNDER_SUFFIX
    if conf_name in viewer.layers:
        confounders = viewer.layers[conf_name]
        confounders.data = result.confounder
        confounders.scale, confounders.translate = geo["scale"], geo["translate"]
    else:
        confounders = viewer.add_image(
            result.confounder, name=conf_name, colormap="inferno", opacity=0.5,
            contrast_limits=(0.0, 1.0), blending="additive", metadata={SOURCE_KEY: source}, **geo,
        )
    confounders.metadata[SOURCE_KEY] = source
    return labels, confounders, protected


def rethreshold(labels_layer: Any, probability: np.ndarray, threshold: float) -> bool:
    """Replace an unedited lesion layer's mask from the kept probability map."""
    if user_edited(labels_layer):
        return False
    mask = threshold_mask(probability, threshold)
    labels_layer.data = mask
    labels_layer.metadata[MASK_HASH_KEY] = mask_hash(mask)
    labels_layer.metadata.setdefault(SOURCE_KEY, {})["threshold"] = threshold
    return True
