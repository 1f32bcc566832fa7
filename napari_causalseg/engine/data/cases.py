"""Cases and splits of a data set, the one error type of the data readers, and pixel
access to a case through the image stack (engine/images).

Every data problem raises :class:`DatasetError` naming the file and what to do about it;
`raise_collected` lists many problems in one error, so a user fixes a folder in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..images import ImageReadError, image_shape, read_image, read_lesion_mask, to_gray

SPLITS = ("train", "val", "test")
#: Split names as data sets spell them -> ours.
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_MAX_LISTED = 8  # problems listed in one error message before "... and N more"


class DatasetError(ValueError):
    """A data set or annotation folder problem; the message names the file and the fix."""


@dataclass(frozen=True)
class Case:
    """One image, its lesion mask and the note that describes the lesion."""

    name: str
    image_path: Path
    mask_path: Path
    note: str


@dataclass
class DatasetSplits:
    """The train/val/test cases of one data set, plus non-fatal findings in ``warnings``."""

    root: Path
    layout: str
    train: list[Case]
    val: list[Case]
    test: list[Case]
    warnings: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Case]:
        """Cases of ``name`` ('train', 'val' or 'test'; 'valid'/'validation' mean 'val')."""
        key = SPLIT_ALIASES.get(str(name).strip().lower())
        if key is None:
            raise DatasetError(
                f"Unknown split {name!r} for data set {self.root}: use one of 'train', 'val', 'test'."
            )
        return getattr(self, key)

    def sizes(self) -> dict[str, int]:
        """Number of cases per split, for logs and reports."""
        return {s: len(getattr(self, s)) for s in SPLITS}


def raise_collected(problems: list[str], what: str) -> None:
    """One DatasetError listing ``problems`` (the first few and a count), if there are any."""
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    more = len(problems) - len(shown)
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + tail)


def note_text(value: object) -> str:
    """A note from an index cell or a text field: stripped; empty, None and NaN cells are ''."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value).strip()


def _image_error(path: Path, what: str, exc: ImageReadError) -> DatasetError:
    if not path.exists():
        return DatasetError(f"{what.capitalize()} file {path} does not exist: check the path.")
    return DatasetError(f"Cannot read {what}: {exc}")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as a 2-D array through the image stack (DICOM included, polarity and
    EXIF orientation applied); RGB(A) becomes BT.601 luminance in the input's dtype."""
    path = Path(path)
    try:
        return to_gray(read_image(path).data, path)
    except ImageReadError as exc:
        raise _image_error(path, "image", exc) from exc


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as a 2-D bool array (any channel value > 0 is lesion)."""
    path = Path(path)
    try:
        return read_lesion_mask(path)
    except ImageReadError as exc:
        raise _image_error(path, "mask", exc) from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the file header only, so thousands of files check in a second."""
    path = Path(path)
    try:
        return image_shape(path)
    except ImageReadError as exc:
        raise _image_error(path, "image header", exc) from exc


def check_case_sizes(case: Case) -> None:
    """Raise DatasetError naming both files when image and mask differ in size (header read)."""
    try:
        hi, hm = image_size(case.image_path), image_size(case.mask_path)
    except DatasetError as exc:
        raise DatasetError(f"Case {case.name!r}: {exc}") from exc
    if hi != hm:
        raise _size_error(case, hi, hm)


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Image (2-D) and bool mask of a case; errors name the case, a size mismatch both files."""
    try:
        image = load_image(case.image_path)
        mask = load_mask(case.mask_path)
    except DatasetError as exc:
        raise DatasetError(f"Case {case.name!r}: {exc}") from exc
    if image.shape != mask.shape:
        raise _size_error(case, image.shape, mask.shape)
    return image, mask


def _size_error(case: Case, hi: Sequence[int], hm: Sequence[int]) -> DatasetError:
    return DatasetError(
        f"Case {case.name!r}: image {case.image_path} is {hi[1]}x{hi[0]} (WxH) but mask "
        f"{case.mask_path} is {hm[1]}x{hm[0]}; the mask must match its image pixel for pixel. "
        "Re-export the mask at the image's size or remove the case."
    )
