"""Notes, tokens and CLIP weights: tau must be exactly open_clip's encode_text."""

from __future__ import annotations

import os
import subprocess
import sys

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
from napari_causalseg.engine.text_inference import encode_text
from napari_causalseg.engine.weights import clip_to_causalseg, load_clip_weights

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
        # and so does the Segmenter's inference path
        torch.testing.assert_close(encode_text(model.text.transformer, tokens), clip.encode_text(tokens))
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


def test_openai_download_failure_is_a_clear_error(tmp_path):
    """Offline (here always), the hub's error becomes a WeightsError saying what to do.
    A child process, so that the hub reads HF_HUB_OFFLINE and an empty cache at import."""
    code = (
        "from napari_causalseg.engine.weights import WeightsError, openai_state_dict\n"
        "try:\n    openai_state_dict('RN101-quickgelu')\n"
        "except WeightsError as exc:\n    print('WeightsError:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("WeightsError: OpenAI's CLIP RN101-quickgelu weights could not be "
                                 "downloaded from the Hugging Face Hub (timm/resnet101_clip.openai;")
    assert "--pretrained PATH" in out.stdout
    assert "hf download timm/resnet101_clip.openai open_clip_model.safetensors" in out.stdout


def test_openai_weights_come_from_the_hub_cache_as_open_clip_stores_them(tmp_path):
    """A file already in the Hugging Face cache (where a first online use puts it) is read
    offline as plain tensors, in a child process so the hub reads its settings at import."""
    snapshot = tmp_path / "hub" / "models--timm--resnet101_clip.openai" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({"visual.conv1.weight": torch.arange(6.0).reshape(1, 1, 2, 3)},
              str(snapshot / "open_clip_model.safetensors"))
    code = (
        "from napari_causalseg.engine.weights import openai_state_dict\n"
        "state = openai_state_dict('RN101-quickgelu')\n"
        "print(sorted(state), state['visual.conv1.weight'].flatten().tolist())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['visual.conv1.weight'] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]"


class Payload:
    """Stands for any object a malicious pickle could construct."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(WeightsError, match="plain tensors"):
        load_clip_weights(CausalCLIPSeg(get_config("tiny")), path)


def all_qata_notes() -> list[str]:
    """Every note of the QaTa grammar (63 zone sets) plus the healthy one."""
    from itertools import combinations

    from napari_causalseg.engine.notes import SIDES, ZONES, make_note

    areas = [(s, z) for s in SIDES for z in ZONES]
    return [make_note(c) for n in range(7) for c in combinations(areas, n)]


ODD_NOTES = [
    "Ünïcödé café naïve — “quotes” &amp; &lt;tags&gt; 123 4.5% it's we'll don't",
    "x-ray: 2 lesions; RUL/LLL (opacities)!!! 😷 中文 测试 ﬁbrosis",
    "  weird\tspacing\n\nnew lines  ",
    "&amp;amp;amp; O'Brien's patient’s l'hôpital",
    "A" * 40,
]


def test_bpe_equals_open_clip_tokenizer():
    """Our BPE gives CLIP's ids, token for token (open_clip's tokenizer is the oracle)."""
    from open_clip.tokenizer import SimpleTokenizer, basic_clean, whitespace_clean

    theirs = SimpleTokenizer()
    ours = NoteTokenizer(77)
    for note in all_qata_notes() + ODD_NOTES:
        tok = ours.encode(note)
        assert tok.ids[1 : tok.n_tokens - 1].tolist() == theirs.encode(note), note
        assert tok.note == whitespace_clean(basic_clean(note)).lower()
    ids = theirs.encode(ODD_NOTES[0])
    assert ours._bpe.decode(ids) == theirs.decode(ids)


def test_control_strings_in_a_note_are_text():
    tok = NoteTokenizer(77).encode("left lung <end_of_text> right lung")
    assert (tok.ids == 49407).sum() == 1 and tok.ids[tok.n_tokens - 1] == 49407


@pytest.mark.parametrize("name", ["tiny", "rn101"])
def test_towers_have_open_clips_parameter_names_and_shapes(name):
    """CLIP weights and checkpoints written with open_clip's towers load unchanged."""
    cfg = get_config(name)
    with torch.device("meta"):
        model = CausalCLIPSeg(cfg)
        clip = open_clip.model.CLIP(
            embed_dim=cfg.embed_dim,
            vision_cfg=CLIPVisionCfg(layers=cfg.vision.layers, width=cfg.vision.width,
                                     image_size=cfg.image_size,
                                     head_width=cfg.vision.width * 32 // cfg.vision.attn_heads),
            text_cfg=CLIPTextCfg(context_length=cfg.text.context_length, width=cfg.text.width,
                                 heads=cfg.text.heads, layers=cfg.text.layers,
                                 vocab_size=cfg.text.vocab_size),
            quick_gelu=cfg.quick_gelu,
        )
    theirs = {k: v.shape for k, v in clip_to_causalseg(clip.state_dict(), model).items()}
    ours = {
        k: v.shape for k, v in model.state_dict().items()
        if k.startswith(("vision.backbone.", "text.transformer.")) and ".attnpool.connect." not in k
    }
    assert ours == theirs


def test_vision_trunk_trains_like_open_clips(tmp_path):
    """Train mode in float64: same output and the same BatchNorm running statistics."""
    clip = tiny_open_clip(context_length=24).double().train()
    model = CausalCLIPSeg(get_config("tiny")).double().train()
    model.load_state_dict(clip_to_causalseg(clip.state_dict(), model), strict=False)
    image = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    ours_net, theirs_net = model.vision.backbone, clip.visual
    ours = ours_net.layer4(ours_net.layer3(ours_net.layer2(ours_net.layer1(ours_net.stem(image)))))
    ref = theirs_net.layer4(theirs_net.layer3(theirs_net.layer2(theirs_net.layer1(theirs_net.stem(image)))))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_net.layer3[0].bn2.running_var, theirs_net.layer3[0].bn2.running_var)


def test_inference_does_not_import_open_clip_torchvision_or_dynamo(tmp_path, tiny_model):
    """open_clip's package import pulls in torchvision, torch._dynamo and sympy (~230 MB,
    ~1.5 s), and so would a random-number call on the meta device when a checkpoint is
    loaded; inference needs none of it (only the `openai` download imports open_clip)."""
    from napari_causalseg.engine import save_checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_model)
    code = (
        "import sys, numpy as np, napari_causalseg.engine as e, napari_causalseg.engine.trainer, "
        "napari_causalseg.cli\n"
        f"seg = e.Segmenter.from_checkpoint({str(path)!r}, e.SegmenterConfig(device='cpu'))\n"
        "seg.segment(np.zeros((64, 64), np.uint8), 'Unilateral pulmonary infection, one infected "
        "area, lower right lung.')\n"
        "print(sorted(m for m in ('open_clip', 'torchvision', 'torch._dynamo', 'sympy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
