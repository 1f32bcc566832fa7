"""Tiny data sets on disk for the data reader tests: 6x5 PNG pairs in each QaTa-COV19
layout and in an annotation folder (the fixtures that build them are in conftest.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_causalseg.engine.data.cases import Case, DatasetError
from napari_causalseg.engine.data.layouts import open_dataset

H, W = 6, 5


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_pair(img_dir: Path, mask_dir: Path, name: str, k: int, size=(H, W)) -> None:
    """Image ``name`` (value k) and ``mask_<name>`` (k+1 pixels set to 255)."""
    write_png(img_dir / name, np.full(size, 10 + k, np.uint8))
    m = np.zeros(size, np.uint8)
    m.flat[: k + 1] = 255
    write_png(mask_dir / f"mask_{name}", m)


def note_for(k: int) -> str:
    return f"unilateral pulmonary infection, one infected area, note {k}."


def write_xlsx(path: Path, rows, header=("Image", "Description")) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


TRAIN = [f"covid_{i}.png" for i in range(1, 11)]  # 10 cases -> 8 train + 2 val when split
VAL = ["covid_20.png", "covid_21.png"]
TEST = ["sub-s1_ses-e1.png", "sub-s2_ses-e2.png", "sub-s3_ses-e3.png"]


def write_csv(path: Path, rows, header=("", "Image", "Description")) -> None:
    """Like pandas' to_csv: an unnamed index column first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow([i, *r])


# CSV order deliberately not sorted: the split must follow the file, not the name order.
MMI_TRAIN = ["covid_5.png", "covid_1.png", "covid_9.png", "covid_2.png", "covid_7.png",
             "covid_3.png", "covid_8.png", "covid_4.png", "covid_10.png", "covid_6.png"]


def case_image(k: int, dtype=np.uint8) -> np.ndarray:
    return (np.arange(H * W).reshape(H, W) * (k + 1)).astype(dtype)


def case_mask(k: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[: k + 1, 1:3] = True
    return m


def check_pairs(cases: list[Case]) -> None:
    for c in cases:
        assert c.mask_path.name == f"mask_{c.image_path.name}"
        assert c.name == c.image_path.stem
        assert c.image_path.is_file() and c.mask_path.is_file()


def raises_naming(path: Path, *args, match: str = "", **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        open_dataset(*args, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    if match:
        assert match in msg, msg
    return msg
