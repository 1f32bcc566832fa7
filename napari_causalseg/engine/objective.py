"""The adversarial objective L = L_c - lambda * L_s, played as a two-player game.

The masker and encoders minimise L_c - lambda * L_s (push lesion evidence out of the
confounding branch) while D_s minimises L_s (segments as well as it can from the
confounders). A gradient-reversal layer with factor lambda between F^s and D_s gives
both in one backward pass of L_c + L_s. Taken literally (D_s also maximising L_s) BCE
is unbounded and D_s diverges, which is why the game reading is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import CausalCLIPSeg


@dataclass
class LossTerms:
    backward: torch.Tensor  # what to call .backward() on: L_c + L_s through the reversal
    objective: torch.Tensor  # L_c - lambda * L_s, the paper's L (for reporting)
    causal: torch.Tensor  # L_c
    confounding: torch.Tensor  # L_s


def causal_objective(
    model: CausalCLIPSeg | torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    masks: torch.Tensor,
    lam: float = 0.05,
) -> LossTerms:
    """One forward pass of both branches and the game's losses (masks in {0, 1})."""
    out = model(images, tokens, reverse_lambda=lam)
    target = masks.to(out.causal_logits.dtype)
    loss_c = F.binary_cross_entropy_with_logits(out.causal_logits.float(), target.float())
    loss_s = F.binary_cross_entropy_with_logits(out.confounding_logits.float(), target.float())
    return LossTerms(
        backward=loss_c + loss_s,
        objective=(loss_c - lam * loss_s).detach(),
        causal=loss_c.detach(),
        confounding=loss_s.detach(),
    )
