"""The causal intervention module: maskers split features into causal and confounding.

Per scale i: M_i = sigmoid(F(F_i)), F_i^c = M_i * F_i, F_i^s = (1 - M_i) * F_i, where the
three scales are first unified to 512 x /16 (RN101 widths). The masks are per channel
and per pixel. Causal maps of the scales are concatenated and fused into F^c, the
confounding maps with the same fusion conv into F^s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .carafe import CARAFE


def conv_bn_relu(in_dim: int, out_dim: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )


class CoordConv(nn.Module):
    """conv3x3+BN+ReLU over the input with x, y coordinates in [-1, 1] appended."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = conv_bn_relu(in_dim + 2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        coords = coordinates(h, w, x).expand(b, 2, h, w)
        return self.conv(torch.cat([x, coords], dim=1))


def coordinates(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """CoordConv's two extra channels, (1, 2, h, w): x then y, each from -1 to 1."""
    ys = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None]


class Masker(nn.Module):
    """F of the paper: CoordConv, conv, CoordConv, conv3x3+BN, sigmoid -> M in (0, 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            CoordConv(dim, dim),
            conv_bn_relu(dim, dim),
            CoordConv(dim, dim),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),  # BN follows: a bias is redundant
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def fuse_confounder_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Mbar = 1 - M averaged over channels and scales: (B, 1, H/16, W/16) in [0, 1]."""
    return torch.stack([1 - m.float().mean(dim=1, keepdim=True) for m in masks]).mean(0)


@dataclass
class CausalFeatures:
    """Output of the intervention: fused causal / confounding maps and the masks M_i."""

    causal: torch.Tensor  # F^c (B, C, H/16, W/16)
    confounding: torch.Tensor | None  # F^s; None when not computed (inference)
    masks: list[torch.Tensor]  # M_i per scale (B, C, H/16, W/16); Mbar_i = 1 - M_i

    def confounder_map(self) -> torch.Tensor:
        return fuse_confounder_masks(self.masks)


class CausalIntervention(nn.Module):
    """Scale unification to /16, three maskers, and the shared fusion conv."""

    def __init__(self, stage_dims: tuple[int, int, int], pool_dim: int, dim: int):
        super().__init__()
        c2, c3, _ = stage_dims
        if c2 != dim:
            raise ValueError(f"layer2 width {c2} must equal the feature width {dim}")
        # layer2 (/8) -> avg_pool 2x2; layer3 (/16) -> two conv3x3; dense pool (/32) -> CARAFE x2
        self.align3 = nn.Sequential(conv_bn_relu(c3, dim), conv_bn_relu(dim, dim))
        self.align4 = CARAFE(pool_dim, dim, kernel_size=3, up=2)
        self.maskers = nn.ModuleList([Masker(dim) for _ in range(3)])
        self.fuse = conv_bn_relu(3 * dim, dim, kernel_size=1)

    def align(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor) -> list[torch.Tensor]:
        return [F.avg_pool2d(c2, 2), self.align3(c3), self.align4(c4)]

    def forward(
        self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor, with_confounding: bool = True
    ) -> CausalFeatures:
        feats = self.align(c2, c3, c4)
        masks = [masker(f) for masker, f in zip(self.maskers, feats)]
        causal = self.fuse(torch.cat([m * f for m, f in zip(masks, feats)], dim=1))
        confounding = None
        if with_confounding:  # only D_s reads F^s, and D_s only trains
            confounding = self.fuse(torch.cat([(1 - m) * f for m, f in zip(masks, feats)], dim=1))
        return CausalFeatures(causal=causal, confounding=confounding, masks=masks)
