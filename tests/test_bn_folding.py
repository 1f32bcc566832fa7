"""BatchNorm folding for inference: same numbers, and a fused model refuses to train or be saved."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_causalseg.engine import CheckpointError, Segmenter, SegmenterConfig, save_checkpoint
from napari_causalseg.engine.bn_folding import FusedModelError, fold_batchnorm_, fuse_for_inference_
from napari_causalseg.testing.reference import with_batchnorm_statistics

from .conftest import NOTE


def test_folding_is_exact_in_float64(tiny_model):
    model = with_batchnorm_statistics(tiny_model).eval().double()
    fused = fuse_for_inference_(copy.deepcopy(model))
    left = [m for part in (fused.vision, fused.intervention) for m in part.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == []  # every image-side BN was folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.causal_decoder.modules())
    image = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model.encode_image(image), fused.encode_image(image, with_confounding=False)
    torch.testing.assert_close(out.causal, ref.causal, rtol=1e-10, atol=1e-12)
    for m_out, m_ref in zip(out.masks, ref.masks):
        torch.testing.assert_close(m_out, m_ref, rtol=1e-10, atol=1e-12)
    assert out.confounding is None and ref.confounding is not None


def test_folding_rewrites_weights_in_place(tiny_model):
    """No second copy of the weights: with memory-mapped checkpoints a scaled copy would
    hold them twice (the peak-RSS benchmark measured +140 MB for RN101)."""
    from torch.profiler import profile

    convs = [m for m in tiny_model.vision.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.weight.data_ptr() for c in convs]
    largest = max(c.weight.numel() * c.weight.element_size() for c in convs)
    with profile(profile_memory=True) as prof:
        fuse_for_inference_(tiny_model)
    assert [c.weight.data_ptr() for c in convs] == before
    allocated = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert max(allocated) < largest // 8  # per-channel vectors only, no weight-sized temporary


def test_fold_counts_pairs_and_skips_lone_convs():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    assert fold_batchnorm_(net.eval()) == 1
    assert isinstance(net[1], torch.nn.Identity) and isinstance(net[5], torch.nn.BatchNorm2d)


def test_fused_model_refuses_training_and_saving(tmp_path, tiny_model):
    fused = fuse_for_inference_(tiny_model)
    with pytest.raises(FusedModelError, match="load the checkpoint again"):
        fused.train()
    fused.eval()  # still allowed
    with pytest.raises(CheckpointError, match="folded for inference"):
        save_checkpoint(tmp_path / "m.safetensors", fused)
    assert not (tmp_path / "m.safetensors").exists()


def test_segmenter_from_checkpoint_is_fused_and_agrees(tmp_path, tiny_model, xray):
    model = with_batchnorm_statistics(tiny_model).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    plain = Segmenter(model, SegmenterConfig(device="cpu"))  # a caller's model: left as it is
    assert not plain.model.fused_for_inference
    owned = Segmenter.from_checkpoint(path, SegmenterConfig(device="cpu"))
    assert owned.model.fused_for_inference
    a, b = plain.segment(xray, NOTE), owned.segment(xray, NOTE)
    assert abs(a.probability - b.probability).max() < 1e-5
    assert abs(a.confounder - b.confounder).max() < 1e-5
