"""What the plugin keeps in layer metadata, shared by the widgets and the writer (no Qt).

The lesion layer stores a hash of the mask the model wrote; a mask whose data no longer
matches it was edited by a person. The writer uses that to record a DICOM SEG's algorithm
type, the widgets to never overwrite a corrected mask.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

NOTE_KEY = "note"  # image layer metadata: the note shown to the user (sample data sets it)
MASK_HASH_KEY = "causalseg_mask_hash"  # what we last wrote, to tell user edits apart
SOURCE_KEY = "causalseg_source"  # lesion layer: image layer name and file, note, model


def mask_hash(mask: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(mask).data, digest_size=16).hexdigest()


def edited(metadata: dict[str, Any], data: Any) -> bool:
    """True when `data` is no longer what the plugin last wrote (or it never wrote it)."""
    written = metadata.get(MASK_HASH_KEY)
    return written is None or written != mask_hash(np.asarray(data))


def algorithm_type(metadata: dict[str, Any], data: Any) -> str:
    """DICOM's Segment Algorithm Type of a Labels layer: AUTOMATIC as the model made it,
    SEMIAUTOMATIC once edited, MANUAL when the plugin never segmented it."""
    if SOURCE_KEY not in metadata:
        return "MANUAL"
    return "SEMIAUTOMATIC" if edited(metadata, data) else "AUTOMATIC"
