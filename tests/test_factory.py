"""The engine's facade: one way to build a model, one answer to "which checkpoint?", and
inference that stays clear of the training code and widgets that stay clear of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import napari_causalseg
from napari_causalseg.engine import (
    CausalCLIPSeg,
    ModelSource,
    build_model,
    get_config,
    save_checkpoint,
    source_checkpoint,
)
from napari_causalseg.engine.model_sources import CHECKPOINT, OPENAI


def test_build_model_from_a_preset_or_a_config_with_its_provenance(tmp_path):
    torch.manual_seed(0)
    model, provenance = build_model("tiny", context_length=12)
    assert isinstance(model, CausalCLIPSeg) and model.training
    assert model.config.text.context_length == 12 and provenance is None
    again, _ = build_model(get_config("tiny"), "none")
    assert again.config == get_config("tiny")
    with pytest.raises(ValueError, match="unknown model configuration 'rn50'"):
        build_model("rn50")
    with pytest.raises(ValueError, match="CLIP weights file not found"):
        build_model("tiny", tmp_path / "missing.safetensors")


def test_source_checkpoint_answers_which_file(tmp_path):
    path = tmp_path / "m.safetensors"
    assert source_checkpoint(ModelSource(CHECKPOINT, path)) == path
    assert source_checkpoint(ModelSource(OPENAI)) is None  # built, not loaded
    with pytest.raises(ValueError, match="choose a checkpoint file"):
        ModelSource(CHECKPOINT)


def test_inference_does_not_import_the_training_code(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_model)
    code = (
        "import sys, numpy as np\n"
        "from napari_causalseg.engine import ModelSource, SegmenterConfig, open_segmenter\n"
        f"seg, _ = open_segmenter(ModelSource('checkpoint', {str(path)!r}), SegmenterConfig(device='cpu'))\n"
        "seg.segment(np.zeros((64, 64), np.uint8), 'Unilateral pulmonary infection, one infected "
        "area, lower right lung.')\n"
        "mods = ('trainer', 'train_config', 'train_state', 'objective', 'augment', 'finetune')\n"
        "print(sorted(m for m in mods if 'napari_causalseg.engine.' + m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_widgets_import_neither_torch_nor_model_classes():
    """Widgets are thin views: devices, models and math come through the engine."""
    folder = Path(napari_causalseg.__file__).parent / "widgets"
    offenders = []
    for file in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{file.name}: {n}" for n in names
                          if n == "torch" or n.startswith("torch.") or n.endswith((".model", ".trainer"))]
    assert offenders == []
