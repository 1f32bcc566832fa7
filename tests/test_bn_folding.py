"""BatchNorm folding for inference: same numbers, and a fused model refuses to train or be saved."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_causalseg.engine import CheckpointError, Segmenter, SegmenterConfig, save_checkpoint
from napari_causalseg.engine import packed_convs as packed_convs_module
from napari_causalseg.engine import segmenter as segmenter_module
from napari_causalseg.engine.bn_folding import FusedModelError, fold_batchnorm_, fuse_for_inference_
from napari_causalseg.engine.packed_convs import packing_available
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
    """Without `release` (a model in the process's own memory): no second copy of the
    weights, which a scaled copy would hold twice."""
    from torch.profiler import profile

    convs = [m for m in tiny_model.vision.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.weight.data_ptr() for c in convs]
    largest = max(c.weight.numel() * c.weight.element_size() for c in convs)
    with profile(profile_memory=True) as prof:
        fuse_for_inference_(tiny_model)
    assert [c.weight.data_ptr() for c in convs] == before
    allocated = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert max(allocated) < largest // 8  # per-channel vectors only, no weight-sized temporary


def test_folding_with_release_makes_copies_and_leaves_the_weights_it_read_unwritten(tiny_model):
    """With `release`: the same numbers as in place, each old weight handed to `release`
    once and never written (a mapped checkpoint's pages stay clean: no copy-on-write)."""
    model = with_batchnorm_statistics(tiny_model).eval().double()
    in_place = fuse_for_inference_(copy.deepcopy(model))
    old = {name: (p, p._version, p.detach().clone()) for name, p in model.named_parameters()
           if name.startswith(("vision.", "intervention.")) and name.endswith("weight") and p.dim() == 4}
    released = []
    fused = fuse_for_inference_(model, release=released.append)
    assert len(released) == len({id(w) for w in released}) > 10
    assert {id(w) for w in released} <= {id(p) for p, _, _ in old.values()}
    for p, version, values in old.values():
        assert p._version == version and torch.equal(p, values)
    fused_weights = dict(fused.named_parameters())
    for name in old:
        if any(w is old[name][0] for w in released):
            assert fused_weights[name] is not old[name][0]
            torch.testing.assert_close(fused_weights[name], dict(in_place.named_parameters())[name],
                                       rtol=0, atol=0)
    image = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        a = fused.encode_image(image, with_confounding=False).causal
        b = in_place.encode_image(image, with_confounding=False).causal
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _load_mapped(tmp_path, tiny_model):
    from napari_causalseg.engine.checkpoint import load_checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, with_batchnorm_statistics(tiny_model).eval())
    model, info = load_checkpoint(path, mmap=True)
    return path, model, info, [(t, t._version) for t in model.state_dict().values()]


@pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed convolutions")
def test_segmenter_loading_a_checkpoint_never_writes_its_mapped_weights(tmp_path, tiny_model, xray):
    """Writing a page of the mapped file copies it (a page fault each: ~1 s for rn101's
    image side); where packing replaces the folded weights, the Segmenter folds into copies
    and only reads the file's pages."""
    path, model, info, mapped = _load_mapped(tmp_path, tiny_model)
    seg = Segmenter(model, SegmenterConfig(device="cpu"), fuse=True, weights_file=info.mapped)
    assert seg.model.fused_for_inference
    assert [t._version for t, _ in mapped] == [v for _, v in mapped]
    plain = Segmenter.from_checkpoint(path, SegmenterConfig(device="cpu"))
    assert abs(seg.segment(xray, NOTE).probability - plain.segment(xray, NOTE).probability).max() == 0


def test_without_packing_the_mapped_weights_are_folded_in_place(tmp_path, tiny_model, xray, monkeypatch):
    """Without packing a folded copy would stay beside the file's pages, which only Linux
    can drop: then the fold writes the mapped weights (their pages become the copy)."""
    monkeypatch.setattr(segmenter_module, "packing_available", lambda: False)
    monkeypatch.setattr(packed_convs_module, "packing_available", lambda: False)
    path, model, info, mapped = _load_mapped(tmp_path, tiny_model)
    seg = Segmenter(model, SegmenterConfig(device="cpu"), fuse=True, weights_file=info.mapped)
    folded = [t for t, v in mapped if t._version != v]
    assert len(folded) > 10 and all(t.dim() == 4 for t in folded)
    plain = Segmenter.from_checkpoint(path, SegmenterConfig(device="cpu"))
    assert abs(seg.segment(xray, NOTE).probability - plain.segment(xray, NOTE).probability).max() < 1e-5


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
