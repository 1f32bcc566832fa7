"""Data set layouts: detecting which one a folder holds and reading its train/val/test
cases. QaTa-COV19 with text ships in three public layouts, each read as its project's
code reads it:

* ``lvit`` (LViT, github.com/HUANGLIZI/LViT): ``{Train,Val,Test}_Folder/{img,labelcol}/``
  plus Excel files with columns ``Image`` (the mask file name, ``mask_<image name>``) and
  ``Description``. LViT reads ``Train_Folder/Train_Val_text.xlsx`` for train+val and
  ``Test_Folder/Test_text.xlsx`` for test; per-split ``Train_text.xlsx`` /
  ``Val_text.xlsx`` are used when present. The folders decide membership (as in LViT), the
  Excel files only supply the text.
* ``mmi_unet`` (Ariadne's Thread, github.com/Junelin2333/LanGuideMedSeg-MICCAI2023, and
  MMI-UNet, github.com/nguyenpbui/MMI-UNet): ``{Train,Test}/{Images,GTs}/`` plus
  ``prompt/{train,test}.csv`` with columns ``Image`` and ``Description``. As in their code,
  ``Image`` holds the MASK file name (``mask_covid_1.png``); the image is that name without
  the ``mask_`` prefix. The CSV decides membership and order; val = last 20% of train.csv.
* ``sgseg`` (SGSeg, github.com/ShuchangYe-bib/SGSeg): ``images/{train,valid,test}/{images,masks}/``
  plus ``prompts/annotation.json``
  ``{split: [{"image_path": <mask file name>, "caption": ...}, ...]}``; the JSON decides
  membership and order (files that it does not list are ignored and reported in
  ``DatasetSplits.warnings``).
* ``annotations``: the plugin's own folder (see :mod:`.annotations`); each case stays in
  the split it was given when added.

A split without its own validation set gives its LAST ``val_fraction`` to val,
deterministically (``train = first int((1 - val_fraction) * n)``, exactly Ariadne's Thread's
``int(0.8 * n)``), never shuffled.

Checks: ``open_dataset`` always checks that every listed file exists (from one directory
listing per folder, no stat per file), that notes are non-empty and that index files parse.
With ``validate=True`` (the default) it also reads every image and mask header (PIL, no
pixel decode; about 1 s for all 9,258 QaTa pairs on a warm disk) and rejects size
mismatches. With ``validate=False`` that check happens lazily in :func:`.cases.load_case`.
Every problem raises :class:`.cases.DatasetError` naming the file and what to do about it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .annotations import AnnotationStore
from .cases import (
    SPLIT_ALIASES,
    SPLITS,
    Case,
    DatasetError,
    DatasetSplits,
    check_case_sizes,
    note_text,
    raise_collected,
)
from .index import (
    find_child,
    image_and_mask_dirs,
    pair_folders,
    pair_index_entries,
    read_csv,
    read_excel,
    read_json,
)

LAYOUTS = ("lvit", "mmi_unet", "sgseg", "annotations")


def _signatures(folder: Path) -> list[str]:
    """Layouts whose marker folders/files are directly in ``folder``."""
    found = []
    if not folder.is_dir():
        return found
    cases = find_child(folder, "cases")
    if cases is not None and cases.is_dir():
        found.append("annotations")
    prompts = find_child(folder, "prompts")
    images = find_child(folder, "images")
    if (prompts is not None and find_child(prompts, "annotation.json") is not None) or (
        images is not None
        and any(
            (d := find_child(images, s)) is not None and find_child(d, "images") is not None
            for s in ("train", "valid", "val", "test")
        )
    ):
        found.append("sgseg")
    if any(find_child(folder, f"{s}_Folder") is not None for s in ("Train", "Val", "Test")):
        found.append("lvit")
    prompt = find_child(folder, "prompt")
    if (prompt is not None and prompt.is_dir()) or any(
        (d := find_child(folder, s)) is not None and find_child(d, "Images", "GTs") is not None
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


def _tail_split(cases: list[Case], val_fraction: float) -> tuple[list[Case], list[Case]]:
    """Last ``val_fraction`` of the list becomes val: no shuffling, same answer every time."""
    k = int((1.0 - val_fraction) * len(cases))
    return cases[:k], cases[k:]


def _read_lvit(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    folders = {s: find_child(root, f"{s.capitalize()}_Folder") for s in SPLITS}
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
                p = find_child(place, fname)
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
                cache[p] = read_excel(p)
            for key, note, where in cache[p]:
                k = key.strip().lower()
                if k not in notes:
                    notes[k] = (note, f"{p} {where}")
        img_dir, mask_dir = image_and_mask_dirs(folder, "img", "labelcol", "LViT")
        out[split] = pair_folders(img_dir, mask_dir, notes, split)
    if folders["val"] is None and out["train"]:
        out["train"], out["val"] = _tail_split(out["train"], val_fraction)
        warnings.append(f"No Val_Folder in {root}: val is the last {val_fraction:.0%} of train.")
    return out


def _read_mmi_unet(root: Path, val_fraction: float, warnings: list[str]) -> dict[str, list[Case]]:
    prompt = find_child(root, "prompt")
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for split, folder_name in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        folder = find_child(root, folder_name)
        csv_path = find_child(prompt, f"{split}.csv") if prompt is not None else None
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
        img_dir, mask_dir = image_and_mask_dirs(folder, "Images", "GTs", "Ariadne's Thread / MMI-UNet")
        out[split] = pair_index_entries(
            read_csv(csv_path), img_dir, mask_dir, csv_path, split, warnings
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
    prompts = find_child(root, "prompts")
    if prompts is not None:
        ann_path = find_child(prompts, "annotation.json") or ann_path
    if not ann_path.is_file():
        raise DatasetError(
            f"{ann_path} is missing: the SGSeg layout needs prompts/annotation.json with "
            '{"train": [{"image_path": ..., "caption": ...}], "valid": [...], "test": [...]}.'
        )
    data = read_json(ann_path)
    if not isinstance(data, dict):
        raise DatasetError(
            f"{ann_path} must hold an object {{split: [entries]}}, not a {type(data).__name__}."
        )
    images = find_child(root, "images") or root / "images"
    out: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for key, entries in data.items():
        split = SPLIT_ALIASES.get(str(key).lower())
        if split is None:
            warnings.append(f"{ann_path}: ignored unknown split {key!r}.")
            continue
        if not isinstance(entries, list):
            raise DatasetError(f"{ann_path}: split {key!r} must be a list of entries.")
        folder = find_child(images, str(key), "valid" if split == "val" else split, "val" if split == "val" else split)
        if folder is None:  # a partial copy (e.g. only the test images): that split is empty
            warnings.append(
                f"{ann_path} lists split {key!r} but {images / str(key)} is missing: the "
                f"{split} split is left empty (its images belong in {images / str(key) / 'images'} "
                f"and masks in {images / str(key) / 'masks'})."
            )
            continue
        img_dir, mask_dir = image_and_mask_dirs(folder, "images", "masks", "SGSeg")
        rows = []
        for i, e in enumerate(entries):
            where = f"[{key!r}][{i}]"
            if not isinstance(e, dict):
                raise DatasetError(f"{ann_path} {where} is not an object with image_path and caption.")
            rows.append((str(e.get("image_path") or ""), note_text(e.get("caption")), where))
        out[split] = pair_index_entries(rows, img_dir, mask_dir, ann_path, split, warnings)
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
        raise_collected(problems, f"Image/mask check of {folder}")
    return ds
