"""napari reader (npe2 ``get_reader`` hook) over :mod:`napari_causalseg.engine.images`.

The manifest offers this reader for X-ray extensions and for every file name without
an extension (extension-less DICOM), hence the hook must be cheap and must refuse,
never raise on, files it does not understand: napari then tries the next reader.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .engine.images import (
    IMAGE_EXTENSIONS,
    MODALITY_VALUES_KEY,
    ImageReadError,
    can_read,
    read_image,
)

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def _as_list(path: PathOrPaths) -> list[str] | None:
    if isinstance(path, str | os.PathLike):
        return [os.fspath(path)]
    try:
        paths = [os.fspath(p) for p in path]
    except TypeError:
        return None
    return paths or None


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData] | None] | None:
    """Return :func:`read_layers` when every path looks like an image we read, else None."""
    paths = _as_list(path)
    if paths is None or not all(can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathOrPaths) -> list[LayerData] | None:
    """One Image layer per file; None (napari tries other readers) if none decodes.

    Never raises: a file that cannot be read becomes a warning naming it and the reason.

    Files are not stacked: chest X-rays rarely share a shape.
    """
    layers: list[LayerData] = []
    for p in _as_list(path) or []:
        try:
            img = read_image(p)
        except ImageReadError as exc:
            # Content passed the magic-byte check but is corrupt, too large or needs a
            # codec: say why (napari shows warnings as notifications), never raise.
            logger.warning("napari-causalseg could not read %s", exc)
            warnings.warn(f"napari-causalseg could not read {exc}", UserWarning, stacklevel=2)
            continue
        for text in img.metadata.get("notes", []):  # napari shows warnings as notifications
            warnings.warn(f"{Path(p).name}: {text}", UserWarning, stacklevel=2)
        layers.append(_to_layer(p, img))
    return layers or None


@functools.cache
def _napari_has_units() -> bool:
    """Layer ``units`` arrived in napari 0.6; older napari rejects the kwarg."""
    try:
        from napari.layers import Image
    except ImportError:
        return False
    return "units" in inspect.signature(Image.__init__).parameters


def _layer_name(path: str) -> str:
    # DICOM files are often named by UID ("1.2.840.113619.2.55"): keep the whole name
    p = Path(path)
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


def _to_layer(path: str, img) -> LayerData:
    """The layer shows ``img.display`` when the file's VOI is not linear; the modality
    values the model needs then ride along in the metadata (widgets read them there)."""
    data = img.data if img.display is None else img.display
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    metadata = dict(img.metadata)
    if img.display is not None:
        metadata[MODALITY_VALUES_KEY] = img.data
    kwargs: dict[str, Any] = {
        "name": _layer_name(path),
        "scale": tuple(img.spacing) if img.spacing is not None else (1.0, 1.0),
        "metadata": metadata,
        "rgb": rgb,
    }
    if img.spacing is not None and _napari_has_units():
        kwargs["units"] = ("mm", "mm")
    limits = img.metadata.get("contrast_limits")
    if limits is not None and not rgb:
        kwargs["contrast_limits"] = [float(limits[0]), float(limits[1])]
    return (data, kwargs, "image")
