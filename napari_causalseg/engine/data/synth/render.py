"""Acquisition: exposure window, gamma, heel effect, collimation, blur and noise, then the
burned-in letters. Drawn once per case and applied alike to the case and its lesion-free
twin, so the two differ only by the lesion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy
from .config import SynthConfig
from .raster import blur, smooth_noise
from .text import CORNERS, burn_text


@dataclass
class Acquisition:
    """How one radiograph was exposed and recorded (every random draw of the rendering)."""

    lo: float  # density shown black ...
    hi: float  # ... and white
    gamma: float
    haze: float
    heel: float  # brightness slope across the image (anode heel effect)
    collimation: tuple[list[int], bool] | None  # (top, bottom, left, right) px, white fill
    blur_px: float
    noise_hi: np.ndarray  # pixel noise
    noise_lo: np.ndarray  # correlated noise


def draw_text(rng: np.random.Generator, cfg: SynthConfig) -> tuple[str, str] | None:
    """(letters, corner) of random burned-in text, independent of lesions; never in the
    marker confounder's corner."""
    if rng.random() < cfg.p_text:
        corners = [
            c for c in CORNERS if not (cfg.confounder == "marker" and c == cfg.marker_corner)
        ]
        text_corner = corners[int(rng.integers(len(corners)))]
        letters = "".join(rng.choice(list("ACDEHLPRT"), size=int(rng.integers(1, 5))))
        return letters, text_corner
    return None


def draw_acquisition(rng: np.random.Generator, cfg: SynthConfig, zmap: np.ndarray) -> Acquisition:
    """Exposure, collimation (never into the lungs of ``zmap``), blur and noise of a case."""
    s = cfg.size
    lo, hi = rng.uniform(-0.02, 0.06), rng.uniform(0.62, 0.78)
    gamma = rng.uniform(0.8, 1.25)
    haze = rng.uniform(0.0, 0.06)
    heel = rng.uniform(-0.06, 0.06)
    coll = None
    if rng.random() < cfg.p_collimation:
        lung = zmap > 0
        rr, cc = np.flatnonzero(lung.any(1)), np.flatnonzero(lung.any(0))
        lim = (rr[0], s - 1 - rr[-1], cc[0], s - 1 - cc[-1]) if rr.size else (0, 0, 0, 0)
        m = [int(rng.integers(0, max(1, min(int(0.09 * s), li - 2)))) for li in lim]
        coll = (m, rng.random() < 0.5)
    blur_px = rng.uniform(*cfg.blur_px) * s / 224
    noise_hi = rng.standard_normal((s, s)).astype(np.float32)
    noise_lo = smooth_noise(rng, (s, s), 60)
    return Acquisition(lo, hi, gamma, haze, heel, coll, blur_px, noise_hi, noise_lo)


def render(
    D: np.ndarray,
    an: Anatomy,
    cfg: SynthConfig,
    acq: Acquisition,
    lead: np.ndarray | None,
    text: tuple[str, str] | None,
    marker: bool,
) -> np.ndarray:
    """The uint8 radiograph of density ``D``, with the lead, the letters and the marker."""
    s = cfg.size
    img = np.clip((D - acq.lo) / (acq.hi - acq.lo), 0, 1) ** acq.gamma
    img = acq.haze + (1 - acq.haze) * img
    img *= 1.0 + acq.heel * (an.X / 0.5)
    if lead is not None:
        img = img + (1.0 - img) * 0.85 * lead
    if acq.collimation is not None:
        (t, b, le, ri), white = acq.collimation
        fill = 0.93 if white else 0.02
        if t:
            img[:t] = fill
        if b:
            img[s - b :] = fill
        if le:
            img[:, :le] = fill
        if ri:
            img[:, s - ri :] = fill
    img = blur(img, acq.blur_px)
    sd = cfg.noise * np.sqrt(np.clip(img, 0, 1) + 0.1)
    img = img + sd * (acq.noise_hi + 0.6 * acq.noise_lo)
    # burned-in annotations are digital: crisp, after blur and noise
    if text is not None:
        burn_text(img, text[0], text[1], max(1, s // 112), int(0.03 * s))
    if marker:
        burn_text(img, cfg.marker_text, cfg.marker_corner, max(1, s // 75), int(0.04 * s))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
