"""The synthetic data set writer (data/synth/lvit.py): LViT's folders and Excel files,
byte-reproducible for a seed."""

from __future__ import annotations

import io
import re
import time
import zipfile

import numpy as np
from openpyxl import load_workbook
from PIL import Image

from napari_causalseg.engine.data.synth import SynthConfig, case_rng, synth_case, write_lvit_dataset


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_write_lvit_dataset_layout(tmp_path):
    cfg = SynthConfig(size=64)
    seen = []
    root = write_lvit_dataset(
        tmp_path / "ds", 4, 2, 3, seed=1, cfg=cfg, progress=lambda i, n: seen.append((i, n))
    )
    assert root == tmp_path / "ds"
    assert seen[-1] == (9, 9)
    names = {}
    for folder, n in (("Train_Folder", 4), ("Val_Folder", 2), ("Test_Folder", 3)):
        imgs = sorted(p.name for p in (root / folder / "img").iterdir())
        masks = sorted(p.name for p in (root / folder / "labelcol").iterdir())
        assert len(imgs) == n and all(re.fullmatch(r"synth_\d{6}\.png", x) for x in imgs)
        assert masks == [f"mask_{x}" for x in imgs]
        for x in imgs:
            im = Image.open(root / folder / "img" / x)
            mk = Image.open(root / folder / "labelcol" / f"mask_{x}")
            assert im.mode == "L" and mk.mode == "L" and im.size == mk.size == (64, 64)
            assert set(np.unique(np.asarray(mk))) <= {0, 255}
        names[folder] = imgs
    all_names = sum(names.values(), [])
    assert len(set(all_names)) == len(all_names)  # one workbook covers train + val

    def rows(path):
        ws = load_workbook(path).active
        return [tuple(r) for r in ws.iter_rows(values_only=True)]

    tv = rows(root / "Train_Folder" / "Train_Val_text.xlsx")
    te = rows(root / "Test_Folder" / "Test_text.xlsx")
    assert tv[0] == ("Image", "Description") and te[0] == ("Image", "Description")
    want_tv = [f"mask_{x}" for x in names["Train_Folder"] + names["Val_Folder"]]
    assert [r[0] for r in tv[1:]] == want_tv
    assert [r[0] for r in te[1:]] == [f"mask_{x}" for x in names["Test_Folder"]]
    # descriptions are the notes of those very masks
    for folder, split, table in (
        ("Train_Folder", "train", tv[1:5]),
        ("Val_Folder", "val", tv[5:]),
        ("Test_Folder", "test", te[1:]),
    ):
        for i, (mask_name, note) in enumerate(table):
            case = synth_case(case_rng(1, split, i), cfg, split)
            assert note == case.note
            mk = np.asarray(Image.open(root / folder / "labelcol" / mask_name)) > 0
            assert np.array_equal(mk, case.mask)
            img = np.asarray(Image.open(root / folder / "img" / mask_name[5:]))
            assert np.array_equal(img, case.image)
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary files


def test_write_lvit_dataset_is_byte_reproducible(tmp_path):
    cfg = SynthConfig(size=48)
    a = _files(write_lvit_dataset(tmp_path / "a", 2, 1, 2, seed=3, cfg=cfg))
    b = _files(write_lvit_dataset(tmp_path / "b", 2, 1, 2, seed=3, cfg=cfg))
    assert a.keys() == b.keys() and len(a) == 12
    assert all(a[k] == b[k] for k in a)
    # no wall clock inside the workbooks (a run a second later would differ)
    for name in ("Train_Folder/Train_Val_text.xlsx", "Test_Folder/Test_text.xlsx"):
        with zipfile.ZipFile(io.BytesIO(a[name])) as z:
            assert {i.date_time for i in z.infolist()} == {(2000, 1, 1, 0, 0, 0)}
            core = z.read("docProps/core.xml").decode()
            assert str(time.gmtime().tm_year) not in core
    c = _files(write_lvit_dataset(tmp_path / "c", 2, 1, 2, seed=4, cfg=cfg))
    assert a["Train_Folder/img/synth_000000.png"] != c["Train_Folder/img/synth_000000.png"]
