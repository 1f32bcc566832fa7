"""Text-to-pixel decoder D: a note-generated kernel convolved over full-resolution features.

A linear layer maps tau to C*K*K + 1 numbers: a per-sample kernel W_tau and bias b_tau.
The visual path (bilinear x4, conv, bilinear x4, conv, 1x1) does not depend on the note,
which is what lets a new note on the same image skip it (see `Segmenter`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .causal import conv_bn_relu


class TextConditionedDecoder(nn.Module):
    """S = W_tau * up(F) + b_tau at input resolution (one logit channel)."""

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
        """(B, C, K, K) kernels and (B,) biases from the text feature."""
        params = self.text(tau)
        k = self.kernel_size
        return params[:, :-1].reshape(-1, self.dim, k, k), params[:, -1]

    def dynamic(self, pixels: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The note-dependent part: per-sample convolution as one grouped conv."""
        b, c, h, w = pixels.shape
        weight, bias = self.kernels(tau.to(pixels.dtype))
        if weight.shape[0] != b:
            if weight.shape[0] != 1 and b != 1:
                raise ValueError(f"{weight.shape[0]} notes for {b} images")
            # One note for many images, or many notes for one image: broadcast.
            n = max(b, weight.shape[0])
            pixels = pixels.expand(n, c, h, w)
            weight, bias = weight.expand(n, -1, -1, -1), bias.expand(n)
            b = n
        out = F.conv2d(
            pixels.reshape(1, b * c, h, w), weight, bias, padding=self.kernel_size // 2, groups=b
        )
        return out.reshape(b, 1, h, w)

    def forward(self, features: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.dynamic(self.visual(features), tau)
