"""The plugin's annotation folder, written by :class:`AnnotationStore` and read back as the
``annotations`` layout: ``cases/<name>/{image.png|image.tif, mask.png, note.txt[, meta.json]}``.

Writes are atomic. A case's split is decided once, when it is added, and stored as
``meta.json``'s ``"split"``: every ``VAL_EVERY``-th case added is held out for validation,
so validation cases never train and never move when the folder grows. Cases written
before splits were stored get theirs by the same rule in name order
(``AnnotationStore.assign_splits`` stores it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write_text
from .cases import SPLIT_ALIASES, Case, DatasetError, note_text
from .index import read_json

#: Every VAL_EVERY-th case added to an annotation folder is held out for validation (20 %).
VAL_EVERY = 5

_UNSAFE = re.compile(r"[^\w.-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_TMP, _OLD = ".tmp-", ".old-"
_STALE_TMP_S = 24 * 3600


def split_for_new_case(n_cases: int, n_val: int) -> str:
    """The split of the next case added to a folder holding `n_cases`, `n_val` of them in
    validation: 'val' for every VAL_EVERY-th case, so the first cases always train."""
    return "val" if n_val < (n_cases + 1) // VAL_EVERY else "train"


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
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object; fix or delete it.")
    return data


def _meta_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _split_name(value: object, where: str) -> str:
    """'train', 'val' or 'test' for a stored split (aliases such as 'valid' allowed)."""
    split = SPLIT_ALIASES.get(str(value).lower())
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
        note = note_text(note)
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
