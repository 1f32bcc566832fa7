"""napari writer for Labels layers over :func:`napari_causalseg.engine.images.write_mask`.

Writing is atomic (temp file + rename) so saving over a mask a user spent an
hour correcting can never leave it half-written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .engine.images import write_mask


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer to .png/.tif/.tiff; returns the written path(s)."""
    if isinstance(data, list | tuple):  # multiscale labels: the full-resolution level
        data = data[0]
    return [write_mask(os.fspath(path), np.asarray(data))]
