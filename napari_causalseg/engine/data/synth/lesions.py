"""Lesions: which lung zones a case names, one contiguous lesion per named zone, and the
opacity the lesions add to the lung air."""

from __future__ import annotations

import numpy as np

from ...notes import SIDES, ZONES, sorted_zones
from .anatomy import Anatomy
from .config import IMAGE_SIGN, SynthConfig
from .raster import blur, largest_component, smooth_noise


def draw_zones(rng: np.random.Generator, cfg: SynthConfig) -> list[tuple[str, str]]:
    """Lesion layout: bilateral or one side, 1-3 zones per side, lower zones favoured."""
    if rng.random() < cfg.p_healthy:
        return []
    sides = list(SIDES) if rng.random() < cfg.p_bilateral else [SIDES[int(rng.integers(2))]]
    w = np.asarray(cfg.zone_weights, float)
    pk = np.asarray(cfg.p_zones_per_side, float)
    out = []
    for s in sides:
        k = 1 + int(rng.choice(3, p=pk / pk.sum()))
        picked = rng.choice(3, size=k, replace=False, p=w / w.sum())
        out += [(s, ZONES[int(j)]) for j in picked]
    return sorted_zones(out)


def lesion_mask(
    rng: np.random.Generator, zone: np.ndarray, side: str, cfg: SynthConfig
) -> np.ndarray:
    """One contiguous, zone-filling lesion: a wobbly star-shaped region clipped to the zone."""
    ys, xs = np.nonzero(zone)
    if ys.size == 0:
        return zone
    cx, cy = xs.mean(), ys.mean()
    sx, sy = max(xs.std(), 1.0) * 1.73, max(ys.std(), 1.0) * 1.73
    cx += IMAGE_SIGN[side] * rng.uniform(0.0, 0.35) * sx  # COVID lesions favour the periphery
    cy += rng.uniform(-0.2, 0.2) * sy
    # snap the centre into the zone
    j = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    cx, cy = float(xs[j]), float(ys[j])
    i0, i1, j0, j1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1  # work on the zone's box
    yy = np.arange(i0, i1, dtype=np.float32)[:, None]
    xx = np.arange(j0, j1, dtype=np.float32)[None, :]
    dx, dy = (xx - cx) / sx, (yy - cy) / sy
    rho = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx)
    radius = np.full(rho.shape, rng.uniform(*cfg.zone_cover), np.float32)
    for kk in (2, 3, 5):
        radius *= 1.0 + rng.uniform(0.0, 0.12) * np.cos(kk * th + rng.uniform(0, 6.3))
    lesion = np.zeros_like(zone)
    lesion[i0:i1, j0:j1] = zone[i0:i1, j0:j1] & (rho <= radius)
    return largest_component(lesion)


def lesion_density(
    rng: np.random.Generator, cfg: SynthConfig, mask: np.ndarray, an: Anatomy
) -> np.ndarray:
    """Opacity of the lesions: fills part of the lung air, soft-edged, mottled, lung-bounded."""
    s = cfg.size
    soft = blur(mask.astype(np.float32), rng.uniform(*cfg.lesion_softness_px) * s / 224)
    mottle = np.clip(0.8 + 0.2 * smooth_noise(rng, (s, s), 10), 0.4, 1.2)
    mottle += 0.06 * smooth_noise(rng, (s, s), 40)
    strength = rng.uniform(*cfg.lesion_strength)
    return strength * 0.45 * an.air * np.clip(soft * 1.15, 0, 1) * mottle
