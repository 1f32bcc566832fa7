"""CausalCLIPSeg: CLIP encoders, causal intervention, and two text-conditioned decoders.

At inference only D_c's output is the prediction; the maskers still run because the
confounder map (1 - M) is part of what the user sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bn_folding import FusedModelError
from .causal import CausalFeatures, CausalIntervention, fuse_confounder_masks
from .config import ModelConfig
from .decoder import TextConditionedDecoder
from .encoders import TextEncoder, VisionEncoder


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient times -scale backward (the min-max game's hinge)."""
    return _ReverseGradient.apply(x, scale)


@dataclass
class CausalSegOutput:
    """Everything training and the confounder layer need from one forward pass."""

    causal_logits: torch.Tensor  # D_c(tau, F^c): (B, 1, H, W), the prediction
    confounding_logits: torch.Tensor | None  # D_s(tau, F^s); None when not computed
    masks: list[torch.Tensor]  # M_i per scale; the confounder masks are 1 - M_i

    def confounder_map(self) -> torch.Tensor:
        return fuse_confounder_masks(self.masks)


class CausalCLIPSeg(nn.Module):
    fused_for_inference = False  # set by bn_folding.fuse_for_inference_ (BatchNorms folded)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vision = VisionEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.intervention = CausalIntervention(
            cfg.vision.stage_channels, cfg.embed_dim, cfg.feature_dim
        )
        self.causal_decoder = TextConditionedDecoder(
            cfg.feature_dim, cfg.decoder_dim, cfg.embed_dim, cfg.kernel_size
        )
        self.confounding_decoder = TextConditionedDecoder(
            cfg.feature_dim, cfg.decoder_dim, cfg.embed_dim, cfg.kernel_size
        )

    def train(self, mode: bool = True) -> CausalCLIPSeg:
        if mode and self.fused_for_inference:
            raise FusedModelError(
                "this model's BatchNorms were folded for inference (a Segmenter's model); "
                "load the checkpoint again with load_checkpoint to train or fine-tune"
            )
        return super().train(mode)

    def encode_image(self, image: torch.Tensor, with_confounding: bool = True) -> CausalFeatures:
        """F^c, the masks and (unless `with_confounding` is False: inference) F^s."""
        size = image.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"input sides must be multiples of 32, got {tuple(size)}")
        return self.intervention(*self.vision(image), with_confounding=with_confounding)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tau: (B, embed_dim), identical to open_clip's `encode_text`."""
        return self.text(tokens)

    def pixel_features(self, causal: torch.Tensor) -> torch.Tensor:
        """D_c's text-independent part at input resolution: what an image-feature cache
        keeps, so a new note on the same image only runs the text side."""
        return self.causal_decoder.features(causal)

    def causal_logits(self, pixels: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """D_c's note-dependent part: the dynamic kernel of tau applied to cached pixels."""
        return self.causal_decoder.logits(pixels, tau)

    def causal_logits_without_features(self, causal: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """`causal_logits(pixel_features(causal), tau)` for one note, without holding the
        full-resolution features (decoder.py): for an image prompted once."""
        return self.causal_decoder.logits_without_features(causal, tau)

    def forward(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        *,
        with_confounding: bool = True,
        reverse_lambda: float | None = None,
    ) -> CausalSegOutput:
        """Both decoders by default; `reverse_lambda` puts the gradient-reversal layer
        between F^s and D_s for the adversarial objective."""
        feats = self.encode_image(image, with_confounding=with_confounding)
        tau = self.encode_text(tokens)
        causal = self.causal_decoder(feats.causal, tau)
        confounding = None
        if with_confounding:
            f_s = feats.confounding
            if reverse_lambda is not None:
                f_s = reverse_gradient(f_s, reverse_lambda)
            confounding = self.confounding_decoder(f_s, tau)
        return CausalSegOutput(causal, confounding, feats.masks)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
