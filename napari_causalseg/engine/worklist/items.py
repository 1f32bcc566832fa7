"""What a worklist goes through: the X-rays of a folder or the cases of a data set, in order.

A folder is walked with its subfolders (DICOM exports nest patient/study/series), and a
file is taken when its content is an image this package reads, so extension-less DICOM is
found. Skipped: hidden files and folders, the annotation folder, ``DICOMDIR`` indexes, and
masks (``mask_*`` files and the mask folders of the known layouts: ``labelcol``, ``masks``,
``GTs``). A data set in a layout the readers know gives its train, val and test cases in
the data set's own order, with its captions as notes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..data.cases import DatasetError
from ..data.layouts import detect_layout, open_dataset
from ..images import IMAGE_EXTENSIONS, ImageReadError, image_shape, sniff_format

KINDS = ("auto", "folder", "dataset")
_DIGITS = re.compile(r"(\d+)")


class WorklistError(ValueError):
    """A worklist problem the user can fix; the message says how."""


class ItemState(str, Enum):
    """Where an image stands: only SAVED means its mask is in the annotation folder."""

    NEW = "new"
    SEGMENTED = "segmented"  # the model's mask, untouched
    CORRECTED = "corrected"  # the mask was edited by hand
    SAVED = "saved"


@dataclass
class WorklistItem:
    """One X-ray of the worklist."""

    key: str  # path relative to the source, '/'-separated: stable across sessions
    image_path: Path
    caption: str = ""  # the data set's note; "" for a plain folder
    state: ItemState = ItemState.NEW
    case: str | None = None  # the annotation folder's case, once saved

    @property
    def name(self) -> str:
        """The file name without an image extension (UID-named DICOM keeps its dots)."""
        p = Path(self.key)
        return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


@dataclass(frozen=True)
class ScanConfig:
    """How a source becomes items. ``kind``: 'auto' (a data set when the readers know its
    layout, else a folder), 'folder' or 'dataset'; ``layout`` forces a data set layout."""

    kind: str = "auto"
    layout: str | None = None
    max_items: int = 100_000  # a worklist of a whole disk is a mistake, not a plan
    mask_dirs: tuple[str, ...] = ("labelcol", "masks", "gts")


def natural_key(text: str) -> tuple:
    """'img2' before 'img10', case-insensitively."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(text))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_image(path: Path) -> bool | None:
    """True for an image file, None for a DICOM object without an image (a report, a
    presentation state), False for anything else; reads a DICOM header, not its pixels."""
    fmt = sniff_format(path)
    if fmt != "dicom":
        return fmt is not None
    try:
        image_shape(path)
    except ImageReadError:
        return None
    return True


def scan_folder(folder: Path, exclude: Path | None = None, config: ScanConfig = ScanConfig(),
                warnings: list[str] | None = None) -> list[WorklistItem]:
    """Every readable image under ``folder``, sorted naturally by relative path; DICOM
    objects without an image are counted in ``warnings``."""
    found: list[str] = []
    no_image = 0
    mask_dirs = {d.lower() for d in config.mask_dirs}
    for top, dirs, files in os.walk(folder, onerror=None, followlinks=False):
        here = Path(top)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d.lower() not in mask_dirs
                   and not (exclude is not None and _inside((here / d).resolve(), exclude))]
        for f in files:
            if f.startswith(".") or f.lower().startswith("mask_") or f.upper() == "DICOMDIR":
                continue
            kind = _is_image(here / f)
            no_image += kind is None
            if kind:
                found.append((here / f).relative_to(folder).as_posix())
                if len(found) > config.max_items:
                    raise WorklistError(
                        f"{folder} holds more than {config.max_items} images; choose the folder "
                        "of the study set itself.")
    if no_image and warnings is not None:
        warnings.append(f"{no_image} DICOM file(s) in {folder} hold no image (reports, presentation "
                        "states) and were left out.")
    found.sort(key=lambda k: tuple(natural_key(part) for part in k.split("/")))
    return [WorklistItem(key, folder / key) for key in found]


def dataset_items(root: Path, config: ScanConfig = ScanConfig()) -> tuple[list[WorklistItem], str, list[str]]:
    """(items, layout, warnings) of a data set: train, val, then test, captions as notes."""
    ds = open_dataset(root, layout=config.layout, validate=False)
    items = []
    for split in ("train", "val", "test"):
        for case in ds.split(split):
            path = Path(case.image_path)
            try:
                key = path.relative_to(root).as_posix()
            except ValueError:  # not below the root (cannot happen with the readers): absolute
                key = path.as_posix()
            items.append(WorklistItem(key, path, caption=case.note))
    # how the readers split train/val does not matter to a worklist
    return items, ds.layout, [w for w in ds.warnings if "val is the last" not in w]


def _is_dataset(source: Path, annotations: Path) -> bool:
    """True when the readers recognise a layout, unless it is only our annotation folder."""
    try:
        layout = detect_layout(source)
    except DatasetError:
        return False
    return not (layout == "annotations" and _inside(annotations, source))


def collect_items(source: Path, annotations: Path, config: ScanConfig = ScanConfig()
                  ) -> tuple[list[WorklistItem], str, str | None, list[str]]:
    """(items, kind, layout, warnings) of ``source``; both paths already resolved."""
    if config.kind not in KINDS:
        raise WorklistError(f"Unknown worklist kind {config.kind!r}: use one of {KINDS}.")
    if not source.is_dir():
        raise WorklistError(f"{source} is not a folder: choose the folder of X-rays or the data set.")
    if _inside(source, annotations):
        raise WorklistError(
            f"{source} is inside the annotation folder {annotations}: choose the X-rays to annotate, "
            "or another annotation folder.")
    if config.kind == "dataset" or config.layout or (config.kind == "auto" and _is_dataset(source, annotations)):
        items, layout, warnings = dataset_items(source, config)
        return items, "dataset", layout, warnings
    warnings: list[str] = []
    items = scan_folder(source, exclude=annotations, config=config, warnings=warnings)
    if not items:
        raise WorklistError(
            f"{source} holds no image this plugin reads (PNG, JPEG, TIFF, BMP or DICOM, with or "
            "without extension) and no data set in a known layout.")
    return items, "folder", None, warnings
