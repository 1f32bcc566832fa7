"""The inference text path (engine/text_inference.py) gives the text tower's tau."""

from __future__ import annotations

import pytest
import torch

from napari_causalseg.engine import NoteTokenizer, onednn
from napari_causalseg.engine.notes import HEALTHY_NOTE, all_notes
from napari_causalseg.engine.text_inference import FusedActivation, PackedTextTower, encode_text
from napari_causalseg.engine.text_transformer import TextTransformer

LONG = ("Bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper "
        "middle lower right lung.")
NOTES = ["lung", HEALTHY_NOTE, all_notes()[1], all_notes()[40], LONG]


def text_tower(width: int = 64, heads: int = 4, layers: int = 3, context: int = 20,
               quick_gelu: bool = True) -> TextTransformer:
    torch.manual_seed(0)
    text = TextTransformer(context, 49408, width, heads, layers, 48, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in text.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return text


def tokens_of(notes: list[str], context: int = 20) -> torch.Tensor:
    return NoteTokenizer(context, truncate=True)(notes)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_each_note_alone_equals_the_text_tower(quick_gelu):
    """Notes of 3 to 20 tokens (the last one cut to the context) one at a time."""
    text = text_tower(quick_gelu=quick_gelu)
    tokens = tokens_of(NOTES)
    assert sorted(set((tokens.argmax(-1) + 1).tolist())) == [3, 10, 15, 19, 20]
    with torch.inference_mode():
        for row in tokens:
            torch.testing.assert_close(encode_text(text, row[None]), text(row[None]),
                                       rtol=1e-5, atol=1e-5)


def test_a_batch_of_mixed_lengths_equals_the_text_tower():
    text = text_tower()
    tokens = tokens_of(NOTES + NOTES[::-1])
    with torch.no_grad():
        ours, theirs = encode_text(text, tokens), text(tokens)
        alone = torch.cat([encode_text(text, row[None]) for row in tokens])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, alone, rtol=1e-5, atol=1e-5)


def test_without_onednn_and_in_float64(monkeypatch):
    """The plain F.linear path (other CPUs, builds, devices, dtypes) is the same function."""
    text = text_tower()
    tokens = tokens_of(NOTES)
    with torch.no_grad():
        expected = text(tokens)
        monkeypatch.setattr(onednn, "_onednn_linear", lambda: None)
        torch.testing.assert_close(encode_text(text, tokens), expected, rtol=1e-5, atol=1e-5)
        text64 = text.double()
        torch.testing.assert_close(encode_text(text64, tokens), text64(tokens), rtol=1e-12, atol=1e-12)


def test_it_follows_weight_changes_and_keeps_gradients():
    """No copies of the weights: an update is seen at once; with autograd on, gradients flow."""
    text = text_tower()
    tokens = tokens_of(NOTES[:2])
    with torch.no_grad():
        before = encode_text(text, tokens)
        text.transformer.resblocks[-1].mlp.c_proj.weight.mul_(2)
        after = encode_text(text, tokens)
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(after, text(tokens), rtol=1e-5, atol=1e-5)
    encode_text(text, tokens).sum().backward()
    assert text.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0


def test_too_many_tokens_are_refused():
    with pytest.raises(ValueError, match="25 tokens for a context of 20"):
        encode_text(text_tower(), torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.skipif(not PackedTextTower.available(text_tower(layers=1)), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("quick_gelu", [True, False])
def test_packed_weights_give_the_same_tau(quick_gelu):
    """With the MLP's activation in its first layer's pass (QuickGELU through the scaled
    swish, GELU as oneDNN's)."""
    text = text_tower(quick_gelu=quick_gelu)
    released = []
    packed = PackedTextTower(text, release=released.append)
    # every linear weight, the last block's q/k/v in two parts; the model's own tensors
    # (their file pages go), not the scaled copies that were packed
    assert len(released) == 4 * 3 + 1
    for block in text.transformer.resblocks:
        assert any(w is block.mlp.c_fc.weight for w in released)
        assert any(w is block.mlp.c_proj.weight for w in released)
    assert all(isinstance(block.fc, FusedActivation) for block in packed.blocks)
    tokens = tokens_of(NOTES + NOTES[::-1])
    with torch.inference_mode():
        torch.testing.assert_close(packed(tokens), text(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed(tokens[2:3]), text(tokens[2:3]), rtol=1e-5, atol=1e-5)
