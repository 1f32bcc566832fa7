"""The min-max game: who minimises what, checked through the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_causalseg.engine.objective import causal_objective

from .test_model import tokens


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def test_gradient_signs_follow_the_game(tiny_model):
    """D_s descends L_s; the masker descends L_c - lambda * L_s; D_c descends L_c."""
    model = tiny_model.train()
    lam = 0.05
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    masks = (torch.rand(2, 1, 224, 224) > 0.7).float()
    d_s = list(model.confounding_decoder.parameters())
    d_c = list(model.causal_decoder.parameters())
    masker = list(model.intervention.maskers.parameters())

    torch.manual_seed(1)
    terms = causal_objective(model, images, tokens(2), masks, lam)
    game = grads(terms.backward, d_s + d_c + masker)

    # the same forward without the reversal layer, losses taken apart
    torch.manual_seed(1)
    out = model(images, tokens(2))
    loss_c = F.binary_cross_entropy_with_logits(out.causal_logits, masks)
    loss_s = F.binary_cross_entropy_with_logits(out.confounding_logits, masks)
    want_ds = grads(loss_s, d_s)
    want_dc = grads(loss_c, d_c)
    want_masker = grads(loss_c - lam * loss_s, masker)

    n_s, n_c = len(d_s), len(d_c)
    for got, want in zip(game[:n_s], want_ds):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(game[n_s:n_s + n_c], want_dc):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(game[n_s + n_c:], want_masker):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # and the masker's gradient really contains the reversed L_s term
    plain = grads(loss_c + lam * loss_s, masker)
    assert any(not torch.allclose(a, b) for a, b in zip(game[n_s + n_c:], plain))
    torch.testing.assert_close(terms.objective, (loss_c - lam * loss_s).detach())
