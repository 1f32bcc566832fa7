"""Burned-in letters from 5x7 bitmap glyphs: no font files, so the same pixels everywhere."""

from __future__ import annotations

import numpy as np

# 5x7 bitmap glyphs for burned-in letters (no font files: same pixels everywhere).
GLYPHS = {
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "C": ["01111", "10000", "10000", "10000", "10000", "10000", "01111"],
    "D": ["11110", "10001", "10001", "10001", "10001", "10001", "11110"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "H": ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "T": ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
}
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _text_bitmap(text: str, scale: int) -> np.ndarray:
    cols = []
    for c in text.upper():
        g = np.array([[ch == "1" for ch in row] for row in GLYPHS[c]], bool)
        cols += [g, np.zeros((7, 1), bool)]
    bm = np.concatenate(cols[:-1], axis=1)
    return np.kron(bm, np.ones((scale, scale), bool))


def burn_text(img: np.ndarray, text: str, corner: str, scale: int, margin: int) -> None:
    """Burn white letters on a dark box into ``img`` (0..1 floats) at a corner, in place."""
    bm = _text_bitmap(text, scale)
    pad = max(1, scale // 2)
    h, w = bm.shape[0] + 2 * pad, bm.shape[1] + 2 * pad
    H, W = img.shape
    r0 = margin if corner.startswith("top") else H - margin - h
    c0 = margin if corner.endswith("left") else W - margin - w
    box = img[r0 : r0 + h, c0 : c0 + w]
    box *= 0.15
    box[pad : pad + bm.shape[0], pad : pad + bm.shape[1]][bm] = 1.0
