"""Readers for QaTa-COV19 with text (three public layouts) and the plugin's annotation folder.

Layouts (see docs/method.md, "Data"):

* ``lvit``: ``{Train,Val,Test}_Folder/{img,labelcol}/`` plus Excel files with columns
  ``Image`` (the mask file name, ``mask_<image name>``) and ``Description``. LViT reads
  ``Train_Folder/Train_Val_text.xlsx`` for train+val and ``Test_Folder/Test_text.xlsx`` for
  test; per-split ``Train_text.xlsx`` / ``Val_text.xlsx`` are used when present. The folders
  decide membership (as in LViT), the Excel files only supply the text.
* ``mmi_unet`` (Ariadne's Thread / MMI-UNet): ``{Train,Test}/{Images,GTs}/`` plus
  ``prompt/{train,test}.csv`` with columns ``Image`` and ``Description``. As in their code,
  ``Image`` holds the MASK file name (``mask_covid_1.png``); the image is that name without
  the ``mask_`` prefix. The CSV decides membership and order; val = last 20% of train.csv.
* ``sgseg``: ``images/{train,valid,test}/{images,masks}/`` plus ``prompts/annotation.json``
  ``{split: [{"image_path": <mask file name>, "caption": ...}, ...]}``; the JSON decides
  membership and order (files that it does not list are ignored and reported in
  ``DatasetSplits.warnings``).
* ``annotations``: the plugin's own folder, ``cases/<name>/{image.png|image.tif, mask.png,
  note.txt[, meta.json]}``, written atomically by :class:`AnnotationStore`. A case's split
  is decided once, when it is added, and stored as ``meta.json``'s ``"split"``: every
  ``VAL_EVERY``-th case added is held out for validation, so validation cases never
  train and never move when the folder grows. Cases written before splits were stored
  get theirs by the same rule in name order (``AnnotationStore.assign_splits`` stores it).

A split without its own validation set gives its LAST ``val_fraction`` to val,
deterministically (``train = first int((1 - val_fraction) * n)``, exactly Ariadne's Thread's
``int(0.8 * n)``), never shuffled.

Checks: ``open_dataset`` always checks that every listed file exists (from one directory
listing per folder, no stat per file), that notes are non-empty and that index files parse.
With ``validate=True`` (the default) it also reads every image and mask header (PIL, no
pixel decode; about 1 s for all 9,258 QaTa pairs on a warm disk) and rejects size
mismatches. With ``validate=False`` that check happens lazily in :func:`load_case`.
Every problem raises :class:`DatasetError` naming the file and what to do about it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write_text
from ..images import ImageReadError, image_shape, read_image, read_lesion_mask, to_gray

LAYOUTS = ("lvit", "mmi_unet", "sgseg", "annotations")
SPLITS = ("train", "val", "test")
MASK_PREFIX = "mask_"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".dic")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_MAX_LISTED = 8  # problems listed in one error message before "... and N more"
#: Every VAL_EVERY-th case added to an annotation folder is held out for validation (20 %).
VAL_EVERY = 5


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
        key = _SPLIT_ALIASES.get(str(name).strip().lower())
        if key is None:
            raise DatasetError(
                f"Unknown split {name!r} for data set {self.root}: use one of 'train', 'val', 'test'."
            )
        return getattr(self, key)

    def sizes(self) -> dict[str, int]:
        """Number of cases per split, for logs and reports."""
        return {s: len(getattr(self, s)) for s in SPLITS}


# --------------------------------------------------------------------------- images


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


# --------------------------------------------------------------------------- folder helpers


def _child(folder: Path, *names: str) -> Path | None:
    """First existing child among ``names``, matched exactly and then case-insensitively."""
    for name in names:
        p = folder / name
        if p.exists():
            return p
    try:
        entries = {e.name.lower(): e.name for e in os.scandir(folder)}
    except OSError:
        return None
    for name in names:
        hit = entries.get(name.lower())
        if hit is not None:
            return folder / hit
    return None


class _DirIndex:
    """One listing of a folder for exact, then case-insensitive, file look-ups.

    The SGSeg copy holds byte-identical upper/lower-case duplicates of ~2,800 files (a macOS
    rename committed from a case-insensitive disk); exact matching picks the listed one, and
    a case-insensitive fallback keeps a case-folded copy (e.g. unpacked on macOS) readable.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            names = [e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()]
        except OSError as exc:
            raise DatasetError(f"Cannot list folder {folder} ({exc}); check that it exists.") from exc
        self.names = set(names)
        self._lower: dict[str, list[str]] = {}
        for n in sorted(names):
            self._lower.setdefault(n.lower(), []).append(n)

    def resolve(self, name: str) -> str | None:
        if name in self.names:
            return name
        hits = self._lower.get(name.lower())
        return hits[0] if hits else None

    def resolve_stem(self, name: str) -> str | None:
        """Same stem, any image extension: tolerates e.g. ``x.jpg`` with ``mask_x.png``."""
        hit = self.resolve(name)
        if hit is not None:
            return hit
        stem = Path(name).stem
        for suffix in IMAGE_SUFFIXES:
            hit = self.resolve(stem + suffix)
            if hit is not None:
                return hit
        return None

    def images(self) -> list[str]:
        return sorted(n for n in self.names if n.lower().endswith(IMAGE_SUFFIXES))


def _image_and_mask_dirs(folder: Path, images: str, masks: str, layout: str) -> tuple[Path, Path]:
    """A split folder's image and mask subfolders (names matched as `_child` does), or an
    error naming the one that is missing and where the layout expects it."""
    found = []
    for name in (images, masks):
        d = _child(folder, name)
        if d is None or not d.is_dir():
            raise DatasetError(
                f"{folder / name} is missing: the {layout} layout keeps a split's images in "
                f"{folder.name}/{images} and its masks in {folder.name}/{masks}."
            )
        found.append(d)
    return found[0], found[1]


def _names_from_key(key: str) -> tuple[str, str]:
    """(image name, mask name) from an index entry that holds the mask or the image name."""
    if key.lower().startswith(MASK_PREFIX):
        return key[len(MASK_PREFIX):], key
    return key, MASK_PREFIX + key


def _raise_collected(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    more = len(problems) - len(shown)
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + tail)


def _note_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value).strip()


def _tail_split(cases: list[Case], val_fraction: float) -> tuple[list[Case], list[Case]]:
    """Last ``val_fraction`` of the list becomes val: no shuffling, same answer every time."""
    k = int((1.0 - val_fraction) * len(cases))
    return cases[:k], cases[k:]


def _pair_index_entries(
    entries: Iterable[tuple[str, str, str]],
    img_dir: Path,
    mask_dir: Path,
    index_file: Path,
    split: str,
    warnings: list[str],
) -> list[Case]:
    """Cases from (key, note, where) rows of an index file, checked against both folders."""
    imgs, masks = _DirIndex(img_dir), _DirIndex(mask_dir)
    problems: list[str] = []
    cases: list[Case] = []
    seen: dict[str, str] = {}
    used_img: set[str] = set()
    used_mask: set[str] = set()
    for key, note, where in entries:
        key = key.strip()
        if not key:
            problems.append(f"{index_file} {where}: empty image name; fill it in or delete the row.")
            continue
        image_name, mask_name = _names_from_key(key)
        img = imgs.resolve_stem(image_name)
        msk = masks.resolve(mask_name)
        if img is None:
            problems.append(
                f"{index_file} {where} lists {key!r} but image {img_dir / image_name} is missing: "
                "copy the image there or delete the row."
            )
        if msk is None:
            problems.append(
                f"{index_file} {where} lists {key!r} but mask {mask_dir / mask_name} is missing: "
                "copy the mask there or delete the row."
            )
        if not note:
            problems.append(f"{index_file} {where}: empty description for {key!r}; write the note.")
        if img is None or msk is None or not note:
            continue
        name = Path(img).stem
        if name in seen:
            problems.append(
                f"{index_file} {where} repeats case {name!r} (first at {seen[name]}); delete one row."
            )
            continue
        seen[name] = where
        used_img.add(img)
        used_mask.add(msk)
        cases.append(Case(name, img_dir / img, mask_dir / msk, note))
    _raise_collected(problems, f"{split} split of {index_file}")
    extra = imgs.names - used_img, masks.names - used_mask
    if extra[0] or extra[1]:
        used_lower = {n.lower() for n in used_img | used_mask}
        case_dups = sum(n.lower() in used_lower for n in extra[0] | extra[1])
        dup_note = f" ({case_dups} differ from a listed file only in letter case)" if case_dups else ""
        warnings.append(
            f"{split}: {len(extra[0])} file(s) in {img_dir} and {len(extra[1])} in {mask_dir} are "
            f"not listed in {index_file} and were ignored{dup_note}."
        )
    return cases


# --------------------------------------------------------------------------- index files


def _read_table_rows(path: Path, rows: list[list[object]]) -> list[tuple[str, str, str]]:
    """(Image, Description, 'row N') from a header + rows table; header names case-insensitive."""
    if not rows:
        raise DatasetError(f"{path} is empty; it needs a header row with 'Image' and 'Description'.")
    header = [str(h).strip().lower() if h is not None else "" for h in rows[0]]
    missing = [c for c in ("image", "description") if c not in header]
    if missing:
        found = ", ".join(repr(str(h)) for h in rows[0] if h is not None) or "nothing"
        raise DatasetError(
            f"{path} has no column(s) {', '.join(repr(m.capitalize()) for m in missing)} (found: "
            f"{found}). Name the columns 'Image' (mask or image file name) and 'Description'."
        )
    ci, cd = header.index("image"), header.index("description")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        cells = list(row) + [None] * (max(ci, cd) + 1 - len(row))
        key, note = cells[ci], cells[cd]
        if (key is None or str(key).strip() == "") and _note_text(note) == "":
            continue  # blank line at the end of a sheet
        out.append(("" if key is None else str(key), _note_text(note), f"row {n}"))
    return out


def _read_excel(path: Path) -> list[tuple[str, str, str]]:
    try:
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            rows = [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    except Exception as exc:  # openpyxl raises zipfile, XML and key errors for broken files
        raise DatasetError(
            f"Cannot read Excel file {path} ({type(exc).__name__}: {exc}). Save it as .xlsx "
            "(Excel 2007+) with columns 'Image' and 'Description' in the first sheet."
        ) from exc
    return _read_table_rows(path, rows)


def _read_csv(path: Path) -> list[tuple[str, str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [list(r) for r in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(
            f"Cannot read CSV file {path} ({exc}). Save it as UTF-8 CSV with columns "
            "'Image' and 'Description'."
        ) from exc
    return _read_table_rows(path, rows)


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read JSON file {path} ({exc}); fix or re-create it.") from exc


# --------------------------------------------------------------------------- layout detection


def _signatures(folder: Path) -> list[str]:
    """Layouts whose marker folders/files are directly in ``folder``."""
    found = []
    if not folder.is_dir():
        return found
    cases = _child(folder, "cases")
    if cases is not None and cases.is_dir():
        found.append("annotations")
    prompts = _child(folder, "prompts")
    images = _child(folder, "images")
    if (prompts is not None and _child(prompts, "annotation.json") is not None) or (
        images is not None
        and any(
            (d := _child(images, s)) is not None and _child(d, "images") is not None
            for s in ("train", "valid", "val", "test")
        )
    ):
        found.append("sgseg")
    if any(_child(folder, f"{s}_Folder") is not None for s in ("Train", "Val", "Test")):
        found.append("lvit")
    prompt = _child(folder, "prompt")
    if (prompt is not None and prompt.is_dir()) or any(
        (d := _child(folder, s)) is not None and _child(d, "Images", "GTs") is not None
        for s in ("Train", "Test")
    ):
        found.append("mmi_unet")
    return found


def _locate(root: Path, layout: str | None = None) -> tuple[str, Path]:
    """(layout, folder) at ``root`` or up to two levels below it, e.g. for ``<download>/data/QaTa``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Data set folder {root} does not exist or is not a folder: check the path.")
    level = [root]
    for _ in range(3):
        hits = []
        for folder in level:
            sigs = _signatures(folder)
            if layout is not None:
                sigs = [s for s in sigs if s == layout]
            hits.extend((s, folder) for s in sigs)
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listing = "; ".join(f"{s} at {f}" for s, f in hits)
            raise DatasetError(
                f"{root} matches more than one layout ({listing}). Pass layout= one of {LAYOUTS} "
                "or point at the data set's own folder."
            )
        nxt = []
        for folder in level:
            try:
                nxt.extend(
                    Path(e.path) for e in sorted(os.scandir(folder), key=lambda e: e.name)
                    if e.is_dir() and not e.name.startswith(".")
                )
            except OSError:
                continue
        level = nxt[:200]  # a data set root is shallow; do not crawl a whole disk
        if not level:
            break
    want = f"the {layout!r} layout" if layout else "a known layout"
    raise DatasetError(
        f"{root} is not in {want}. Expected one of: LViT ({{Train,Val,Test}}_Folder/{{img,labelcol}}"
        " + *_text.xlsx), Ariadne/MMI-UNet ({Train,Test}/{Images,GTs} + prompt/{train,test}.csv), "
        "SGSeg (images/{train,valid,test}/{images,masks} + prompts/annotation.json) or an "
        "annotation folder (cases/<name>/image.png, mask.png, note.txt)."
    )


def detect_layout(root: str | os.PathLike) -> str:
    """Name of the layout of the data set at ``root`` (or up to two folders below it)."""
    return _locate(Path(root))[0]


# --------------------------------------------------------------------------- layout readers


def _read_lvit(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    folders = {s: _child(root, f"{s.capitalize()}_Folder") for s in SPLITS}
    # Excel search: split folder first, then the root, then Train_Folder (where LViT keeps
    # Train_Val_text.xlsx). Per-split files win over the shared train+val file.
    wanted = {
        "train": ["Train_text.xlsx", "Train_Val_text.xlsx"],
        "val": ["Val_text.xlsx", "Train_Val_text.xlsx"],
        "test": ["Test_text.xlsx"],
    }
    cache: dict[Path, list[tuple[str, str, str]]] = {}
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        folder = folders[split]
        if folder is None:
            continue
        places = [folder, root] + ([folders["train"]] if folders["train"] is not None else [])
        text_files = []
        for fname in wanted[split]:
            for place in places:
                p = _child(place, fname)
                if p is not None and p.is_file() and p not in text_files:
                    text_files.append(p)
        if not text_files:
            raise DatasetError(
                f"No text file for the {split} split of {root}: expected "
                f"{' or '.join(wanted[split])} in {folder} or {root}. Add the Excel file with "
                "columns 'Image' and 'Description'."
            )
        notes: dict[str, tuple[str, str]] = {}
        for p in text_files:
            if p not in cache:
                cache[p] = _read_excel(p)
            for key, note, where in cache[p]:
                k = key.strip().lower()
                if k not in notes:
                    notes[k] = (note, f"{p} {where}")
        img_dir, mask_dir = _image_and_mask_dirs(folder, "img", "labelcol", "LViT")
        out[split] = _pair_folders(img_dir, mask_dir, notes, split)
    if folders["val"] is None and out["train"]:
        out["train"], out["val"] = _tail_split(out["train"], val_fraction)
        warnings.append(f"No Val_Folder in {root}: val is the last {val_fraction:.0%} of train.")
    return out


def _pair_folders(
    img_dir: Path, mask_dir: Path, notes: dict[str, tuple[str, str]], split: str
) -> list[Case]:
    """Folder-defined membership (LViT): every image needs ``mask_<name>`` and a note."""
    imgs, masks = _DirIndex(img_dir), _DirIndex(mask_dir)
    problems: list[str] = []
    cases: list[Case] = []
    used_masks: set[str] = set()
    for img in imgs.images():
        msk = masks.resolve_stem(MASK_PREFIX + img)
        if msk is None:
            problems.append(
                f"image {img_dir / img} has no mask {mask_dir / (MASK_PREFIX + img)}: add the mask "
                "or move the image out of the folder."
            )
            continue
        used_masks.add(msk)
        hit = notes.get(msk.lower()) or notes.get(img.lower())
        note = hit[0] if hit else ""
        if not note:
            where = f" ({hit[1]})" if hit else ""
            problems.append(
                f"no description for {msk}{where}: add a row with Image={msk!r} and its "
                "Description to the text Excel file."
            )
            continue
        cases.append(Case(Path(img).stem, img_dir / img, mask_dir / msk, note))
    for msk in sorted(masks.names - used_masks):
        if msk.lower().endswith(IMAGE_SUFFIXES):
            problems.append(
                f"mask {mask_dir / msk} has no image in {img_dir}: add the image or remove the mask."
            )
    _raise_collected(problems, f"{split} split ({img_dir.parent})")
    return cases


def _read_mmi_unet(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    prompt = _child(root, "prompt")
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for split, folder_name in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        folder = _child(root, folder_name)
        csv_path = _child(prompt, f"{split}.csv") if prompt is not None else None
        if split == "val" and (folder is None or csv_path is None):
            continue  # the usual case: val comes from the tail of train.csv
        if folder is None and csv_path is None:
            continue
        if csv_path is None:
            raise DatasetError(
                f"{root / 'prompt' / f'{split}.csv'} is missing but {folder} exists: add the CSV "
                "with columns 'Image' and 'Description' (Ariadne's Thread / MMI-UNet layout)."
            )
        if folder is None:
            raise DatasetError(
                f"{csv_path} exists but {root / folder_name} does not: put the images in "
                f"{folder_name}/Images and the masks in {folder_name}/GTs."
            )
        img_dir, mask_dir = _image_and_mask_dirs(folder, "Images", "GTs", "Ariadne's Thread / MMI-UNet")
        out[split] = _pair_index_entries(
            _read_csv(csv_path), img_dir, mask_dir, csv_path, split, warnings
        )
    if not out["val"] and out["train"]:
        out["train"], out["val"] = _tail_split(out["train"], val_fraction)
    if not any(out.values()):
        raise DatasetError(
            f"No train.csv or test.csv in {root / 'prompt'}: add prompt/train.csv and prompt/test.csv."
        )
    return out


def _read_sgseg(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    ann_path = root / "prompts" / "annotation.json"
    prompts = _child(root, "prompts")
    if prompts is not None:
        ann_path = _child(prompts, "annotation.json") or ann_path
    if not ann_path.is_file():
        raise DatasetError(
            f"{ann_path} is missing: the SGSeg layout needs prompts/annotation.json with "
            '{"train": [{"image_path": ..., "caption": ...}], "valid": [...], "test": [...]}.'
        )
    data = _read_json(ann_path)
    if not isinstance(data, dict):
        raise DatasetError(
            f"{ann_path} must hold an object {{split: [entries]}}, not a {type(data).__name__}."
        )
    images = _child(root, "images") or root / "images"
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for key, entries in data.items():
        split = _SPLIT_ALIASES.get(str(key).lower())
        if split is None:
            warnings.append(f"{ann_path}: ignored unknown split {key!r}.")
            continue
        if not isinstance(entries, list):
            raise DatasetError(f"{ann_path}: split {key!r} must be a list of entries.")
        folder = _child(images, str(key), "valid" if split == "val" else split, "val" if split == "val" else split)
        if folder is None:  # a partial copy (e.g. only the test images): that split is empty
            warnings.append(
                f"{ann_path} lists split {key!r} but {images / str(key)} is missing: the "
                f"{split} split is left empty (its images belong in {images / str(key) / 'images'} "
                f"and masks in {images / str(key) / 'masks'})."
            )
            continue
        img_dir, mask_dir = _image_and_mask_dirs(folder, "images", "masks", "SGSeg")
        rows = []
        for i, e in enumerate(entries):
            where = f"[{key!r}][{i}]"
            if not isinstance(e, dict):
                raise DatasetError(f"{ann_path} {where} is not an object with image_path and caption.")
            rows.append((str(e.get("image_path") or ""), _note_text(e.get("caption")), where))
        out[split] = _pair_index_entries(rows, img_dir, mask_dir, ann_path, split, warnings)
    if not out["val"] and out["train"]:
        out["train"], out["val"] = _tail_split(out["train"], val_fraction)
        warnings.append(f"{ann_path} has no 'valid' split: val is the last {val_fraction:.0%} of train.")
    return out


def _read_annotations(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    """Each case in its stored split (``val_fraction`` does not apply: splits are fixed)."""
    store = AnnotationStore(root, create=False)
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    splits = store.splits()
    for case in store.cases():
        out[splits[case.name]].append(case)
    return out


def split_for_new_case(n_cases: int, n_val: int) -> str:
    """The split of the next case added to a folder holding `n_cases`, `n_val` of them in
    validation: 'val' for every VAL_EVERY-th case, so the first cases always train."""
    return "val" if n_val < (n_cases + 1) // VAL_EVERY else "train"


_READERS = {
    "lvit": _read_lvit,
    "mmi_unet": _read_mmi_unet,
    "sgseg": _read_sgseg,
    "annotations": _read_annotations,
}


def open_dataset(
    root: str | os.PathLike,
    layout: str | None = None,
    val_fraction: float = 0.2,
    validate: bool = True,
) -> DatasetSplits:
    """Open a data set in any known layout (auto-detected unless ``layout`` is given).

    ``val_fraction`` applies only where the layout has no val set of its own. ``validate``
    reads every image and mask header to reject size mismatches now rather than mid-training.
    """
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"Unknown layout {layout!r} for {root}: use one of {LAYOUTS} or None.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction={val_fraction!r} for {root}: it must be in [0, 1).")
    found_layout, folder = _locate(Path(root), layout)
    warnings: list[str] = []
    splits = _READERS[found_layout](folder, float(val_fraction), warnings)
    ds = DatasetSplits(folder, found_layout, splits["train"], splits["val"], splits["test"], warnings)
    if not (ds.train or ds.val or ds.test):
        raise DatasetError(f"{folder} ({found_layout} layout) holds no cases: add images, masks and notes.")
    if validate:
        problems = []
        for split in SPLITS:
            for case in getattr(ds, split):
                try:
                    check_case_sizes(case)
                except DatasetError as exc:
                    problems.append(str(exc))
        _raise_collected(problems, f"Image/mask check of {folder}")
    return ds


# --------------------------------------------------------------------------- annotation store

_UNSAFE = re.compile(r"[^\w.-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_TMP, _OLD = ".tmp-", ".old-"
_STALE_TMP_S = 24 * 3600


def safe_case_name(name: str) -> str:
    """A folder name that cannot escape the cases folder (no separators, no leading dots)."""
    cleaned = _UNSAFE.sub("_", str(name).strip()).strip("._ ")[:120]
    if not cleaned:
        raise DatasetError(
            f"Case name {name!r} has no usable characters; use letters, digits, '-', '_' or '.'."
        )
    if cleaned.split(".")[0].lower() in _RESERVED:
        cleaned = "_" + cleaned
    return cleaned


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write_image(folder: Path, image: np.ndarray) -> str:
    """8-bit as PNG (lossless, small); 16-bit, other integers and float as TIFF (exact values)."""
    if image.dtype == np.uint8:
        _fsync_write(folder / "image.png", lambda f: Image.fromarray(image).save(f, format="PNG"))
        return "image.png"
    import tifffile

    photometric = "rgb" if image.ndim == 3 else "minisblack"
    _fsync_write(
        folder / "image.tif",
        lambda f: tifffile.imwrite(f, image, photometric=photometric),
    )
    return "image.tif"


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object; fix or delete it.")
    return data


def _meta_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _split_name(value: object, where: str) -> str:
    """'train', 'val' or 'test' for a stored split (aliases such as 'valid' allowed)."""
    split = _SPLIT_ALIASES.get(str(value).lower())
    if split is None:
        raise DatasetError(f"{where}: unknown split {value!r}; use 'train', 'val' or 'test'.")
    return split


def _next_split(splits: dict[str, str]) -> str:
    """The split of the next case added to a folder whose cases have `splits`."""
    return split_for_new_case(len(splits), list(splits.values()).count("val"))


def _write_mask(path: Path, mask: np.ndarray) -> None:
    data = (np.asarray(mask) > 0).astype(np.uint8)  # 0/1, the package's convention (images.masks)
    _fsync_write(path, lambda f: Image.fromarray(data).save(f, format="PNG"))


def _write_text(path: Path, text: str) -> None:
    _fsync_write(path, lambda f: f.write(text.encode("utf-8")))


class AnnotationStore:
    """The plugin's annotation folder: ``<root>/cases/<name>/{image.*, mask.png, note.txt, meta.json}``.

    Writes are atomic: a case is staged in a hidden ``cases/.tmp-*`` folder and renamed into
    place only when every file is complete, so readers never see a half-written case.
    Overwriting first renames the old case to a hidden ``.old-*`` backup and restores it if
    the swap fails; a backup orphaned by a crash is restored when the store is next opened.
    """

    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root).expanduser()
        self.cases_dir = self.root / "cases"
        if create:
            try:
                self.cases_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatasetError(
                    f"Cannot create annotation folder {self.cases_dir} ({exc}); choose a writable folder."
                ) from exc
        elif not self.cases_dir.is_dir():
            raise DatasetError(
                f"{self.cases_dir} does not exist: {self.root} is not an annotation folder."
            )
        self._recover()

    def _recover(self) -> None:
        """Restore backups orphaned by a crash mid-swap; drop day-old staging folders."""
        if not self.cases_dir.is_dir():
            return
        now = time.time()
        for entry in sorted(os.scandir(self.cases_dir), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name.startswith(_OLD):
                name = entry.name[len(_OLD):].rsplit("-", 1)[0]
                target = self.cases_dir / name
                try:
                    if target.exists():
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.replace(entry.path, target)
                except OSError:
                    continue
            elif entry.name.startswith(_TMP):
                try:
                    if now - entry.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(entry.path, ignore_errors=True)
                except OSError:
                    continue

    def add_case(
        self,
        name: str,
        image: np.ndarray,
        mask: np.ndarray,
        note: str,
        meta: dict | None = None,
    ) -> Case:
        """Write (or replace) one case atomically and return it."""
        safe = safe_case_name(name)
        final = self.cases_dir / safe
        note = _note_text(note)
        if not note:
            raise DatasetError(
                f"Case {safe!r} ({final}): the note is empty; describe the lesion "
                "(e.g. 'bilateral pulmonary infection, two infected areas, ...')."
            )
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise DatasetError(
                f"Case {safe!r} ({final}): image shape {image.shape} is neither 2-D nor RGB(A)."
            )
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise DatasetError(
                f"Case {safe!r} ({final}): mask shape {mask.shape} does not match image shape "
                f"{image.shape[:2]}; draw the mask on the same image."
            )
        meta = dict(meta or {})
        if "split" not in meta:  # a replaced case keeps its split; a new one gets the next
            splits = self.splits()
            meta["split"] = splits.get(safe) if final.is_dir() else None
            meta["split"] = meta["split"] or _next_split(splits)
        else:
            _split_name(meta["split"], f"Case {safe!r}")
        meta_text = None
        if meta:
            try:
                meta_text = _meta_text(meta)
            except (TypeError, ValueError) as exc:
                raise DatasetError(
                    f"Case {safe!r}: meta for {final / 'meta.json'} is not JSON-serialisable ({exc}); "
                    "use plain numbers, strings, lists and dicts."
                ) from exc
        self.cases_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cases_dir / f"{_TMP}{safe}-{uuid.uuid4().hex[:12]}"
        try:
            tmp.mkdir()
            image_file = _write_image(tmp, image)
            _write_mask(tmp / "mask.png", mask)
            _write_text(tmp / "note.txt", note + "\n")
            if meta_text is not None:
                _write_text(tmp / "meta.json", meta_text)
            self._swap_into_place(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(
                f"Could not write case {safe!r} to {final} ({exc}); the previous version, if any, "
                "is unchanged. Check free disk space and write permission."
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Case(safe, final / image_file, final / "mask.png", note)

    def _swap_into_place(self, tmp: Path, final: Path) -> None:
        if not final.exists():
            os.replace(tmp, final)
            return
        backup = self.cases_dir / f"{_OLD}{final.name}-{uuid.uuid4().hex[:12]}"
        os.replace(final, backup)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(backup, final)
            raise
        shutil.rmtree(backup, ignore_errors=True)

    def cases(self) -> list[Case]:
        """All complete cases, sorted by name (hidden staging/backup folders are skipped)."""
        if not self.cases_dir.is_dir():
            return []
        names = sorted(
            e.name for e in os.scandir(self.cases_dir) if e.is_dir() and not e.name.startswith(".")
        )
        return [self._read_case(self.cases_dir / n) for n in names]

    def case(self, name: str) -> Case:
        """One case by name."""
        folder = self.cases_dir / safe_case_name(name)
        if not folder.is_dir():
            raise DatasetError(f"No case {name!r} in {self.cases_dir}.")
        return self._read_case(folder)

    def meta(self, name: str) -> dict:
        """The case's meta.json as a dict ({} when absent)."""
        return _read_meta(self.cases_dir / safe_case_name(name) / "meta.json")

    def _stored_splits(self) -> dict[str, str | None]:
        """Case name -> stored split ('train', 'val', 'test') or None, in name order."""
        out: dict[str, str | None] = {}
        for case in self.cases():
            meta_path = case.image_path.parent / "meta.json"
            stored = _read_meta(meta_path).get("split")
            out[case.name] = None if stored is None else _split_name(stored, str(meta_path))
        return out

    def splits(self, stored: dict[str, str | None] | None = None) -> dict[str, str]:
        """Every case's split: the stored one, or for a case written before splits were
        stored, the one `split_for_new_case` gives it in name order (see assign_splits)."""
        out: dict[str, str] = {}
        n_val = 0
        for name, split in (self._stored_splits() if stored is None else stored).items():
            out[name] = split or split_for_new_case(len(out), n_val)
            n_val += out[name] == "val"
        return out

    def next_split(self) -> str:
        """The split the next added case gets."""
        return _next_split(self.splits())

    def assign_splits(self) -> list[str]:
        """Store a split in the meta.json of every case that has none (written atomically),
        so that later cases cannot move it; returns the names of the cases it wrote."""
        stored = self._stored_splits()
        final = self.splits(stored)
        written = []
        for name, split in stored.items():
            if split is None:
                meta = {**self.meta(name), "split": final[name]}
                atomic_write_text(self.cases_dir / name / "meta.json", _meta_text(meta))
                written.append(name)
        return written

    def _read_case(self, folder: Path) -> Case:
        image = next(
            (folder / n for n in ("image.png", "image.tif", "image.tiff") if (folder / n).is_file()),
            None,
        )
        if image is None:
            raise DatasetError(
                f"Case folder {folder} has no image.png or image.tif: add the image or delete the folder."
            )
        mask = folder / "mask.png"
        if not mask.is_file():
            raise DatasetError(f"Case folder {folder} has no mask.png: add the mask or delete the folder.")
        note_path = folder / "note.txt"
        try:
            note = note_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError as exc:
            raise DatasetError(f"{note_path} is missing: write the case's note there.") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"Cannot read {note_path} ({exc}); save it as UTF-8 text.") from exc
        if not note:
            raise DatasetError(f"{note_path} is empty: write the note that describes the lesion.")
        return Case(folder.name, image, mask, note)
