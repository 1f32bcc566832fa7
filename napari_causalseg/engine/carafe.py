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
        # k x k neighbourhoods of every source pixel: (N, C*k2, H, W)
        patches = F.unfold(x, k, padding=k // 2)
        if torch.is_grad_enabled():
            # Each output pixel reads the neighbourhood of its source pixel (nearest):
            # a batched GEMM per pixel, whose backward is GEMMs too.
            kernels = self.reassembly_kernels(x)  # (N, k2, uH, uW)
            patches = F.interpolate(patches.view(n, c * k * k, h, w), scale_factor=up, mode="nearest")
            out = torch.einsum("nckhw,nkhw->nchw", patches.view(n, c, k * k, up * h, up * w), kernels)
            return self.out(out)
        # Without autograd the same sums as one broadcast product and a sum over k2: output
        # pixel (up*y + i, up*x + j) reads source pixel (y, x)'s neighbourhood. ~6x faster
        # on the CPU for rn101's /32 features (2 instead of 12 ms); in training its
        # backward (reductions over the broadcast axes) was slower than the GEMMs'.
        kernels = self.reassembly_kernels(x).view(n, 1, k * k, h, up, w, up)
        out = (patches.view(n, c, k * k, h, 1, w, 1) * kernels).sum(2)  # (N, C, H, up, W, up)
        return self.out(out.view(n, c, up * h, up * w))
