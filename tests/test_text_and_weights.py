"""Notes, tokens and CLIP weights: tau must be exactly open_clip's encode_text."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from napari_causalseg.engine import (
    CausalCLIPSeg,
    NoteError,
    NoteTokenizer,
    WeightsError,
    get_config,
)
from napari_causalseg.engine.weights import load_clip_weights

from .conftest import NOTE


def tiny_open_clip(context_length: int) -> open_clip.CLIP:
    cfg = get_config("tiny")
    torch.manual_seed(123)
    return open_clip.model.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=CLIPVisionCfg(layers=cfg.vision.layers, width=cfg.vision.width,
                                 image_size=224, head_width=16),
        text_cfg=CLIPTextCfg(context_length=context_length, width=cfg.text.width,
                             heads=cfg.text.heads, layers=cfg.text.layers),
        quick_gelu=True,
    ).eval()


def test_tokenizer_brackets_and_pads():
    tok = NoteTokenizer(20).encode(NOTE)
    assert tok.ids.shape == (20,)
    assert tok.ids[0] == 49406 and tok.ids[tok.n_tokens - 1] == 49407
    assert (tok.ids[tok.n_tokens:] == 0).all()
    assert tok.n_tokens == 18  # 16 BPE tokens + [SOS]/[EOS]
    assert tok.note == NOTE.lower()


def test_note_is_normalised():
    a = NoteTokenizer().encode("  BILATERAL   pulmonary\ninfection ")
    b = NoteTokenizer().encode("bilateral pulmonary infection")
    assert a.note == "bilateral pulmonary infection"
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("note", ["", "   \n\t "])
def test_empty_note_is_an_error(note):
    with pytest.raises(NoteError, match="empty"):
        NoteTokenizer().encode(note)


def test_long_note_is_never_cut_silently():
    long_note = ("Bilateral pulmonary infection, six infected areas, upper middle lower left "
                 "lung and upper middle lower right lung.")
    with pytest.raises(NoteError, match=r"22 tokens .* at most 20; it would lose 'lung \.'"):
        NoteTokenizer(20).encode(long_note)
    cut = NoteTokenizer(20).encode(long_note, truncate=True)
    assert cut.n_tokens == 20 and cut.ids[-1] == 49407
    assert cut.dropped == "lung ."


def test_text_feature_equals_open_clip_encode_text(tmp_path):
    """Weights from an open_clip CLIP file; tau equals CLIP's encode_text."""
    clip = tiny_open_clip(context_length=get_config("tiny").text.context_length)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    model = CausalCLIPSeg(get_config("tiny")).eval()
    assert load_clip_weights(model, path) == "file:clip.safetensors"
    tokens = NoteTokenizer(get_config("tiny").text.context_length)([NOTE, "unilateral pulmonary infection, one infected area."])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), clip.encode_text(tokens))
        # the image tower's trunk is CLIP's too
        image = torch.randn(1, 3, 224, 224)
        net = model.vision.backbone
        ours = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(image)))))
        theirs = clip.visual
        ref = theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(theirs.stem(image)))))
        torch.testing.assert_close(ours, ref)


def test_77_token_clip_weights_give_the_same_tau(tmp_path):
    """Cutting CLIP's 77 positions to our context is exact (the text Transformer is causal)."""
    clip = tiny_open_clip(context_length=77)
    path = tmp_path / "clip77.pt"
    torch.save(clip.state_dict(), path)
    model = CausalCLIPSeg(get_config("tiny")).eval()
    load_clip_weights(model, path)
    with torch.no_grad():
        ours = model.encode_text(NoteTokenizer(get_config("tiny").text.context_length)([NOTE]))
        theirs = clip.encode_text(open_clip.tokenize([NOTE], context_length=77))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_wrong_clip_weights_are_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, str(path))
    model = CausalCLIPSeg(get_config("tiny"))
    with pytest.raises(WeightsError, match="not a CLIP checkpoint for the 'tiny' model"):
        load_clip_weights(model, path)
    with pytest.raises(WeightsError, match="not found"):
        load_clip_weights(model, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="no OpenAI CLIP counterpart"):
        load_clip_weights(model, "openai")


class Payload:
    """Stands for any object a malicious pickle could construct."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(WeightsError, match="plain tensors"):
        load_clip_weights(CausalCLIPSeg(get_config("tiny")), path)
