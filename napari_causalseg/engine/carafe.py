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
        return self.out(self.reassemble(x).permute(0, 3, 1, 2))

    def reassemble(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, up*H, up*W, C), channels-last: output pixel (up*y + i,
        up*x + j) is the softmax-weighted sum of source pixel (y, x)'s k x k neighbourhood
        (zero padding). As one small product per source pixel, its up*up kernels (up*up,
        k2) by its neighbourhood (k2, C): rn101's /32 features at batch 1 ~0.45 ms, against
        ~1.9 ms for a broadcast product summed over k2; with its backward at batch 4, 8
        against 60 ms for an einsum over nearest-upsampled neighbourhoods."""
        n, c, h, w = x.shape
        k, up = self.kernel_size, self.up
        kernels = self.reassembly_kernels(x).view(n, k * k, h, up, w, up)
        kernels = kernels.permute(0, 2, 4, 3, 5, 1).reshape(n * h * w, up * up, k * k)
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, k // 2, k // 2, k // 2, k // 2))
        patches = torch.stack([padded[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)], dim=3)
        out = torch.bmm(kernels, patches.view(n * h * w, k * k, c))  # (N*H*W, up*up, C)
        return out.view(n, h, w, up, up, c).permute(0, 1, 3, 2, 4, 5).reshape(n, up * h, up * w, c)
