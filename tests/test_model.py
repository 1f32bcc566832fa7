"""The CausalCLIPSeg network: shapes, the masker split, CARAFE, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_causalseg.engine import CausalCLIPSeg, count_parameters, get_config
from napari_causalseg.engine.carafe import CARAFE


def tokens(batch: int = 1, ctx: int = 24) -> torch.Tensor:
    t = torch.zeros(batch, ctx, dtype=torch.long)
    t[:, 0], t[:, 1:4], t[:, 4] = 49406, torch.tensor([25599, 39132, 14774]), 49407
    return t


@pytest.mark.parametrize("size", [(224, 224), (256, 192), (160, 320)])
def test_forward_shapes(tiny_model, size):
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = tiny_model(image, tokens(2))
    assert out.causal_logits.shape == (2, 1, *size)
    assert out.confounding_logits.shape == (2, 1, *size)
    grid = (size[0] // 16, size[1] // 16)
    assert [tuple(m.shape) for m in out.masks] == [(2, 64, *grid)] * 3
    conf = out.confounder_map()
    assert conf.shape == (2, 1, *grid)
    assert conf.min() >= 0.0 and conf.max() <= 1.0


def test_input_must_be_multiple_of_32(tiny_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_model(torch.randn(1, 3, 200, 224), tokens())


def test_masks_split_features_exactly(tiny_model):
    """M + Mbar = 1: causal and confounding parts add back to the aligned features."""
    with torch.no_grad():
        c2, c3, c4 = tiny_model.vision(torch.randn(1, 3, 224, 224))
        feats = tiny_model.intervention.align(c2, c3, c4)
        masks = [m(f) for m, f in zip(tiny_model.intervention.maskers, feats)]
    for f, m in zip(feats, masks):
        assert ((m > 0) & (m < 1)).all()
        causal, confounding = m * f, (1 - m) * f
        torch.testing.assert_close(causal + confounding, f)
        assert not torch.allclose(causal, f)  # the mask really selects


def test_confounding_branch_is_optional(tiny_model):
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        both = tiny_model(image, tokens())
        causal_only = tiny_model(image, tokens(), with_confounding=False)
    assert both.confounding_logits is not None and causal_only.confounding_logits is None
    torch.testing.assert_close(both.causal_logits, causal_only.causal_logits)


def carafe_reference(module: CARAFE, x: torch.Tensor) -> torch.Tensor:
    """CARAFE written out pixel by pixel from its definition."""
    k, up = module.kernel_size, module.up
    n, c, h, w = x.shape
    kernels = module.reassembly_kernels(x)  # (N, k*k, up*h, up*w)
    padded = F.pad(x, (k // 2,) * 4)
    out = torch.zeros(n, c, up * h, up * w)
    for i in range(up * h):
        for j in range(up * w):
            si, sj = i // up, j // up
            window = padded[:, :, si : si + k, sj : sj + k].reshape(n, c, k * k)
            out[:, :, i, j] = (window * kernels[:, None, :, i, j]).sum(-1)
    return module.out(out)


@pytest.mark.parametrize(("k", "up", "channels_last"), [(3, 2, False), (5, 3, True)])
def test_carafe_matches_reference(k, up, channels_last):
    """Without autograd and with it (whose gradients are then those of the
    pixel-by-pixel definition), for other kernel sizes, factors and memory layouts too."""
    torch.manual_seed(0)
    module = CARAFE(16, 12, kernel_size=k, up=up)
    x = torch.randn(2, 16, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with torch.no_grad():
        fast, slow = module(x), carafe_reference(module, x)
    assert fast.shape == (2, 12, 5 * up, 6 * up)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    recorded, slow = module(x), carafe_reference(module, x)
    torch.testing.assert_close(recorded, slow, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(slow)
    params = [x, *module.parameters()]
    for ours, theirs in zip(torch.autograd.grad(recorded, params, g), torch.autograd.grad(slow, params, g)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_carafe_kernels_are_normalised():
    module = CARAFE(8, 8)
    kernels = module.reassembly_kernels(torch.randn(1, 8, 4, 4))
    torch.testing.assert_close(kernels.sum(1), torch.ones(1, 8, 8))


def expected_rn101_parameters() -> dict[str, int]:
    """Parameter counts derived by hand from method.md for the paper's model."""
    conv = lambda i, o, k, bias=False: i * o * k * k + (o if bias else 0)  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    # CLIP RN101 image tower (stem, 3-4-23-3 bottlenecks, attention pool) + residual branch
    stem = conv(3, 32, 3) + bn(32) + conv(32, 32, 3) + bn(32) + conv(32, 64, 3) + bn(64)

    def bottleneck(inp, planes, down):
        p = conv(inp, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
        p += conv(planes, 4 * planes, 1) + bn(4 * planes)
        if down:
            p += conv(inp, 4 * planes, 1) + bn(4 * planes)
        return p

    layers, inp = 0, 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 23, 3)):
        for b in range(blocks):
            layers += bottleneck(inp, planes, down=(b == 0))
            inp = 4 * planes
    attnpool = 50 * 2048 + 3 * (2048 * 2048 + 2048) + (2048 * 512 + 512)
    residual = conv(2048, 512, 1) + bn(512)
    vision = stem + layers + attnpool + residual
    # CLIP text tower: 49408 x 512 tokens, 20 positions, 12 blocks, final LN, projection
    block = 2 * (2 * 512) + (3 * 512 * 512 + 3 * 512) + (512 * 512 + 512) + (512 * 2048 + 2048) + (2048 * 512 + 512)
    text = 49408 * 512 + 20 * 512 + 12 * block + 2 * 512 + 512 * 512
    # causal intervention: layer3 alignment, CARAFE, three maskers, fusion
    align3 = conv(1024, 512, 3) + bn(512) + conv(512, 512, 3) + bn(512)
    carafe = conv(512, 128, 1, True) + conv(128, 36, 3, True) + conv(512, 512, 1, True)
    masker = 2 * (conv(514, 512, 3) + bn(512) + conv(512, 512, 3) + bn(512))
    fuse = conv(1536, 512, 1) + bn(512)
    intervention = align3 + carafe + 3 * masker + fuse
    decoder = conv(512, 512, 3) + bn(512) + conv(512, 256, 3) + bn(256) + conv(256, 256, 1, True)
    decoder += 512 * (256 * 9 + 1) + 256 * 9 + 1
    return {"vision": vision, "text": text, "intervention": intervention,
            "causal_decoder": decoder, "confounding_decoder": decoder}


def test_rn101_preset_parameter_count():
    model = CausalCLIPSeg(get_config("rn101"))
    expected = expected_rn101_parameters()
    actual = {name: count_parameters(getattr(model, name)) for name in expected}
    total = count_parameters(model)
    print(f"\nrn101 CausalCLIPSeg parameters: {total:,} ({actual})")
    assert actual == expected
    assert total == sum(expected.values())
    assert model.config.decoder_dim == 256 and model.config.feature_dim == 512


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="rn101"):
        get_config("rn50x4")
