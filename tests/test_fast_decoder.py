"""The restructured decoder against the straightforward oracle (napari_causalseg/testing/reference.py).

Outputs are compared in float32 at the method's tolerance (1e-4 of the logits' scale);
gradients in float64, where the comparison is about the algebra and not about which of
two float32 summation orders happens to round better.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_causalseg.engine import CausalCLIPSeg, get_config
from napari_causalseg.engine.decoder import TextConditionedDecoder, _PixelProjection
from napari_causalseg.engine.upconv import (
    interpolation_matrix,
    tap_weights,
    upsample_conv3x3,
    upsample_conv3x3_blocks,
    upsample_conv3x3_taps,
)
from napari_causalseg.testing.reference import ReferenceDecoder, reference_from

from .test_model import tokens


def conv_after_upsample(x_cl, weight, bias=None):
    x = x_cl.permute(0, 3, 1, 2)
    up = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    return F.conv2d(up, weight, bias, padding=1).permute(0, 2, 3, 1)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode folding is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def assert_logits_close(fast: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> float:
    scale = ref.abs().max().item()
    diff = (fast - ref).abs().max().item()
    assert fast.shape == ref.shape
    assert diff <= rel * scale, f"max |fast - ref| = {diff:.3g} > {rel} * {scale:.3g}"
    return diff / scale


def test_interpolation_matrix_is_pytorch_bilinear():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    rows, cols = interpolation_matrix(5, 4), interpolation_matrix(7, 4)
    torch.testing.assert_close(rows @ x @ cols.T, up, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 3, 6, 4), (1, 2, 2, 3, 5), (3, 1, 4, 2, 2), (2, 7, 6, 8, 3), (2, 20, 17, 3, 2)],
    ids=["5x3", "2x2", "1x4", "7x6", "20x17-grouped"],
)
def test_upsample_conv3x3_is_exact(shape, monkeypatch):
    """Values and all three gradients, with and without bias; 20x17 cuts both banded
    products into several groups (as at 224 px), the small ones use a single group.
    Inference both in row groups (large layers) and with the whole batch at once."""
    from napari_causalseg.engine import upconv
    b, h, w, c_in, c_out = shape
    torch.manual_seed(0)
    x = torch.randn(b, h, w, c_in, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    for bb in (bias, None):
        fast, ref = upsample_conv3x3(x, weight, bb), conv_after_upsample(x, weight, bb)
        assert fast.shape == (b, 4 * h, 4 * w, c_out)
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
        for grouped_above in (0, 2**62):  # by image and row group, reused buffers; all at once
            monkeypatch.setattr(upconv, "_GROUPED_ABOVE_BYTES", grouped_above)
            with torch.no_grad():
                torch.testing.assert_close(upsample_conv3x3(x, weight, bb), ref, rtol=0, atol=1e-12)
        monkeypatch.undo()
        g = torch.randn_like(ref)
        inputs = [x, weight] + ([bb] if bb is not None else [])
        got = torch.autograd.grad(fast, inputs, g)
        want = torch.autograd.grad(ref, inputs, g)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_upsample_conv3x3_float32_training_products_are_exact(monkeypatch):
    """In float32 with autograd recording, the interpolation products and the gradients'
    GEMMs run through oneDNN where the build has it (`onednn.mm`): the same values and
    gradients as the straightforward layer computed in float64, to float32 rounding."""
    torch.manual_seed(2)
    x = torch.randn(3, 20, 17, 24, requires_grad=True)
    weight = torch.randn(16, 24, 3, 3, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    fast = upsample_conv3x3(x, weight, bias)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = conv_after_upsample(*inputs64)
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=1e-5 * scale)
    from napari_causalseg.engine import upconv

    for grouped_above in (0, 2**62):  # inference by row group, and all at once: oneDNN, ReLU fused
        monkeypatch.setattr(upconv, "_GROUPED_ABOVE_BYTES", grouped_above)
        with torch.no_grad():
            torch.testing.assert_close(upsample_conv3x3(x, weight, bias).double(), ref, rtol=0, atol=1e-5 * scale)
            taps = tap_weights(weight)
            fused = upsample_conv3x3_taps(x, taps, bias, relu=True).double()
            torch.testing.assert_close(fused, ref.clamp_min(0), rtol=0, atol=1e-5 * scale)
    monkeypatch.undo()
    g = torch.randn_like(fast)
    got = torch.autograd.grad(fast, [x, weight, bias], g)
    want = torch.autograd.grad(ref, inputs64, g.double())
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=0, atol=1e-5 * e.abs().max().item())


def test_upsample_conv3x3_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upsample_conv3x3, (x, weight, bias))


def make_decoders(seed: int = 0) -> tuple[TextConditionedDecoder, ReferenceDecoder]:
    torch.manual_seed(seed)
    fast = TextConditionedDecoder(16, 8, 12, kernel_size=3)
    randomise_batchnorm(fast, seed)
    with torch.no_grad():
        fast.visual[4].bias.normal_()  # the 1x1 bias must survive the folding at the borders
    ref = ReferenceDecoder(16, 8, 12, kernel_size=3)
    ref.load_state_dict(fast.state_dict(), strict=True)
    return fast, ref


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_decoder_matches_reference(train):
    fast, ref = make_decoders()
    fast.train(train), ref.train(train)
    torch.manual_seed(2)
    feats, tau = torch.randn(3, 16, 4, 5), torch.randn(3, 12)
    assert_logits_close(fast(feats, tau), ref(feats, tau))
    if train:  # the same batch statistics went into the running averages
        for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_pixel_projection_gradients():
    """The note's per-tap projection has its own backward (a faster product order)."""
    torch.manual_seed(4)
    bias = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    pixels = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    want = bias[:, None] + pixels @ weight.transpose(1, 2)
    torch.testing.assert_close(_PixelProjection.apply(bias, pixels, weight), want)
    assert torch.autograd.gradcheck(_PixelProjection.apply, (bias, pixels, weight))


def test_pixel_projection_float32_matches_float64():
    """Float32 on the CPU runs per sample through oneDNN where the build has it: values
    and all three gradients as the straightforward expression in float64."""
    torch.manual_seed(6)
    inputs = [torch.randn(3, 9), torch.randn(3, 500, 64), torch.randn(3, 9, 64)]
    leaves32 = [t.clone().requires_grad_() for t in inputs]
    leaves64 = [t.double().requires_grad_() for t in inputs]
    out = _PixelProjection.apply(*leaves32)
    b, p, w = leaves64
    want = b[:, None] + p @ w.transpose(1, 2)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    out.backward(g.float())
    want.backward(g)
    for ours, theirs in zip(leaves32, leaves64):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-5, atol=1e-4)


def test_pixel_projection_under_autocast_behaves_like_baddbmm():
    """bf16 autocast (the Trainer's on CUDA; the CPU has the same rules): bf16 out, and
    gradients in each input's own dtype, equal to autograd's through baddbmm."""
    torch.manual_seed(5)
    inputs = [torch.randn(2, 3), torch.randn(2, 40, 8), torch.randn(2, 3, 8)]
    grads = []
    for fn in (_PixelProjection.apply, lambda b, p, w: torch.baddbmm(b[:, None], p, w.transpose(1, 2))):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*leaves)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, theirs in zip(*grads):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)


def test_logits_broadcast_one_note_many_images_and_back():
    fast, _ = make_decoders()
    fast.eval()
    torch.manual_seed(3)
    feats, tau = torch.randn(3, 16, 4, 5), torch.randn(2, 12)
    with torch.no_grad():
        pixels = fast.features(feats)
        one_note = fast.logits(pixels, tau[:1])
        many_notes = fast.logits(pixels[:1], tau)
        for i in range(3):
            torch.testing.assert_close(one_note[i], fast.logits(pixels[i : i + 1], tau[:1])[0])
        for j in range(2):
            torch.testing.assert_close(many_notes[j], fast.logits(pixels[:1], tau[j : j + 1])[0])
        with pytest.raises(ValueError, match="2 notes for 3 images"):
            fast.logits(pixels, tau)


@pytest.mark.parametrize("shape", [(2, 5, 3, 6, 4), (1, 20, 17, 3, 2)], ids=["5x3", "20x17-grouped"])
def test_upsample_conv3x3_blocks_hands_out_the_layer_block_by_block(shape):
    """Every output pixel reaches the consumer exactly once, with the values the whole
    layer has (the same products: equal, not just close), ReLU included."""
    b, h, w, c_in, c_out = shape
    torch.manual_seed(1)
    x = torch.randn(b, h, w, c_in)
    weight, bias = torch.randn(c_out, c_in, 3, 3), torch.randn(c_out)
    taps = tap_weights(weight)
    seen = torch.zeros(b, 4 * h, 4 * w, dtype=torch.int64)
    got = torch.full((b, 4 * h, 4 * w, c_out), float("nan"))

    def consume(image, row0, row1, col0, col1, block):
        seen[image, row0:row1, col0:col1] += 1
        got[image, row0:row1, col0:col1] = block

    with torch.inference_mode():
        upsample_conv3x3_blocks(x, taps, bias, consume, relu=True)
        whole = upsample_conv3x3_taps(x, taps, bias, relu=True)
    assert (seen == 1).all()
    assert torch.equal(got, whole)
    torch.testing.assert_close(got, conv_after_upsample(x, weight, bias).clamp_min(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="CPU inference"):  # autograd would record nothing
        upsample_conv3x3_blocks(x.requires_grad_(), taps, bias, consume)


def test_logits_without_features_are_the_logits_of_the_features():
    """The first-prompt path (note projected row block by row block) against
    `logits(features(F), tau)`; where it does not apply (several notes, training, autograd)
    it is that very path."""
    fast, _ = make_decoders()
    fast.eval()
    torch.manual_seed(4)
    feats, tau = torch.randn(2, 16, 5, 6), torch.randn(2, 12)
    with torch.inference_mode():
        want = fast.logits(fast.features(feats), tau[:1])
        got = fast.logits_without_features(feats, tau[:1])
        assert_logits_close(got, want, rel=1e-6)
        torch.testing.assert_close(fast.logits_without_features(feats, tau),
                                   fast.logits(fast.features(feats), tau))
    fast.train()
    with torch.no_grad():
        torch.testing.assert_close(fast.logits_without_features(feats, tau[:1]),
                                   fast.logits(fast.features(feats), tau[:1]))


def test_visual_path_keeps_its_meaning():
    """`visual(F)` still returns the 1x1 conv's full-resolution output (fast)."""
    fast, ref = make_decoders()
    fast.eval(), ref.eval()
    feats = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        assert_logits_close(fast.visual(feats), ref.visual(feats))


def test_state_dict_keys_are_those_of_the_reference():
    model = CausalCLIPSeg(get_config("tiny"))
    ref = reference_from(model)
    assert list(model.state_dict()) == list(ref.state_dict())
    CausalCLIPSeg(get_config("tiny")).load_state_dict(ref.state_dict(), strict=True)


@pytest.fixture
def pair() -> tuple[CausalCLIPSeg, torch.nn.Module]:
    torch.manual_seed(0)
    model = CausalCLIPSeg(get_config("tiny"))
    randomise_batchnorm(model)
    return model, reference_from(model)


def test_model_eval_matches_reference_non_square(pair):
    """Eval mode (BN folded), both decoders, at 256x192: logits within 1e-4 of scale."""
    model, ref = pair
    model.eval(), ref.eval()
    torch.manual_seed(4)
    image = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        fast, slow = model(image, tokens(2)), ref(image, tokens(2))
    assert fast.causal_logits.shape == (2, 1, 256, 192)
    assert_logits_close(fast.causal_logits, slow.causal_logits)
    assert_logits_close(fast.confounding_logits, slow.confounding_logits)


def test_model_train_mode_outputs_gradients_and_statistics_match(pair):
    """Training mode through the adversarial reversal layer, in float64: logits, every
    parameter's gradient, and the BN running statistics."""
    model, ref = (m.double().train() for m in pair)
    torch.manual_seed(5)
    image = torch.randn(2, 3, 160, 128, dtype=torch.float64)
    masks = (torch.rand(2, 1, 160, 128) > 0.6).double()
    outputs = []
    for m in (model, ref):
        out = m(image, tokens(2), reverse_lambda=0.05)
        loss = F.binary_cross_entropy_with_logits(out.causal_logits, masks)
        loss = loss + F.binary_cross_entropy_with_logits(out.confounding_logits, masks)
        loss.backward()
        outputs.append(out)
    fast, slow = outputs
    assert_logits_close(fast.causal_logits, slow.causal_logits, rel=1e-10)
    assert_logits_close(fast.confounding_logits, slow.confounding_logits, rel=1e-10)
    ref_params = dict(ref.named_parameters())
    overall = max(p.grad.abs().max().item() for p in ref.parameters())
    for name, p in model.named_parameters():
        want = ref_params[name].grad
        # per tensor relative, with a floor for gradients that are zero in exact arithmetic
        # (e.g. the attention key bias, which softmax ignores)
        allowed = 1e-8 * want.abs().max().item() + 1e-12 * overall
        assert (p.grad - want).abs().max().item() <= allowed, name
    ref_buffers = dict(ref.named_buffers())
    for name, buf in model.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_autocast_bfloat16_runs_and_stays_close(pair):
    """The GPU training path (autocast bf16), exercised on the CPU: same dtype rules as a
    convolution under autocast, and close to float32."""
    model, _ = pair
    model.eval()
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = model(image, tokens(1), with_confounding=False).causal_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(image, tokens(1), with_confounding=False).causal_logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.1 * want.abs().max()


def test_inference_fold_follows_weight_changes():
    """The eval-mode BN fold kept for inference is redone when weights or statistics move
    (an optimiser step, load_state_dict), never stale."""
    fast, ref = make_decoders()
    fast.eval(), ref.eval()
    feats, tau = torch.randn(1, 16, 3, 4), torch.randn(1, 12)
    with torch.inference_mode():
        fast(feats, tau)
    with torch.no_grad():
        fast.visual[1][0].weight.mul_(1.5)
        fast.visual[3][1].running_var.mul_(2.0)
        ref.load_state_dict(fast.state_dict())
    with torch.inference_mode():
        assert_logits_close(fast(feats, tau), ref(feats, tau))
    other, _ = make_decoders(seed=7)
    fast.load_state_dict(other.state_dict())
    ref.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert_logits_close(fast(feats, tau), ref(feats, tau))
    fast.double(), ref.double()  # new tensors, new dtype
    with torch.inference_mode():
        got = fast(feats.double(), tau.double())
        assert got.dtype == torch.float64
        assert_logits_close(got, ref(feats.double(), tau.double()), rel=1e-12)


def test_inference_is_thread_safe_and_training_keeps_no_scratch(monkeypatch):
    """Scratch buffers are reused per thread at inference only (layers in row groups: here
    every layer): two threads at once give what one gives, and a training pass leaves
    nothing behind in the workspace."""
    import threading

    from napari_causalseg.engine import upconv

    monkeypatch.setattr(upconv, "_GROUPED_ABOVE_BYTES", 0)
    upconv._workspace.__dict__.clear()
    fast, _ = make_decoders()
    fast.eval()
    torch.manual_seed(6)
    inputs = [(torch.randn(1, 16, 4 + i, 5), torch.randn(1, 12)) for i in range(4)]
    with torch.inference_mode():
        want = [fast(f, t) for f, t in inputs]
    assert upconv._workspace.buffers  # inference did use the scratch buffers
    got = [None] * len(inputs)

    def work(i: int) -> None:
        with torch.inference_mode():
            for _ in range(3):
                got[i] = fast(*inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def trained_scratch() -> dict:
        fast.train()
        fast(*inputs[0]).sum().backward()
        return dict(getattr(upconv._workspace, "buffers", {}))

    box = {}
    thread = threading.Thread(target=lambda: box.update(trained_scratch()))
    thread.start(), thread.join()
    assert box == {}


def test_inference_mode_then_plain_no_grad_then_training():
    """Buffers and matrices first made under inference_mode serve later calls in any mode."""
    from napari_causalseg.engine import upconv, upconv_plan

    upconv._workspace.__dict__.clear()
    upconv_plan.make_plan.cache_clear()
    fast, ref = make_decoders(seed=3)
    fast.eval(), ref.eval()
    feats, tau = torch.randn(2, 16, 5, 3), torch.randn(2, 12)
    with torch.inference_mode():
        fast(feats, tau)
    with torch.no_grad():
        assert_logits_close(fast(feats, tau), ref(feats, tau))
    fast.train(), ref.train()
    got, want = fast(feats, tau), ref(feats, tau)
    assert_logits_close(got, want)
    got.sum().backward()


def test_inference_runs_a_layer_in_row_groups_only_where_its_buffers_would_be_large(monkeypatch):
    """Row groups (and their per-thread scratch buffers) above the size limit, the whole
    batch at once up to it: rn101's first decoder layer at 224 px is under it."""
    from napari_causalseg.engine import upconv

    x, taps = torch.randn(1, 6, 5, 8), tap_weights(torch.randn(4, 8, 3, 3))
    need = upconv._whole_batch_bytes(1, 6, 5, 4, x.element_size())
    for above, grouped in ((need, False), (need - 1, True)):
        monkeypatch.setattr(upconv, "_GROUPED_ABOVE_BYTES", above)
        upconv._workspace.__dict__.clear()
        with torch.inference_mode():
            upsample_conv3x3_taps(x, taps)
        assert bool(getattr(upconv._workspace, "buffers", {})) == grouped
    monkeypatch.undo()
    assert upconv._whole_batch_bytes(1, 14, 14, 512, 4) <= upconv._GROUPED_ABOVE_BYTES
    assert upconv._whole_batch_bytes(1, 56, 56, 256, 4) > upconv._GROUPED_ABOVE_BYTES
