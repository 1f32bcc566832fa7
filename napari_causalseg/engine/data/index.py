"""Finding a data set's files: folder listings (exact, then case-insensitive names), the
index files that list cases with their notes (Excel, CSV, JSON) and the pairing of index
entries with the image and mask folders.

Folders are listed once each (no stat per file), so checking every entry of QaTa-COV19's
9,258 pairs stays fast.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .cases import Case, DatasetError, note_text, raise_collected

MASK_PREFIX = "mask_"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".dic")


def find_child(folder: Path, *names: str) -> Path | None:
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


class DirIndex:
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
        """The listed name equal to ``name``, else one equal to it but for letter case."""
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
        """Listed files with an image suffix, sorted."""
        return sorted(n for n in self.names if n.lower().endswith(IMAGE_SUFFIXES))


def image_and_mask_dirs(folder: Path, images: str, masks: str, layout: str) -> tuple[Path, Path]:
    """A split folder's image and mask subfolders (names matched as `find_child` does), or an
    error naming the one that is missing and where the layout expects it."""
    found = []
    for name in (images, masks):
        d = find_child(folder, name)
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


def pair_index_entries(
    entries: Iterable[tuple[str, str, str]],
    img_dir: Path,
    mask_dir: Path,
    index_file: Path,
    split: str,
    warnings: list[str],
) -> list[Case]:
    """Cases from (key, note, where) rows of an index file, checked against both folders."""
    imgs, masks = DirIndex(img_dir), DirIndex(mask_dir)
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
    raise_collected(problems, f"{split} split of {index_file}")
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


def pair_folders(
    img_dir: Path, mask_dir: Path, notes: dict[str, tuple[str, str]], split: str
) -> list[Case]:
    """Folder-defined membership (LViT): every image needs ``mask_<name>`` and a note."""
    imgs, masks = DirIndex(img_dir), DirIndex(mask_dir)
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
    raise_collected(problems, f"{split} split ({img_dir.parent})")
    return cases


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
        if (key is None or str(key).strip() == "") and note_text(note) == "":
            continue  # blank line at the end of a sheet
        out.append(("" if key is None else str(key), note_text(note), f"row {n}"))
    return out


def read_excel(path: Path) -> list[tuple[str, str, str]]:
    """(Image, Description, 'row N') rows of the first sheet of an .xlsx file."""
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


def read_csv(path: Path) -> list[tuple[str, str, str]]:
    """(Image, Description, 'row N') rows of a UTF-8 CSV file (a BOM is allowed)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [list(r) for r in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(
            f"Cannot read CSV file {path} ({exc}). Save it as UTF-8 CSV with columns "
            "'Image' and 'Description'."
        ) from exc
    return _read_table_rows(path, rows)


def read_json(path: Path) -> object:
    """A JSON file's content; an unreadable file is a DatasetError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read JSON file {path} ({exc}); fix or re-create it.") from exc
