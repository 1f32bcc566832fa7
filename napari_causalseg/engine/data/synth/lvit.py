"""The synthetic data set on disk, in LViT's QaTa-COV19 layout: 8-bit PNG images and
masks plus the Excel files of notes, byte-reproducible for a given seed."""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...atomic import atomic_write_bytes
from .config import SPLITS, SynthConfig
from .generator import case_rng, synth_case

LVIT_FOLDERS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}


def _png_bytes(a: np.ndarray) -> bytes:
    """Fixed PNG settings: the same pixels give the same bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _xlsx_bytes(rows: Sequence[tuple[str, str]]) -> bytes:
    """Workbook with columns Image | Description, normalised so equal rows give equal bytes."""
    import datetime as dt

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["Image", "Description"])
    for r in rows:
        ws.append(list(r))
    fixed = dt.datetime(2000, 1, 1)
    wb.properties.created = fixed
    wb.properties.modified = fixed
    wb.properties.creator = "napari-causalseg synth"
    buf = io.BytesIO()
    wb.save(buf)
    # zip members carry wall-clock timestamps: rewrite them with a fixed one
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(2000, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps "modified" at save
                data = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                    rb"\g<1>2000-01-01T00:00:00Z\g<2>",
                    data,
                )
            zout.writestr(zi, data)
    return out.getvalue()


def write_lvit_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 32,
    seed: int | None = None,
    cfg: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a QaTa-like dataset in LViT's layout; returns ``out_dir``.

    ``{Train,Val,Test}_Folder/img/synth_000123.png`` (8-bit grey),
    ``.../labelcol/mask_synth_000123.png`` ({0,255}); ``Train_Folder/Train_Val_text.xlsx``
    (train + val rows) and ``Test_Folder/Test_text.xlsx``, columns ``Image`` (the MASK
    file name) and ``Description``: where LViT's Covid19 code reads them. Names are
    unique across splits (one workbook covers train and val). Each file is written to a
    temporary name and renamed, so an interrupted run leaves no half-written file.
    """
    cfg = cfg or SynthConfig()
    seed = cfg.seed if seed is None else seed
    root = Path(out_dir)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    total = sum(counts.values())
    rows: dict[str, list[tuple[str, str]]] = {k: [] for k in SPLITS}
    done = 0
    for split in SPLITS:
        folder = root / LVIT_FOLDERS[split]
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "labelcol").mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            case = synth_case(case_rng(seed, split, i), cfg, split)
            name = f"synth_{done:06d}.png"
            atomic_write_bytes(folder / "img" / name, _png_bytes(case.image))
            mask = np.where(case.mask, 255, 0).astype(np.uint8)
            atomic_write_bytes(folder / "labelcol" / f"mask_{name}", _png_bytes(mask))
            rows[split].append((f"mask_{name}", case.note))
            done += 1
            if progress is not None:
                progress(done, total)
    atomic_write_bytes(
        root / LVIT_FOLDERS["train"] / "Train_Val_text.xlsx",
        _xlsx_bytes(rows["train"] + rows["val"]),
    )
    atomic_write_bytes(root / LVIT_FOLDERS["test"] / "Test_text.xlsx", _xlsx_bytes(rows["test"]))
    return root
