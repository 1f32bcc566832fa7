"""Checkpoints: safetensors + JSON, bit-exact round trips, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from napari_causalseg import __version__
from napari_causalseg.engine import (
    CausalCLIPSeg,
    CheckpointError,
    Segmenter,
    get_config,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from napari_causalseg.engine.checkpoint import drop_mapped_pages, mapped_pages_release
from napari_causalseg.engine.config import ModelConfig, TextConfig
from napari_causalseg.engine.text_inference import PackedTextTower

from .conftest import NOTE, OTHER_NOTE


def perturbed(model: CausalCLIPSeg) -> CausalCLIPSeg:
    """Non-default values everywhere, BN running stats included."""
    torch.manual_seed(5)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.01)
    return model


def test_round_trip_is_bit_exact(tmp_path, tiny_model, xray):
    model = perturbed(tiny_model)
    path = tmp_path / "run" / "best.safetensors"
    info = save_checkpoint(path, model, provenance={"epochs": 3, "data": "synthetic"})
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not list(path.parent.glob("*.part"))
    loaded, info2 = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert info2.config == model.config
    assert info2.provenance == {"epochs": 3, "data": "synthetic"}
    assert info2.sha256 == info.sha256
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["package_version"] == __version__
    assert sidecar["model"]["name"] == "tiny"
    a = Segmenter(model.eval()).segment(xray, NOTE).probability
    b = Segmenter.from_checkpoint(path).segment(xray, NOTE).probability  # BN folded: rounding
    assert abs(a - b).max() < 1e-5


@pytest.mark.parametrize("mmap", [False, True])
def test_loaded_weights_never_write_back_to_the_file(tmp_path, tiny_model, mmap):
    """Memory-mapped weights are copy-on-write views: changing them (an optimiser step)
    leaves the checkpoint file as it was; without mmap they are the model's own memory."""
    path = tmp_path / "best.safetensors"
    info = save_checkpoint(path, perturbed(tiny_model))
    loaded, _ = load_checkpoint(path, mmap=mmap)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert not any(p.is_meta for p in loaded.parameters())
    assert not any(b.is_meta for b in loaded.buffers())
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    from napari_causalseg.engine.checkpoint import _sha256

    assert _sha256(path) == info.sha256
    again, _ = load_checkpoint(path)
    assert torch.equal(again.state_dict()["vision.backbone.conv1.weight"],
                       tiny_model.state_dict()["vision.backbone.conv1.weight"])


def test_config_mismatch_names_the_differences(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_model)
    with pytest.raises(CheckpointError, match=r"holds a 'tiny' model but 'rn101' was requested.*embed_dim: 512 != 64"):
        load_checkpoint(path, expected=get_config("rn101"))


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, tiny_model)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint_info(garbage)
    foreign = tmp_path / "clip.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a napari-causalseg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_weights_that_do_not_fit_their_config(tmp_path, tiny_model):
    """A header that claims another configuration than the tensors hold."""
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    save_checkpoint(path, tiny_model)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    cfg = get_config("tiny")
    other = ModelConfig(name="tiny", embed_dim=cfg.embed_dim, vision=cfg.vision,
                        text=TextConfig(context_length=20, width=48, heads=2, layers=2),
                        clip_name=None)
    header["model"] = json.dumps(other.to_dict())
    save_file(load_file(str(path)), str(path), metadata=header)
    with pytest.raises(CheckpointError, match="does not match its own configuration"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, tiny_model)
    before = path.read_bytes()

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, perturbed(tiny_model))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]


def test_mapped_weights_survive_replacement_but_not_an_in_place_rewrite(tmp_path, tiny_model, xray):
    """A Segmenter reads its weights from the file as needed: replacing the file by a
    rename (our writers) or deleting it is harmless; rewriting it in place would mix two
    models' weights, so it is refused with a clear error instead."""
    path = tmp_path / "best.safetensors"
    old = perturbed(tiny_model).eval()
    save_checkpoint(path, old)
    seg = Segmenter.from_checkpoint(path)
    seg.segment(xray, NOTE)
    torch.manual_seed(9)
    save_checkpoint(path, CausalCLIPSeg(tiny_model.config))  # atomic replace: other weights
    # a new note runs the text tower and the decoder head on the mapped weights: still the old ones
    expected = Segmenter(old).segment(xray, OTHER_NOTE).probability
    assert abs(seg.segment(xray, OTHER_NOTE).probability - expected).max() < 1e-5

    seg = Segmenter.from_checkpoint(path)
    seg.segment(xray, NOTE)
    data = path.read_bytes()
    with open(path, "r+b") as fh:  # what `cp new old` or save_file(old) do: same inode
        fh.write(data)
        fh.truncate()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert seg.weights_file_rewritten()
    with pytest.raises(CheckpointError, match="rewritten in place.*load the model again"):
        seg.segment(xray, NOTE)
    assert not Segmenter.from_checkpoint(path).weights_file_rewritten()

    moved = Segmenter.from_checkpoint(path)
    path.unlink()
    moved.segment(xray, NOTE)  # the mapping keeps the deleted file


def test_mapped_pages_release_drops_only_the_files_pages(tmp_path):
    """Dropping a mapped weight's pages reads the file back; dropping the pages of a copy in
    the process's own memory would zero it, so a copy is left alone."""
    path = tmp_path / "m.safetensors"
    model = perturbed(CausalCLIPSeg(get_config("tiny"))).eval()
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path, mmap=True)
    release = mapped_pages_release(loaded.state_dict().values())
    name, weight = max(loaded.named_parameters(), key=lambda item: item[1].numel())
    assert weight.nbytes > 4 * os.sysconf("SC_PAGE_SIZE")
    copy = weight.detach() * 2  # e.g. a folded weight: the process's own memory
    want = copy.clone()
    release(copy)
    assert torch.equal(copy, want)
    release(weight)
    assert torch.equal(weight, dict(model.named_parameters())[name])


def test_dropped_text_pages_read_back_the_same_weights(tmp_path, tiny_model):
    """A Segmenter loaded from a file packs its text weights and unmaps their file pages:
    its text features are the model's, and the weights read back unchanged."""
    path = tmp_path / "m.safetensors"
    model = perturbed(tiny_model).eval()
    save_checkpoint(path, model)
    seg = Segmenter.from_checkpoint(path)
    text = seg.model.text.transformer
    if PackedTextTower.available(text):
        assert seg._packed_text is not None
    with torch.inference_mode():
        for name, weight in text.named_parameters():
            drop_mapped_pages(weight)
            torch.testing.assert_close(weight, dict(model.text.transformer.named_parameters())[name],
                                       rtol=0, atol=0)
    for note in (NOTE, OTHER_NOTE):
        torch.testing.assert_close(seg.text_feature(note)[0], Segmenter(model).text_feature(note)[0],
                                   rtol=1e-5, atol=1e-6)
