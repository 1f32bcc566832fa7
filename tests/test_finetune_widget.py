"""Fine-tune as a user drives it: Add case, train in a child process with progress, cancel,
survive a killed run; napari's own process never builds an optimizer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("wait_for_workers")]

from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint  # noqa: E402
from napari_causalseg.engine.model_sources import CHECKPOINT  # noqa: E402
from napari_causalseg.widgets import FineTuneWidget  # noqa: E402

from .widget_helpers import SAMPLE, TickRecorder, prepared_widget, segment_and_wait  # noqa: E402


def _add_cases(qtbot, viewer, seg, fine, n: int):
    for i in range(n):
        seg.note.value = ["Unilateral pulmonary infection, one infected area, lower right lung.",
                          "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
                          "Unilateral pulmonary infection, one infected area, upper left lung."][i % 3]
        segment_and_wait(qtbot, seg)
        labels = viewer.layers[f"{SAMPLE} lesion"]
        labels.data = np.roll(labels.data, i, axis=0)  # a "correction"
        fine.image.value = viewer.layers[SAMPLE]
        fine.labels.value = labels
        assert fine.add_case() is not None


def _start_and_wait_for_training(qtbot, fine):
    assert fine.start() is not None
    qtbot.waitUntil(lambda: fine.status.value.startswith("epoch") or "Plan" in fine.status.value,
                    timeout=90_000)


def test_add_case_writes_the_files_at_once(qtbot, viewer_with_sample, tiny_checkpoint, tmp_path):
    viewer = viewer_with_sample
    seg = prepared_widget(viewer, tiny_checkpoint)
    fine = FineTuneWidget(viewer, segment_widget=seg)
    fine.folder.value = tmp_path / "annotations"
    segment_and_wait(qtbot, seg)
    labels = viewer.layers[f"{SAMPLE} lesion"]
    labels.data = np.zeros_like(labels.data)
    labels.data[50:90, 40:100] = 1
    fine.image.value, fine.labels.value = viewer.layers[SAMPLE], labels
    case = fine.add_case()
    files = sorted(p.name for p in case.image_path.parent.iterdir())
    assert {"image.png", "mask.png", "note.txt"} <= set(files)
    from napari_causalseg.engine.data.cases import load_mask

    mask = load_mask(case.mask_path)
    assert mask.sum() == 40 * 60 and mask[50:90, 40:100].all()
    assert case.note == labels.metadata["note"]
    assert fine.cases.choices == (case.name,)
    # a new widget (new session) lists the same cases
    again = FineTuneWidget(viewer, segment_widget=seg)
    again.folder.value = tmp_path / "annotations"
    assert again.cases.choices == (case.name,)


def test_fine_tune_writes_a_checkpoint_and_swaps_the_model(
    qtbot, viewer_with_sample, tiny_checkpoint, tmp_path
):
    viewer = viewer_with_sample
    seg = prepared_widget(viewer, tiny_checkpoint)
    fine = FineTuneWidget(viewer, segment_widget=seg)
    fine.folder.value = tmp_path / "annotations"
    _add_cases(qtbot, viewer, seg, fine, 5)
    assert list(fine.store.splits().values()).count("val") == 1  # the fifth case, held out
    fine.epochs.value = 2
    with TickRecorder() as ticks:
        worker = fine.start()
        assert worker is not None
        pid = fine.process.pid
        qtbot.waitUntil(lambda: fine.worker is None, timeout=180_000)
    print(f"\nlongest event-loop gap while fine-tuning: {ticks.max_gap * 1000:.0f} ms")
    assert ticks.max_gap < 0.2
    assert pid != os.getpid()
    assert fine.last_checkpoint is not None and fine.last_checkpoint.is_file()
    assert fine.last_checkpoint.with_suffix(".json").is_file()
    assert fine.last_checkpoint.parent == tmp_path / "annotations" / "models"
    assert tiny_checkpoint.is_file()  # the previous model stays for rollback
    assert seg.model.value == CHECKPOINT and Path(seg.checkpoint.value) == fine.last_checkpoint
    assert "->" in fine.status.value and "too few to judge" in fine.status.value  # 1 validation case
    segment_and_wait(qtbot, seg)
    assert seg.models.checkpoint == fine.last_checkpoint


def test_cancel_stops_and_keeps_the_previous_model(qtbot, viewer_with_sample, tiny_checkpoint, tmp_path):
    viewer = viewer_with_sample
    seg = prepared_widget(viewer, tiny_checkpoint)
    fine = FineTuneWidget(viewer, segment_widget=seg)
    fine.folder.value = tmp_path / "annotations"
    _add_cases(qtbot, viewer, seg, fine, 2)
    fine.epochs.value = 500
    started = time.perf_counter()
    _start_and_wait_for_training(qtbot, fine)
    fine.cancel()
    qtbot.waitUntil(lambda: fine.worker is None, timeout=60_000)
    assert time.perf_counter() - started < 90
    assert fine.last_checkpoint is None
    assert not list((tmp_path / "annotations" / "models").glob("*.safetensors"))
    assert Path(seg.checkpoint.value) == tiny_checkpoint
    assert "Cancelled" in fine.status.value


def test_a_crashed_run_is_reported_loses_nothing_and_the_next_run_works(
    qtbot, viewer_with_sample, tiny_checkpoint, tmp_path
):
    import signal

    viewer = viewer_with_sample
    seg = prepared_widget(viewer, tiny_checkpoint)
    fine = FineTuneWidget(viewer, segment_widget=seg)
    fine.folder.value = tmp_path / "annotations"
    _add_cases(qtbot, viewer, seg, fine, 3)
    cases = tmp_path / "annotations" / "cases"
    before = {p: p.read_bytes() for p in sorted(cases.rglob("*")) if p.is_file()}
    start = tiny_checkpoint.read_bytes()
    fine.epochs.value = 500
    _start_and_wait_for_training(qtbot, fine)
    qtbot.waitUntil(lambda: fine.status.value.startswith("epoch"), timeout=90_000)  # mid-run
    os.kill(fine.process.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: fine.worker is None, timeout=60_000)
    assert "crashed" in fine.status.value and "SIGKILL" in fine.status.value
    assert {p: p.read_bytes() for p in sorted(cases.rglob("*")) if p.is_file()} == before
    assert tiny_checkpoint.read_bytes() == start and Path(seg.checkpoint.value) == tiny_checkpoint
    assert fine.last_checkpoint is None
    fine.epochs.value = 1
    assert fine.start() is not None
    qtbot.waitUntil(lambda: fine.worker is None, timeout=120_000)
    assert fine.last_checkpoint is not None and fine.last_checkpoint.is_file()


GL_THEN_FINETUNE = """
import sys, time
from pathlib import Path
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_causalseg.engine.data.annotations import AnnotationStore
from napari_causalseg.engine.data.synth import SynthConfig, generate
from napari_causalseg.widgets import FineTuneWidget, SegmentWidget

viewer = napari.Viewer()  # shown: its OpenGL context is made now (Mesa may load libLLVM)
app = QApplication.instance()
store = AnnotationStore(sys.argv[1])
for i, case in enumerate(generate(3, seed=1, cfg=SynthConfig(size=64))):
    store.add_case(f"c{i}", case.image, case.mask, case.note)
seg = SegmentWidget(viewer)
seg.checkpoint.value, seg.model.value, seg.device.value = Path(sys.argv[2]), "checkpoint", "cpu"
fine = FineTuneWidget(viewer, segment_widget=seg)
fine.folder.value = Path(sys.argv[1])
fine.epochs.value = 1
assert fine.start() is not None
deadline = time.time() + 240
while fine.worker is not None and time.time() < deadline:
    app.processEvents()
    time.sleep(0.02)
assert fine.last_checkpoint is not None and fine.last_checkpoint.is_file(), fine.status.value
# napari's process built no optimizer: torch's first optimizer imports torch._dynamo
print("no-optimizer" if "torch._dynamo" not in sys.modules else "optimizer-in-napari")
viewer.close()
"""


def test_fine_tuning_builds_no_optimizer_in_naparis_process(tmp_path):
    """Mesa's OpenGL (llvmpipe under Xvfb) loads the system's libLLVM; an optimizer built in
    napari's process imported Triton, whose own LLVM crashed the whole process (SIGSEGV).
    Fine-tuning now runs in a child process: napari never imports the optimizer stack.
    A fresh process, so that nothing else imported torch._dynamo first."""
    torch.manual_seed(0)
    cfg = get_config("tiny")
    from dataclasses import replace

    ckpt = tmp_path / "start.safetensors"
    save_checkpoint(ckpt, CausalCLIPSeg(replace(cfg, vision=replace(cfg.vision, image_size=64))))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", GL_THEN_FINETUNE, str(tmp_path / "ann"), str(ckpt)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stderr[-3000:]}"
    assert "no-optimizer" in out.stdout

