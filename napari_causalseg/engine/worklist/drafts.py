"""Masks of images left before they were saved, so moving on or closing loses no work.

``<annotation folder>/worklists/<id>/drafts/<item hash>.png``, written atomically; a draft
is dropped once its image is saved. Drafts never enter ``cases/``, so fine-tuning only
ever sees saved corrections.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..images import ImageReadError, read_lesion_mask, write_mask
from .items import WorklistError


class DraftStore:
    """One PNG mask per worklist item key."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".png")

    def put(self, key: str, mask: np.ndarray) -> Path:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise WorklistError(f"A lesion mask must be 2-D, got shape {mask.shape}.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return Path(write_mask(self.path(key), (mask > 0).astype(np.uint8)))
        except OSError as exc:
            raise WorklistError(f"Cannot keep the mask of {key} in {self.folder} ({exc}); "
                                "check free space and write permission.") from exc

    def get(self, key: str) -> np.ndarray | None:
        """The kept mask (bool) or None."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return read_lesion_mask(path)
        except ImageReadError as exc:
            raise WorklistError(f"The kept mask of {key} ({path}) is damaged ({exc}); delete it "
                                "to start that image afresh.") from exc

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def drop(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
