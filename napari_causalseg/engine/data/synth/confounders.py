"""The planted confounder's presence rule and the ECG lead artefact (see the package
docstring: present with the lesion in coupled splits, independent of it elsewhere)."""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy
from .config import ZONE_CODES, SynthConfig
from .raster import band, segments, smoothstep


def _draw_lead(rng: np.random.Generator, an: Anatomy, at: tuple[float, float]) -> np.ndarray:
    """ECG electrode (ring + snap) with a wire running off toward an image edge (0..1)."""
    X, Y, pose = an.X, an.Y, an.pose
    px = 1.0 / X.shape[0]
    cx, cy = at
    r = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
    rad = rng.uniform(0.022, 0.03)
    disc = 0.45 * smoothstep((rad - r) / (1.5 * px))
    ring = band(r - rad, 0.004, 1.5 * px)
    snap = smoothstep((0.008 - r) / (1.5 * px))
    ex = 0.55 * (1.0 if cx > 0 else -1.0) * rng.uniform(0.6, 1.0)
    ey = rng.uniform(-0.1, 1.1)
    mx, my = (cx + ex) / 2 + rng.uniform(-0.15, 0.15), (cy + ey) / 2 + rng.uniform(-0.15, 0.15)
    t = np.linspace(0, 1, 13)
    bx = (1 - t) ** 2 * cx + 2 * (1 - t) * t * mx + t**2 * ex
    by = (1 - t) ** 2 * cy + 2 * (1 - t) * t * my + t**2 * ey
    segs = [pose.seg(bx[i], by[i], bx[i + 1], by[i + 1], 1.6 * px, 1.0) for i in range(12)]
    wire = np.clip(segments(X.shape, segs), 0, 1) * (r > rad)
    return np.clip(np.maximum(disc, ring) + snap + 0.8 * wire, 0, 1)


def confounder_on(rng: np.random.Generator, cfg: SynthConfig, split: str, lesion: bool) -> bool:
    """Whether the case carries the confounder: follows ``lesion`` in coupled splits."""
    u = rng.random()  # always drawn: the rest of the case does not depend on the setting
    if cfg.confounder is None:
        return False
    if split in cfg.coupled_splits:
        return u < (cfg.confounder_p if lesion else 1.0 - cfg.confounder_p)
    return u < cfg.confounder_p_test


def place_lead(
    rng: np.random.Generator,
    cfg: SynthConfig,
    split: str,
    zones: list[tuple[str, str]],
    mask: np.ndarray,
    zmap: np.ndarray,
    an: Anatomy,
) -> np.ndarray:
    """The lead on a lesion area in coupled splits (a location shortcut too), else on a
    random lung zone whatever the lesions."""
    if split in cfg.coupled_splits and zones:
        code = ZONE_CODES[zones[int(rng.integers(len(zones)))]]
        where = mask & (zmap == code)
    else:
        where = zmap == 1 + int(rng.integers(6))
    ys, xs = np.nonzero(where)
    j = int(rng.integers(ys.size))
    return _draw_lead(rng, an, (float(an.X[ys[j], xs[j]]), float(an.Y[ys[j], xs[j]])))
