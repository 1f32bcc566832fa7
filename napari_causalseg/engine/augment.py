"""Training-time augmentation that keeps every note true of its image.

A user corrects a handful of X-rays; each of them has to teach more than one view. A
horizontal flip is the strongest augmentation for chest films, but it moves the lesion
to the other lung, so the flipped case gets the mirrored note ("lower right lung" becomes
"lower left lung"); notes outside the QaTa grammar are never flipped. Small rotations,
zooms and shifts (patient positioning) and exposure changes (gamma, contrast, brightness)
leave the zones a note names where they were.

Augmentation runs on whole batches of model-ready tensors, driven by one
`torch.Generator`, so a seeded run is reproducible and resume stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges are symmetric: rotation in degrees, zoom and shift as fractions of the side."""

    flip: float = 0.5  # probability of a horizontal flip (with the mirrored note)
    rotate_deg: float = 8.0
    zoom: float = 0.10
    shift: float = 0.06
    gamma: float = 0.35  # log-gamma range: x ** exp(U(-g, g))
    contrast: float = 0.20
    brightness: float = 0.08

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip}")
        for name in ("rotate_deg", "zoom", "shift", "gamma", "contrast", "brightness"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is a range and cannot be negative, got {getattr(self, name)}")
        if self.zoom >= 1.0:
            raise ValueError(f"zoom must be below 1 (a fraction of the image side), got {self.zoom}")


NO_AUGMENTATION = AugmentConfig(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _clip_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return mean, std


def _uniform(n: int, span: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2.0 - 1.0) * span


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    tokens: torch.Tensor,
    mirrored_tokens: torch.Tensor,
    can_flip: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented (images, masks, tokens) of one batch.

    `images`: (B, 3, S, S) CLIP-normalised; `masks`: (B, 1, S, S) in {0, 1}; `tokens` and
    `mirrored_tokens`: (B, L) ids of each note and of its mirror; `can_flip`: (B,) bool,
    False where the note has no mirror. Random numbers are drawn on the CPU from
    `generator` (the same stream on every device)."""
    b = images.shape[0]
    device = images.device
    if cfg == NO_AUGMENTATION:
        return images, masks, tokens
    mean, std = _clip_stats(images)
    x = images * std + mean  # back to [0, 1] (grey images have three equal channels)
    m = masks.to(x.dtype)

    flip = (torch.rand(b, generator=generator) < cfg.flip) & can_flip.cpu()
    flip_d = flip.to(device)
    x = torch.where(flip_d[:, None, None, None], x.flip(-1), x)
    m = torch.where(flip_d[:, None, None, None], m.flip(-1), m)
    tokens = torch.where(flip_d[:, None], mirrored_tokens, tokens)

    angle = _uniform(b, math.radians(cfg.rotate_deg), generator)
    scale = 1.0 + _uniform(b, cfg.zoom, generator)
    tx, ty = _uniform(b, cfg.shift * 2.0, generator), _uniform(b, cfg.shift * 2.0, generator)
    if cfg.rotate_deg or cfg.zoom or cfg.shift:
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(device, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        m = (F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5)
        m = m.to(x.dtype)

    gamma = torch.exp(_uniform(b, cfg.gamma, generator)).view(b, 1, 1, 1).to(device, x.dtype)
    contrast = (1.0 + _uniform(b, cfg.contrast, generator)).view(b, 1, 1, 1).to(device, x.dtype)
    bright = _uniform(b, cfg.brightness, generator).view(b, 1, 1, 1).to(device, x.dtype)
    x = x.clamp(0.0, 1.0) ** gamma
    x = ((x - 0.5) * contrast + 0.5 + bright).clamp(0.0, 1.0)
    return ((x - mean) / std).contiguous(), m.to(masks.dtype), tokens
