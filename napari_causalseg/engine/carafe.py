"""CARAFE: content-aware upsampling, in plain PyTorch (no mmcv).

Each output pixel is a softmax-weighted sum of the k x k neighbourhood of its source
pixel, with the weights predicted from the content. The paper uses it to bring the
/32 dense-pool features to /16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CARAFE(nn.Module):
    """x2 (by default) content-aware reassembly followed by a 1x1 output conv."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3, up: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.up = up
        self.compress = nn.Conv2d(in_dim, max(in_dim // 4, 1), 1)
        self.encoder = nn.Conv2d(
            max(in_dim // 4, 1), up * up * kernel_size * kernel_size, kernel_size,
            padding=kernel_size // 2,
        )
        self.out = nn.Conv2d(in_dim, out_dim, 1)

    def reassembly_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """(N, k*k, up*H, up*W) normalised kernels, one per output pixel."""
        kernels = F.pixel_shuffle(self.encoder(self.compress(x)), self.up)
        return kernels.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, up = self.kernel_size, self.up
        kernels = self.reassembly_kernels(x)  # (N, k2, uH, uW)
        # k x k neighbourhoods of every source pixel: (N, C*k2, H, W)
        patches = F.unfold(x, k, padding=k // 2).view(n, c * k * k, h, w)
        # Each output pixel reads the neighbourhood of its source pixel (nearest).
        patches = F.interpolate(patches, scale_factor=up, mode="nearest")
        patches = patches.view(n, c, k * k, up * h, up * w)
        out = torch.einsum("nckhw,nkhw->nchw", patches, kernels)
        return self.out(out)
