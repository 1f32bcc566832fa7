"""The numerical oracle: CausalCLIPSeg's decoder and model written straightforwardly.

This is the method as described (and as the authors' code does it): upsample, then
convolve, at full resolution, then the 1x1 conv, then the per-sample dynamic conv, and
both decoders always run. It shares the production model's module names, so one state
dict loads into both (`reference_from`). The production decoder must agree with it in
training and eval mode, outputs and gradients (tests/test_fast_decoder.py); the
benchmarks time it as the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_causalseg.engine.causal import CausalIntervention, conv_bn_relu
from napari_causalseg.engine.config import ModelConfig
from napari_causalseg.engine.encoders import TextEncoder, VisionEncoder
from napari_causalseg.engine.model import CausalCLIPSeg, CausalSegOutput, reverse_gradient


class ReferenceDecoder(nn.Module):
    """bilinear x4 -> conv3x3+BN+ReLU -> bilinear x4 -> conv3x3+BN+ReLU -> conv1x1, then
    S = W_tau * (that) + b_tau as a grouped convolution."""

    def __init__(self, in_dim: int, dim: int, text_dim: int, kernel_size: int = 3):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.upsample = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.visual = nn.Sequential(
            self.upsample,
            conv_bn_relu(in_dim, in_dim),
            self.upsample,
            conv_bn_relu(in_dim, dim),
            nn.Conv2d(dim, dim, 1),
        )
        self.text = nn.Linear(text_dim, dim * kernel_size * kernel_size + 1)

    def kernels(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.text(tau)
        k = self.kernel_size
        return params[:, :-1].reshape(-1, self.dim, k, k), params[:, -1]

    def dynamic(self, pixels: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixels.shape
        weight, bias = self.kernels(tau.to(pixels.dtype))
        out = F.conv2d(
            pixels.reshape(1, b * c, h, w), weight, bias, padding=self.kernel_size // 2, groups=b
        )
        return out.reshape(b, 1, h, w)

    def forward(self, features: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.dynamic(self.visual(features), tau)


class ReferenceCausalCLIPSeg(nn.Module):
    """The whole model with reference decoders; same attribute names as CausalCLIPSeg."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vision = VisionEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.intervention = CausalIntervention(
            cfg.vision.stage_channels, cfg.embed_dim, cfg.feature_dim
        )
        self.causal_decoder = ReferenceDecoder(
            cfg.feature_dim, cfg.decoder_dim, cfg.embed_dim, cfg.kernel_size
        )
        self.confounding_decoder = ReferenceDecoder(
            cfg.feature_dim, cfg.decoder_dim, cfg.embed_dim, cfg.kernel_size
        )

    def forward(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        *,
        with_confounding: bool = True,
        reverse_lambda: float | None = None,
    ) -> CausalSegOutput:
        feats = self.intervention(*self.vision(image))
        tau = self.text(tokens)
        causal = self.causal_decoder(feats.causal, tau)
        confounding = None
        if with_confounding:
            f_s = feats.confounding
            if reverse_lambda is not None:
                f_s = reverse_gradient(f_s, reverse_lambda)
            confounding = self.confounding_decoder(f_s, tau)
        return CausalSegOutput(causal, confounding, feats.masks)


def reference_from(model: CausalCLIPSeg) -> ReferenceCausalCLIPSeg:
    """A reference model holding a copy of `model`'s weights and buffers, same mode."""
    ref = ReferenceCausalCLIPSeg(model.config)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.train(model.training)


def with_batchnorm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (random
    init leaves mean 0, var 1, weight 1, bias 0, which would hide a folding mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model
