"""Batch segmentation: which images, which note for each, where the outputs go, what to skip.

``causalseg segment`` is a thin loop over this module, so scripts get the same rules:

* inputs are files and folders; a folder contributes every readable image directly in
  it (content decides, so extension-less DICOM counts), sorted by name, hidden files not;
* notes come from a CSV with the columns ``image`` and ``note`` (``image`` is a file name,
  or a path: absolute, or relative to the CSV's folder or the current folder), with
  ``default_note`` for images the CSV does not list; every problem (no note, a row
  twice, missing columns, an output name used twice) is found before the model loads;
* outputs are ``<name>_lesion<ext>`` and ``<name>_confounders<ext>`` in one folder; an
  existing output is kept unless ``overwrite``, and an image whose outputs all exist is
  not segmented again, so an interrupted batch resumes where it stopped;
* one unreadable image does not stop the batch: its outcome carries the error.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import IMAGE_EXTENSIONS, can_read, read_image
from .images.dicom_seg import SegInfo
from .images.export import (
    FORMAT_EXTENSIONS,
    ExportOptions,
    require_format,
    write_confounders,
    write_lesion,
)

ProgressCallback = Callable[[int, int, Path], None]  # (done, total, image just finished)


@dataclass(frozen=True)
class BatchConfig:
    out_dir: Path
    fmt: str = "png"
    overwrite: bool = False
    default_note: str | None = None  # for images the notes CSV does not list
    notes_csv: Path | None = None
    model: str | None = None  # recorded in DICOM SEG's algorithm parameters


@dataclass(frozen=True)
class BatchItem:
    image: Path
    note: str
    mask_path: Path
    confounder_path: Path

    @property
    def outputs(self) -> tuple[Path, Path]:
        return (self.mask_path, self.confounder_path)


@dataclass
class BatchOutcome:
    """One image's fate: skipped (outputs existed), failed (`error`) or segmented."""

    item: BatchItem
    skipped: bool = False
    error: str | None = None
    loaded: Any = None  # LoadedImage
    result: Any = None  # SegmentationResult
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # existing outputs left alone


@dataclass(frozen=True)
class BatchPlan:
    items: list[BatchItem]
    unused_notes: list[str]  # CSV rows that matched no image

    def pending(self, overwrite: bool) -> list[BatchItem]:
        """Items that need the model: all with `overwrite`, else those missing an output."""
        return [it for it in self.items if overwrite or not all(p.exists() for p in it.outputs)]


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given and the readable images inside folders (sorted), without duplicates."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"image not found: {', '.join(missing)}")
    images: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir()
                           if p.is_file() and not p.name.startswith(".") and can_read(p))
            if not found:
                raise ValueError(f"{entry}: the folder holds no PNG, JPEG, TIFF or DICOM image")
            images.extend(found)
        elif can_read(entry):
            images.append(entry)
        else:
            raise ValueError(f"{entry}: not a PNG, JPEG, TIFF or DICOM file (content not recognised)")
    seen: set[Path] = set()
    unique = []
    for p in images:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def read_notes_csv(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """(row number, image, note) rows of a CSV with the columns ``image`` and ``note``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"notes file not found: {p}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            if "image" not in columns or "note" not in columns:
                raise ValueError(f"{p}: needs the columns 'image' and 'note' in its first row; found "
                                 f"{', '.join(repr(c) for c in columns) or 'nothing'}")
            rows = [(i, (row[columns["image"]] or "").strip(), (row[columns["note"]] or "").strip())
                    for i, row in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{p}: not a readable UTF-8 CSV file: {exc}") from exc
    for row, image, note in rows:
        if not image:
            raise ValueError(f"{p} row {row}: the image column is empty")
        if not note:
            raise ValueError(f"{p} row {row}: the note for {image} is empty")
    return rows


def match_notes(images: Sequence[Path], rows: Sequence[tuple[int, str, str]], csv_path: Path,
                default: str | None) -> tuple[dict[Path, str], list[str]]:
    """Each image's note (CSV row by path or file name, else `default`) and unmatched rows."""
    by_path = {img.resolve(): img for img in images}
    by_name: dict[str, list[Path]] = {}
    for img in images:
        by_name.setdefault(img.name, []).append(img)
    notes: dict[Path, str] = {}
    source_row: dict[Path, int] = {}
    unused = []
    for row, key, note in rows:
        if "/" in key or os.sep in key:  # a path: absolute, or from the CSV's or the current folder
            targets = {(base / key).resolve() for base in (csv_path.parent, Path.cwd())}
            matched = [by_path[t] for t in targets if t in by_path]
        else:
            matched = by_name.get(key, [])
        if len(matched) > 1:
            raise ValueError(f"{csv_path} row {row}: {key} names {len(matched)} images "
                             f"({', '.join(map(str, matched[:3]))}); give its path instead")
        if not matched:
            unused.append(f"row {row}: {key}")
            continue
        img = matched[0]
        if img in notes:
            raise ValueError(f"{csv_path} row {row}: {img} already has a note (row "
                             f"{source_row[img]}); list each image once")
        notes[img], source_row[img] = note, row
    without = [img for img in images if img not in notes]
    if without and default is None:
        shown = ", ".join(map(str, without[:5])) + (" ..." if len(without) > 5 else "")
        raise ValueError(f"no note for {len(without)} image(s): {shown}; add them to {csv_path} "
                         "or give --note as the default")
    for img in without:
        notes[img] = default
    return notes, unused


def plan_batch(paths: Sequence[str | os.PathLike], config: BatchConfig) -> BatchPlan:
    """Every image with its note and output paths, or one clear error before any work."""
    images = collect_images(paths)
    for img in images:
        require_format(config.fmt, img)
    if config.default_note is not None and not config.default_note.strip():
        raise ValueError("--note: the note is empty; type the radiology note")
    if config.notes_csv is not None:
        csv_path = Path(config.notes_csv)
        notes, unused = match_notes(images, read_notes_csv(csv_path), csv_path, config.default_note)
    elif config.default_note is None:
        raise ValueError("give --note (one note for every image) or --notes notes.csv (image,note)")
    else:
        notes, unused = dict.fromkeys(images, config.default_note), []
    ext = FORMAT_EXTENSIONS[config.fmt]
    out_dir = Path(config.out_dir)
    items, claimed = [], {}
    for img in images:
        name = output_name(img)
        item = BatchItem(img, notes[img], out_dir / f"{name}_lesion{ext}", out_dir / f"{name}_confounders{ext}")
        if item.mask_path in claimed:
            raise ValueError(f"{claimed[item.mask_path]} and {img} would both write {item.mask_path}; "
                             "rename one or segment them into different --out folders")
        claimed[item.mask_path] = img
        items.append(item)
    return BatchPlan(items, unused)


def output_name(image: Path) -> str:
    """The file's stem; the whole name when the suffix is not an image extension
    (DICOM files are often named by UID, e.g. ``1.2.840.113619.2.55``)."""
    return image.stem if image.suffix.lower() in IMAGE_EXTENSIONS else image.name


def run_batch(segmenter: Any, plan: BatchPlan, config: BatchConfig,
              on_progress: ProgressCallback | None = None) -> Iterator[BatchOutcome]:
    """Segment and write each planned image in turn, yielding its :class:`BatchOutcome`."""
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    total = len(plan.items)
    pending = set(plan.pending(config.overwrite))
    for done, item in enumerate(plan.items, start=1):
        if item not in pending:
            outcome = BatchOutcome(item, skipped=True, kept=list(item.outputs))
        else:
            try:
                outcome = _segment_one(segmenter, item, config)
            except ValueError as exc:  # unreadable image, unusable note, output appeared meanwhile
                outcome = BatchOutcome(item, error=str(exc))
        if on_progress is not None:
            on_progress(done, total, item.image)
        yield outcome


def _segment_one(segmenter: Any, item: BatchItem, config: BatchConfig) -> BatchOutcome:
    loaded = read_image(item.image)
    result = segmenter.segment(loaded.data, item.note)
    options = ExportOptions(
        fmt=config.fmt, overwrite=config.overwrite, spacing=loaded.spacing,
        source=item.image if config.fmt == "dicom-seg" else None,
        seg=SegInfo(note=item.note, model=config.model, threshold=result.threshold))
    outcome = BatchOutcome(item, loaded=loaded, result=result)
    for path, write, data in ((item.mask_path, write_lesion, result.mask),
                              (item.confounder_path, write_confounders, result.confounder)):
        if path.exists() and not config.overwrite:
            outcome.kept.append(path)
        else:
            write(path, data, options)
            outcome.written.append(path)
    return outcome
