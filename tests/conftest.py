"""Shared fixtures: tiny real models (random weights) built in the test itself, and tiny
data sets on disk in each layout the data readers know."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton's LLVM must be loaded before Mesa's: a test that imports it (torch.profiler, or
# torch._dynamo through a TorchDispatchMode or an optimizer) after napari's GUI tests have
# made a GL context segfaults in libtriton's static initialisers, so the outcome would
# depend on which test files ran first. Loaded here, before any test, wherever installed.
if importlib.util.find_spec("triton") is not None:
    importlib.import_module("triton")

from napari_causalseg.engine import CausalCLIPSeg, get_config
from napari_causalseg.engine.data.annotations import AnnotationStore

from .data_folders import (
    MMI_TRAIN,
    TEST,
    TRAIN,
    VAL,
    case_image,
    case_mask,
    note_for,
    write_csv,
    write_pair,
    write_xlsx,
)

NOTE = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
OTHER_NOTE = "Unilateral pulmonary infection, one infected area, lower right lung."


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch (or train into) the user's real cache from a test."""
    monkeypatch.setenv("NAPARI_CAUSALSEG_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_model() -> CausalCLIPSeg:
    torch.manual_seed(0)
    return CausalCLIPSeg(get_config("tiny")).eval()


@pytest.fixture
def xray() -> np.ndarray:
    """A 16-bit, non-square image with some structure (not a constant)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    base = 20000 + 15000 * np.sin(xx / 30.0) * np.cos(yy / 40.0)
    return (base + rng.normal(0, 2000, base.shape)).clip(0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- data sets
# One tiny data set per layout (see data_folders.py), for the data reader tests.


@pytest.fixture
def lvit_root(tmp_path: Path) -> Path:
    root = tmp_path / "QaTa_LViT"
    rows_tv = []
    for split, names in (("Train", TRAIN), ("Val", VAL)):
        for k, n in enumerate(names):
            write_pair(root / f"{split}_Folder" / "img", root / f"{split}_Folder" / "labelcol", n, k)
            rows_tv.append((f"mask_{n}", note_for(k)))
    write_xlsx(root / "Train_Folder" / "Train_Val_text.xlsx", rows_tv)
    for k, n in enumerate(TEST):
        write_pair(root / "Test_Folder" / "img", root / "Test_Folder" / "labelcol", n, k)
    write_xlsx(root / "Test_Folder" / "Test_text.xlsx", [(f"mask_{n}", note_for(k)) for k, n in enumerate(TEST)])
    return root


@pytest.fixture
def mmi_root(tmp_path: Path) -> Path:
    root = tmp_path / "QaTa-COV19-v2"
    for k, n in enumerate(MMI_TRAIN):
        write_pair(root / "Train" / "Images", root / "Train" / "GTs", n, k)
    for k, n in enumerate(TEST):
        write_pair(root / "Test" / "Images", root / "Test" / "GTs", n, k)
    write_csv(root / "prompt" / "train.csv", [(f"mask_{n}", note_for(k)) for k, n in enumerate(MMI_TRAIN)])
    write_csv(root / "prompt" / "test.csv", [(f"mask_{n}", note_for(k)) for k, n in enumerate(TEST)])
    return root


@pytest.fixture
def sgseg_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "QaTa"
    ann = {}
    for split, names in (("train", TRAIN), ("valid", VAL), ("test", TEST)):
        d = root / "images" / split
        for k, n in enumerate(names):
            write_pair(d / "images", d / "masks", n, k)
        ann[split] = [
            {"image_path": f"mask_{n}", "caption": note_for(k), "pseudo_label": [0] * 6}
            for k, n in enumerate(names)
        ]
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "annotation.json").write_text(json.dumps(ann))
    return root


@pytest.fixture
def ann_root(tmp_path: Path) -> Path:
    root = tmp_path / "annotations"
    store = AnnotationStore(root)
    for k in range(5):
        store.add_case(f"case{k}", case_image(k), case_mask(k), f"note {k}")
    store.add_case("held_out", case_image(7), case_mask(3), "test note", meta={"split": "test"})
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny model with random weights, saved as a user's checkpoint file."""
    from napari_causalseg.engine import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "models" / "tiny.safetensors"
    save_checkpoint(path, CausalCLIPSeg(get_config("tiny")), {"note": "random test model"})
    return path


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-causalseg", "synthetic_chest_xray")
    return viewer


@pytest.fixture
def wait_for_workers(qtbot):
    """No Segment widget's worker may outlive its test (it would touch a closed viewer)."""
    from napari_causalseg.widgets import SegmentWidget

    created: list = []
    SegmentWidget._test_instances = created
    yield
    for widget in created:
        qtbot.waitUntil(lambda w=widget: not w._workers, timeout=120_000)
    del SegmentWidget._test_instances
