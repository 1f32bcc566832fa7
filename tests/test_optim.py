"""The training optimiser: Adam, fused where torch can, with torch's default Adam's updates."""

from __future__ import annotations

import torch

from napari_causalseg.engine import CausalCLIPSeg, NoteTokenizer
from napari_causalseg.engine.optim import adam

from .conftest import NOTE


def test_adam_takes_the_same_steps_as_torch_default_adam():
    torch.manual_seed(0)
    shapes = [(64, 33), (7,), (3, 5, 2)]
    ours = [torch.randn(s, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours, opt_theirs = adam(ours, lr=3e-3), torch.optim.Adam(theirs, lr=3e-3)
    assert opt_ours.defaults["lr"] == 3e-3
    # torch >= 2.4 has a fused kernel for the CPU (the torch the tests install)
    assert bool(opt_ours.defaults.get("fused")) == (torch.__version__ >= "2.4")
    for _ in range(5):
        grads = [torch.randn(s) * scale for s, scale in zip(shapes, (1.0, 1e-4, 1e-6))]  # eps matters
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the state a resume saves and loads has the same entries
    assert sorted(opt_ours.state[ours[0]]) == sorted(opt_theirs.state[theirs[0]])


def test_gradients_in_another_layout_than_their_parameter_get_the_right_update():
    """Autograd may hand a contiguous conv weight a channels-last gradient, or a matrix a
    transposed one; torch's fused CPU kernel would apply such updates to the wrong
    elements. The training step (a real backward) and a hand-made gradient both match
    torch's default Adam."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    twin = torch.nn.Conv2d(4, 8, 3, padding=1)
    twin.load_state_dict(conv.state_dict())
    matrix = torch.randn(6, 5, requires_grad=True)
    matrix_twin = matrix.detach().clone().requires_grad_()
    ours = adam([*conv.parameters(), matrix], lr=1e-2)
    theirs = torch.optim.Adam([*twin.parameters(), matrix_twin], lr=1e-2)
    x = torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last)
    for module, m, opt in ((conv, matrix, ours), (twin, matrix_twin, theirs)):
        for _ in range(3):
            opt.zero_grad()
            module(x).square().mean().backward()
            m.grad = torch.randn(5, 6, generator=torch.Generator().manual_seed(4)).T  # transposed
            opt.step()
    assert conv.weight.grad is not None
    torch.testing.assert_close(conv.weight, twin.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(matrix, matrix_twin, rtol=1e-5, atol=1e-6)


def test_a_step_reaches_the_models_inference_caches(tiny_model):
    """The decoders keep their BN-folded weights for inference until a weight's version
    changes; after an optimiser step the model must predict with the new weights (as a
    fresh copy holding them does), or validation during training would use stale ones."""
    tokens = NoteTokenizer(tiny_model.config.text.context_length).encode(NOTE).ids[None]
    size = tiny_model.config.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = tokens.expand(2, -1)
    with torch.no_grad():
        tiny_model.eval()(images, tokens)  # fills the caches
    opt = adam([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    tiny_model.train()
    tiny_model(images, tokens).causal_logits.square().mean().backward()
    opt.step()
    fresh = CausalCLIPSeg(tiny_model.config)
    fresh.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        got = tiny_model.eval()(images, tokens).causal_logits
        want = fresh.eval()(images, tokens).causal_logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_adam_falls_back_where_torch_has_no_fused_kernel():
    """Complex parameters and the meta device have no fused kernel: the default Adam,
    which then steps as usual."""
    for param in (torch.zeros(4, dtype=torch.complex64, requires_grad=True),
                  torch.zeros(4, device="meta", requires_grad=True)):
        opt = adam([param], lr=1e-3)
        assert not opt.defaults.get("fused")
        param.grad = torch.ones_like(param)
        opt.step()
