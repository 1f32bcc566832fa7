"""Synthetic chest radiographs with lung-zone lesion masks and QaTa-COV19-style notes.

Why: tests, demos and CPU smoke-training need data with the same shape and grammar as
QaTa-COV19 (which cannot be downloaded here), whose notes are *true* of their masks, and
optionally a planted confounder to check that the causal branch ignores it.

Conventions
-----------
* Anatomy is laid out for a PA view: the patient's right lung is on the IMAGE LEFT.
  ``SynthCase.zones`` are the patient's (side, zone) areas. The NOTE names the sides in
  ``SynthConfig.note_sides``: ``"image"`` by default, as QaTa-COV19's captions do (see
  ``notes.NOTE_SIDES``), so "lower right lung" is the lower zone on the image's right;
  ``"patient"`` gives radiology's convention.
* Zones are the upper / middle / lower thirds of each lung's vertical extent (apex to
  costophrenic angle), with slightly wavy borders. A named zone holds one contiguous
  lesion area; unnamed zones hold none. The count word is the number of (zone, side)
  areas, one..six.
* Notes follow the QaTa/LViT grammar, left lung listed before right lung, zones top-down:
  "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
  Lesion-free cases (only when ``p_healthy > 0``; QaTa has none) read
  "No pulmonary infection, no infected area."

Confounder (``SynthConfig.confounder``)
---------------------------------------
An artefact whose presence follows the lesion in "coupled" splits (train and val by
default) and is independent of it elsewhere (test):

* ``"marker"``: a burned-in letter block (``marker_text``) at a fixed corner. In coupled
  splits it is drawn with probability ``confounder_p`` when the case has a lesion and
  ``1 - confounder_p`` when it has none (``confounder_p = 1``: present iff lesion; only
  informative with ``p_healthy > 0``). In other splits: with ``confounder_p_test``.
* ``"lead"``: an ECG electrode with its wire. Same presence rule, and in coupled splits it
  sits on a lesion area (a location shortcut too); in other splits it sits on a random
  lung zone whatever the lesions.

Everything is vectorised numpy on an analytic anatomy (no per-pixel Python loops) and
driven by one ``np.random.Generator``: the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..notes import NOTE_SIDES, SIDES, ZONES, laterality, make_note, mirror_zones, sorted_zones

SPLITS = ("train", "val", "test")
#: zone_map codes: 1..3 left lung (image right) upper..lower, 4..6 right lung (image left).
ZONE_CODES = {(s, z): 1 + 3 * i + j for i, s in enumerate(SIDES) for j, z in enumerate(ZONES)}
#: +1: the patient's left lung lies at image x > centre; -1: the right lung at x < centre.
IMAGE_SIGN = {"left": 1.0, "right": -1.0}
LVIT_FOLDERS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; defaults mimic QaTa-COV19 (224 px, every case has a lesion)."""

    size: int = 224
    seed: int = 0
    # which zones are involved; QaTa-COV19's training captions: 81 % bilateral, a named
    # side has 1, 2 or 3 zones in 45 / 11 / 44 % of cases, lower zones the most often
    p_bilateral: float = 0.8
    p_zones_per_side: tuple[float, float, float] = (0.45, 0.11, 0.44)
    zone_weights: tuple[float, float, float] = (0.15, 0.25, 0.60)  # upper, middle, lower
    p_healthy: float = 0.0
    # lesion look
    lesion_strength: tuple[float, float] = (0.45, 0.85)  # fraction of lung air made opaque
    zone_cover: tuple[float, float] = (0.8, 1.5)  # lesion extent relative to its zone
    lesion_softness_px: tuple[float, float] = (2.5, 5.0)
    # acquisition
    pose_jitter: float = 1.0  # scales rotation / shift / zoom ranges
    zoom: float = 1.0  # mean scale of the anatomy; < 1 shows more neck, shoulders, abdomen
    noise: float = 0.018  # quantum-like noise std on the 0..1 display scale
    blur_px: tuple[float, float] = (0.4, 1.0)
    p_collimation: float = 0.35
    p_text: float = 0.35  # random burned-in letters, independent of lesions
    p_breasts: float = 0.35
    # confounder (see module docstring)
    confounder: str | None = None  # None | "marker" | "lead"
    confounder_p: float = 1.0
    confounder_p_test: float = 0.5
    coupled_splits: tuple[str, ...] = ("train", "val")
    marker_text: str = "D"
    marker_corner: str = "top-right"  # top-left | top-right | bottom-left | bottom-right
    keep_clean: bool = False  # also render the same case without lesions (for tests/figures)
    note_sides: str = NOTE_SIDES  # "image" (QaTa-COV19's captions) or "patient"

    def __post_init__(self) -> None:
        if not 0.3 <= self.zoom <= 2.0:
            raise ValueError(f"zoom must be in [0.3, 2], got {self.zoom}")
        if self.size < 32:
            raise ValueError("size must be >= 32")
        if self.note_sides not in ("image", "patient"):
            raise ValueError(f"note_sides must be 'image' or 'patient', got {self.note_sides!r}")
        if self.confounder not in (None, "marker", "lead"):
            raise ValueError(f"unknown confounder {self.confounder!r}")
        if self.marker_corner not in _CORNERS:
            raise ValueError(f"unknown marker_corner {self.marker_corner!r}")
        if not all(c in _GLYPHS for c in self.marker_text.upper()):
            raise ValueError(f"marker_text uses letters outside {''.join(sorted(_GLYPHS))}")


@dataclass
class SynthCase:
    """One radiograph, its lesion mask, its note, and the facts the note was written from."""

    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # bool (H, W), lesion
    note: str
    laterality: str  # "unilateral" | "bilateral" | "none"
    zones: list[tuple[str, str]]  # (side, zone), PATIENT sides, note order
    note_zones: list[tuple[str, str]]  # the same areas as the note names them (note_sides)
    zone_map: np.ndarray  # uint8 (H, W): 0 outside lungs, else ZONE_CODES[(side, zone)]
    confounder: bool = False  # the planted artefact is drawn
    split: str = "train"
    clean: np.ndarray | None = field(default=None, repr=False)  # lesion-free twin

    @property
    def lung(self) -> np.ndarray:
        """Both lung fields (bool)."""
        return self.zone_map > 0


# --------------------------------------------------------------------------- notes


def _draw_zones(rng: np.random.Generator, cfg: SynthConfig) -> list[tuple[str, str]]:
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


# --------------------------------------------------------------------------- helpers


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge padding); wide blurs run on a downsampled copy."""
    if sigma <= 0.05:
        return a
    a = a.astype(np.float32, copy=False)
    h, w = a.shape
    if sigma > 4.0:
        from PIL import Image

        f = int(sigma // 2)
        small = Image.fromarray(a).resize((max(1, w // f), max(1, h // f)), Image.BOX)
        small = _blur(np.asarray(small, np.float32), sigma / f)
        return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.float32)
    r = max(1, int(3.0 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(a, ((r, r), (0, 0)), mode="edge")
    out = k[0] * p[0:h]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[i : i + h]
    p = np.pad(out, ((0, 0), (r, r)), mode="edge")
    out = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[:, i : i + w]
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish std random field with features ~shape/cells (bicubic upsampling)."""
    from PIL import Image

    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g, mode="F")
    h, w = shape
    box = (1.0, 1.0, cells + 2.0, cells + 2.0)  # avoid the edge cells' padding artefacts
    return np.asarray(im.resize((w, h), Image.BICUBIC, box=box), dtype=np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _band(d: np.ndarray, half: float, edge: float) -> np.ndarray:
    """Soft 0..1 band |d| < half with an edge of width ``edge``."""
    return _smoothstep((half - np.abs(d)) / edge + 0.5)


def _segments(shape: tuple[int, int], segs: Sequence[Sequence[float]]) -> np.ndarray:
    """Sum of Gaussian line profiles; segs rows are (col0, row0, col1, row1, width, weight)
    in pixels. Each segment is drawn only inside its own bounding box (fast for thin lines)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for c0, r0, c1, r1, wd, a in segs:
        m = 3.0 * wd + 1.0
        i0, i1 = max(0, int(min(r0, r1) - m)), min(h, int(max(r0, r1) + m) + 1)
        j0, j1 = max(0, int(min(c0, c1) - m)), min(w, int(max(c0, c1) + m) + 1)
        if i0 >= i1 or j0 >= j1:
            continue
        yy = np.arange(i0, i1, dtype=np.float32)[:, None] - r0
        xx = np.arange(j0, j1, dtype=np.float32)[None, :] - c0
        dx, dy = c1 - c0, r1 - r0
        t = np.clip((xx * dx + yy * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
        d2 = (xx - t * dx) ** 2 + (yy - t * dy) ** 2
        out[i0:i1, j0:j1] += a * np.exp(-d2 / (wd * wd))
    return out


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels via row runs + union-find (a loop over rows, not pixels)."""
    labels = np.zeros(mask.shape, np.int32)
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return labels, 0
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs = []  # (row, start, stop, id)
    prev: list[tuple[int, int, int]] = []
    prev_row = -2
    for r in rows:
        d = np.diff(np.concatenate(([0], mask[r].view(np.int8), [0])))
        starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        cur = []
        for a, b in zip(starts.tolist(), stops.tolist()):
            rid = len(parent)
            parent.append(rid)
            if r == prev_row + 1:
                for pa, pb, pid in prev:
                    if pa < b and a < pb:
                        ra, rb = find(pid), find(rid)
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
            cur.append((a, b, rid))
            runs.append((r, a, b, rid))
        prev, prev_row = cur, r
    roots: dict[int, int] = {}
    for r, a, b, rid in runs:
        lab = roots.setdefault(find(rid), len(roots) + 1)
        labels[r, a:b] = lab
    return labels, len(roots)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = _components(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


# 5x7 bitmap glyphs for burned-in letters (no font files: same pixels everywhere).
_GLYPHS = {
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
_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _text_bitmap(text: str, scale: int) -> np.ndarray:
    cols = []
    for c in text.upper():
        g = np.array([[ch == "1" for ch in row] for row in _GLYPHS[c]], bool)
        cols += [g, np.zeros((7, 1), bool)]
    bm = np.concatenate(cols[:-1], axis=1)
    return np.kron(bm, np.ones((scale, scale), bool))


def _burn_text(img: np.ndarray, text: str, corner: str, scale: int, margin: int) -> None:
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


# --------------------------------------------------------------------------- anatomy


@dataclass
class _Pose:
    """Random similarity between anatomical coordinates and pixels (patient positioning)."""

    s: int
    ca: float
    sa: float
    zoom: float
    tx: float
    ty: float

    @classmethod
    def draw(cls, rng: np.random.Generator, s: int, jitter: float, mean_zoom: float = 1.0) -> _Pose:
        ang = math.radians(rng.uniform(-4.0, 4.0) * jitter)
        zoom = mean_zoom * (1.0 + rng.uniform(-0.07, 0.07) * jitter)
        tx, ty = rng.uniform(-0.03, 0.03, 2) * jitter
        return cls(s, math.cos(ang), math.sin(ang), zoom, float(tx), float(ty))

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (X, Y) of every pixel: X in ~[-0.5, 0.5] (image left < 0), Y down."""
        c = (np.arange(self.s, dtype=np.float32) + 0.5) / self.s
        xn, yn = np.meshgrid(c - 0.5 - self.tx, c - 0.5 - self.ty)
        X = (self.ca * xn + self.sa * yn) / self.zoom
        Y = (-self.sa * xn + self.ca * yn) / self.zoom + 0.5
        return X.astype(np.float32), Y.astype(np.float32)

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """(col, row) of an anatomical point."""
        xn = self.zoom * (self.ca * x - self.sa * (y - 0.5))
        yn = self.zoom * (self.sa * x + self.ca * (y - 0.5))
        return (xn + 0.5 + self.tx) * self.s - 0.5, (yn + 0.5 + self.ty) * self.s - 0.5

    def seg(self, x0: float, y0: float, x1: float, y1: float, w: float, a: float) -> tuple:
        """An anatomical segment as a pixel-space row for :func:`_segments`."""
        c0, r0 = self.to_px(x0, y0)
        c1, r1 = self.to_px(x1, y1)
        return (c0, r0, c1, r1, max(0.5, w * self.zoom * self.s), a)


@dataclass
class _Anatomy:
    pose: _Pose
    X: np.ndarray  # anatomical coordinates of each pixel (fractions of the image side)
    Y: np.ndarray
    lungs: dict[str, np.ndarray]  # side -> bool mask
    density: np.ndarray  # float32 attenuation-like map (brighter = denser)
    air: np.ndarray  # float32 lung air thickness (what a lesion can fill)


def _diaphragm(u: np.ndarray, dome: tuple[float, float, float, float]) -> np.ndarray:
    """Height of a hemidiaphragm: flat medially, falling to the costophrenic angle."""
    y_dome, y_cp, u_peak, u_lat = dome
    k = (y_cp - y_dome) / (u_lat - u_peak) ** 2
    return y_dome + k * np.clip(u - u_peak, 0, None) ** 2


def _anatomy(rng: np.random.Generator, cfg: SynthConfig) -> _Anatomy:
    """Analytic PA chest: soft tissue, lungs, heart, spine, ribs, clavicles, diaphragm."""
    s = cfg.size
    pose = _Pose.draw(rng, s, cfg.pose_jitter, cfg.zoom)
    X, Y = pose.grid()
    px = 1.0 / s  # one pixel in anatomical units
    U = rng.uniform

    # --- diaphragm (the right dome, image left, sits a little higher) and heart on top
    y_dome_r = U(0.66, 0.72)
    domes: dict[str, tuple[float, float, float, float]] = {}
    for side in SIDES:
        y_dome = y_dome_r + (U(0.01, 0.035) if side == "left" else 0.0)
        domes[side] = (y_dome, y_dome + U(0.10, 0.14), U(0.12, 0.17), U(0.37, 0.42))
    # mediastinal contour per side: a straight upper mediastinum widening into the heart,
    # which bulges more to the patient's left (image right); aortic knob on the left
    med_w = U(0.045, 0.06)
    contour: dict[str, np.ndarray] = {}
    for side in SIDES:
        left = side == "left"
        h_w = U(0.17, 0.22) if left else U(0.09, 0.125)
        y_top = U(0.36, 0.42) if left else U(0.40, 0.46)
        y_c = domes[side][0] - (U(0.04, 0.08) if left else U(0.08, 0.12))
        g = np.sqrt(np.clip(1.0 - ((y_c - np.minimum(Y, y_c)) / (y_c - y_top)) ** 2, 0, 1))
        c = med_w + (h_w - med_w) * g
        if left:
            c = c + U(0.02, 0.03) * np.exp(-(((Y - U(0.27, 0.31)) / 0.035) ** 2))
        contour[side] = c
    c_img = np.where(X > 0, contour["left"], contour["right"])
    mediastinum = _smoothstep((c_img - np.abs(X)) / 0.015 + 0.5)

    # --- lung fields: rounded apex, convex lateral wall, mediastinal and cardiac borders
    lungs: dict[str, np.ndarray] = {}
    for side in SIDES:
        u = IMAGE_SIGN[side] * X  # lateral distance on this side
        apex_y, apex_u = U(0.09, 0.13), U(0.15, 0.19)
        y_dome, y_cp, _, u_lat = domes[side]
        t = (Y - apex_y) / (y_cp - apex_y)
        g_lat = np.sqrt(np.clip(1.0 - (1.0 - np.clip(t / 0.55, 0, 1)) ** 2, 0, 1))
        g_med = np.sqrt(np.clip(1.0 - (1.0 - np.clip(t / 0.25, 0, 1)) ** 2, 0, 1))
        lat_edge = apex_u + (u_lat - apex_u) * g_lat * (1.0 + 0.04 * np.clip(t - 0.55, 0, 1))
        med_edge = apex_u - (apex_u - contour[side]) * g_med
        lung = (u > med_edge) & (u < lat_edge) & (_diaphragm(u, domes[side]) > Y) & (t > 0)
        lungs[side] = _largest_component(lung)
    lung_f = (lungs["left"] | lungs["right"]).astype(np.float32)

    # --- body soft tissue: thick in the middle, thin at the flanks, neck and shoulders
    body_w = U(0.47, 0.56)
    neck_w = U(0.09, 0.12)
    y_sh = U(0.05, 0.12)
    half_w = neck_w + (body_w - neck_w) * _smoothstep((Y - (y_sh - 0.12)) / 0.14)
    body = np.sqrt(np.clip(1.0 - (X / half_w) ** 2, 0, 1))
    D = 0.42 * body + 0.08 * _smoothstep((half_w - np.abs(X)) / 0.015)

    # --- lung air: a smooth thickness, thinner at the bases (diaphragm / breast overlap)
    air = _blur(lung_f, 1.2 * s / 224) * (0.55 + 0.45 * _blur(lung_f, 9.0 * s / 224))
    air *= 1.0 - 0.28 * _smoothstep((Y - 0.45) / 0.35)
    air *= 1.0 - 0.15 * _smoothstep((0.22 - Y) / 0.12)
    D -= U(0.36, 0.42) * air

    # --- lung markings: vessels fanning out of each hilum, tapering and branching
    segs = []
    hila = []
    for side in SIDES:
        sg = IMAGE_SIGN[side]
        x0, y0 = sg * U(0.075, 0.10), U(0.40, 0.46)
        hila.append((x0, y0))
        n_trunks = 12
        for ang0 in np.linspace(-120, 115, n_trunks) + U(-8, 8, n_trunks):
            a = math.radians(float(ang0))
            x, y, w = x0, y0, U(0.004, 0.0055)
            ln = U(0.045, 0.075)
            for step in range(4):
                a += math.radians(U(-15, 15))
                nx, ny = x + sg * math.cos(a) * ln, y + math.sin(a) * ln
                segs.append(pose.seg(x, y, nx, ny, w, 1.0))
                if step in (1, 2):
                    b = a + math.radians(U(25, 50) * (1 if rng.random() < 0.5 else -1))
                    bl = ln * U(0.7, 1.2)
                    bx, by = nx + sg * math.cos(b) * bl, ny + math.sin(b) * bl
                    segs.append(pose.seg(nx, ny, bx, by, w * 0.65, 0.7))
                x, y, w, ln = nx, ny, w * 0.75, ln * 0.9
    vessels = np.clip(_segments((s, s), segs), 0, 1.3)
    hil = sum(np.exp(-((X - hx_) ** 2 + (Y - hy_) ** 2) / 0.04**2) for hx_, hy_ in hila)
    D += U(0.045, 0.065) * vessels * (0.2 + 0.8 * lung_f) + 0.06 * hil
    D += 0.02 * _smooth_noise(rng, (s, s), 30) * lung_f  # interstitial texture

    # --- heart, aortic knob, mediastinal soft tissue, spine, trachea
    below = np.zeros_like(D)  # abdomen under the domes, merging with the heart shadow
    for side in SIDES:
        y_d = _diaphragm(IMAGE_SIGN[side] * X, domes[side])
        below = np.maximum(below, _smoothstep((Y - y_d) / 0.03) * (IMAGE_SIGN[side] * X > 0))
    heart = np.maximum(mediastinum * _smoothstep((Y - 0.36) / 0.12), below)
    D += 0.04 * mediastinum + 0.05 * heart
    spine_w = U(0.032, 0.04)
    vert = 0.7 + 0.3 * np.cos(2 * np.pi * (Y - U(0, 0.06)) / U(0.05, 0.06)) ** 2
    D += 0.045 * _band(X, spine_w, 0.012) * vert * (1.0 - 0.5 * heart)
    D += 0.02 * _band(np.abs(X) - spine_w, 0.006, 0.006)  # vertebral cortex lines
    carina_y, tr_x = U(0.28, 0.32), U(-0.01, 0.01)
    tr_w = U(0.012, 0.016)
    trachea = _band(X - tr_x, tr_w, 0.01) * _smoothstep((carina_y - Y) / 0.02)
    bronchi = _segments(
        (s, s),
        [
            pose.seg(tr_x, carina_y, tr_x - 0.07, carina_y + 0.06, tr_w * 0.8, 1.0),
            pose.seg(tr_x, carina_y, tr_x + 0.08, carina_y + 0.08, tr_w * 0.7, 1.0),
        ],
    )
    D -= 0.09 * np.clip(trachea + 0.7 * bronchi, 0, 1)

    # --- abdomen below the domes; gastric bubble under the left dome
    for side in SIDES:
        y_dome, _, u_peak, u_lat = domes[side]
        u = IMAGE_SIGN[side] * X
        y_d = _diaphragm(u, domes[side])
        if side == "left" and rng.random() < 0.6:
            bx, by = 0.5 * (u_peak + u_lat) * U(0.8, 1.1), y_dome + U(0.04, 0.07)
            bub = ((X - bx) / U(0.04, 0.06)) ** 2 + ((Y - by) / U(0.025, 0.035)) ** 2
            D -= 0.10 * _smoothstep((1.0 - bub) / 0.3) * (y_d < Y)

    # --- bones. Ribs are a periodic "rib coordinate" (one pass for all ribs of a side)
    bone = np.zeros_like(D)
    for side in SIDES:
        u = IMAGE_SIGN[side] * X
        wob = 0.12 * _smooth_noise(rng, (s, s), 4)
        # posterior ribs: rise a little from the spine, then curve down laterally
        sp = U(0.066, 0.074)
        v = (Y - U(0.05, 0.075) + U(0.5, 0.65) * u - (1.5 + 0.9 * Y) * u * u) / sp + wob
        f = v - np.floor(v) - 0.5
        hw = U(0.2, 0.25) * (1.0 + 0.2 * np.clip(u / 0.4, 0, 1))
        rib = _smoothstep((hw - np.abs(f)) * sp / (1.5 * px) + 0.5)
        rib *= 0.65 + 0.35 * (np.abs(f) / hw) ** 2  # brighter cortex
        rib *= (v > -0.5) & (v < 10.5)
        rib *= _smoothstep((u - 0.03) / 0.02) * _smoothstep((0.46 - u) / 0.04)
        # anterior ribs: fainter, run down and in, end at the costal cartilage
        spa = U(0.08, 0.09)
        va = (Y - U(0.11, 0.14) - 0.30 * (0.42 - u) + 0.2 * (0.42 - u) ** 2) / spa + wob
        fa = va - np.floor(va) - 0.5
        hwa = 0.012 / spa
        rib_a = _smoothstep((hwa - np.abs(fa)) * spa / (1.5 * px) + 0.5) * ((va > -0.5) & (va < 6))
        rib_a = rib_a * _smoothstep((u - 0.13) / 0.05) * _smoothstep((0.43 - u) / 0.03)
        bone += rib + 0.5 * rib_a
        # clavicle: from the sternal notch up and out to the shoulder
        ycl = U(0.14, 0.18) - 0.30 * u + 0.25 * u * u + 0.012 * np.sin(u / 0.3 * np.pi)
        clav = _smoothstep((0.017 - np.abs(Y - ycl) / 1.05) / (1.5 * px) + 0.5)
        clav *= _smoothstep((u - 0.025) / 0.02) * _smoothstep((0.40 - u) / 0.03)
        bone += 1.3 * clav
        # humeral head at the top corner
        hr = ((u - U(0.49, 0.53)) ** 2 + (Y - U(0.07, 0.12)) ** 2) / U(0.07, 0.09) ** 2
        bone += 1.2 * _smoothstep((1.0 - hr) / 0.15)
    bone *= body > 0
    D += U(0.055, 0.08) * np.clip(bone, 0, 1.6) * (0.5 + 0.5 * lung_f)

    # --- breast shadows over the lower zones
    if rng.random() < cfg.p_breasts:
        for side in SIDES:
            u = IMAGE_SIGN[side] * X
            bx, by = U(0.27, 0.33), U(0.68, 0.76)
            e = ((u - bx) / U(0.15, 0.2)) ** 2 + ((Y - by) / U(0.10, 0.13)) ** 2
            D += 0.045 * _smoothstep((1.0 - e) / 0.3) * _smoothstep((Y - by + 0.12) / 0.1)

    return _Anatomy(pose=pose, X=X, Y=Y, lungs=lungs, density=D.astype(np.float32), air=air)


# --------------------------------------------------------------------------- lesions


def _zone_map(rng: np.random.Generator, lungs: dict[str, np.ndarray], s: int) -> np.ndarray:
    """Split each lung into vertical thirds (wavy borders) -> uint8 ZONE_CODES map."""
    zmap = np.zeros((s, s), np.uint8)
    rows = np.arange(s, dtype=np.float32)[:, None]
    cols = np.arange(s, dtype=np.float32)[None, :]
    for side in SIDES:
        lung = lungs[side]
        r = np.flatnonzero(lung.any(1))
        if r.size == 0:
            continue
        top, bot = float(r[0]), float(r[-1] + 1)
        h = bot - top
        borders = []
        for frac in (1 / 3, 2 / 3):
            amp = rng.uniform(0.01, 0.025) * h
            wave = amp * np.sin(
                2 * np.pi * cols / (s * rng.uniform(0.25, 0.5)) + rng.uniform(0, 6.3)
            )
            borders.append(top + frac * h + wave)
        zi = (rows >= borders[0]).astype(np.uint8) + (rows >= borders[1])
        zmap[lung] = (1 + 3 * SIDES.index(side) + zi)[lung]
    # a wavy border can cut off a stray pixel or two: give them to the zone they touch
    for _ in range(8):
        changed = False
        for code in range(1, 7):
            zone = zmap == code
            stray = zone & ~_largest_component(zone)
            if not stray.any():
                continue
            p = np.pad(zmap, 1)
            nb = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
            nb[(nb == code) | (nb == 0)] = 255
            new = nb.min(0)
            fix = stray & (new < 255)
            zmap[fix] = new[fix]
            changed = True
        if not changed:
            break
    return zmap


def _lesion_mask(
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
    return _largest_component(lesion)


# --------------------------------------------------------------------------- artefacts


def _lead(rng: np.random.Generator, an: _Anatomy, at: tuple[float, float]) -> np.ndarray:
    """ECG electrode (ring + snap) with a wire running off toward an image edge (0..1)."""
    X, Y, pose = an.X, an.Y, an.pose
    px = 1.0 / X.shape[0]
    cx, cy = at
    r = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
    rad = rng.uniform(0.022, 0.03)
    disc = 0.45 * _smoothstep((rad - r) / (1.5 * px))
    ring = _band(r - rad, 0.004, 1.5 * px)
    snap = _smoothstep((0.008 - r) / (1.5 * px))
    ex = 0.55 * (1.0 if cx > 0 else -1.0) * rng.uniform(0.6, 1.0)
    ey = rng.uniform(-0.1, 1.1)
    mx, my = (cx + ex) / 2 + rng.uniform(-0.15, 0.15), (cy + ey) / 2 + rng.uniform(-0.15, 0.15)
    t = np.linspace(0, 1, 13)
    bx = (1 - t) ** 2 * cx + 2 * (1 - t) * t * mx + t**2 * ex
    by = (1 - t) ** 2 * cy + 2 * (1 - t) * t * my + t**2 * ey
    segs = [pose.seg(bx[i], by[i], bx[i + 1], by[i + 1], 1.6 * px, 1.0) for i in range(12)]
    wire = np.clip(_segments(X.shape, segs), 0, 1) * (r > rad)
    return np.clip(np.maximum(disc, ring) + snap + 0.8 * wire, 0, 1)


def _confounder_on(rng: np.random.Generator, cfg: SynthConfig, split: str, lesion: bool) -> bool:
    u = rng.random()  # always drawn: the rest of the case does not depend on the setting
    if cfg.confounder is None:
        return False
    if split in cfg.coupled_splits:
        return u < (cfg.confounder_p if lesion else 1.0 - cfg.confounder_p)
    return u < cfg.confounder_p_test


# --------------------------------------------------------------------------- the case


def synth_case(
    rng: np.random.Generator, cfg: SynthConfig | None = None, split: str = "train"
) -> SynthCase:
    """Draw one radiograph + lesion mask + true note (split only matters for the confounder)."""
    cfg = cfg or SynthConfig()
    s = cfg.size
    zones = _draw_zones(rng, cfg)
    an = _anatomy(rng, cfg)
    zmap = _zone_map(rng, an.lungs, s)

    mask = np.zeros((s, s), bool)
    for side, zone in zones:
        mask |= _lesion_mask(rng, zmap == ZONE_CODES[(side, zone)], side, cfg)

    # lesion opacity: fills part of the lung air, soft-edged, mottled, lung-bounded
    soft = _blur(mask.astype(np.float32), rng.uniform(*cfg.lesion_softness_px) * s / 224)
    mottle = np.clip(0.8 + 0.2 * _smooth_noise(rng, (s, s), 10), 0.4, 1.2)
    mottle += 0.06 * _smooth_noise(rng, (s, s), 40)
    strength = rng.uniform(*cfg.lesion_strength)
    lesion_density = strength * 0.45 * an.air * np.clip(soft * 1.15, 0, 1) * mottle

    # confounder and nuisance artefacts (drawn identically in the clean twin). The lead
    # has its own stream, so switching the confounder on changes nothing else in the case.
    has_conf = _confounder_on(rng, cfg, split, bool(zones))
    art_rng = np.random.default_rng(rng.integers(2**63))
    lead = None
    if has_conf and cfg.confounder == "lead":
        if split in cfg.coupled_splits and zones:
            code = ZONE_CODES[zones[int(art_rng.integers(len(zones)))]]
            where = mask & (zmap == code)
        else:
            where = zmap == 1 + int(art_rng.integers(6))
        ys, xs = np.nonzero(where)
        j = int(art_rng.integers(ys.size))
        lead = _lead(art_rng, an, (float(an.X[ys[j], xs[j]]), float(an.Y[ys[j], xs[j]])))
    text_corner = None
    if rng.random() < cfg.p_text:
        corners = [
            c for c in _CORNERS if not (cfg.confounder == "marker" and c == cfg.marker_corner)
        ]
        text_corner = corners[int(rng.integers(len(corners)))]
        letters = "".join(rng.choice(list("ACDEHLPRT"), size=int(rng.integers(1, 5))))

    # acquisition: exposure window, gamma, heel effect, collimation, blur, noise
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
    blur = rng.uniform(*cfg.blur_px) * s / 224
    noise_hi = rng.standard_normal((s, s)).astype(np.float32)
    noise_lo = _smooth_noise(rng, (s, s), 60)

    def render(D: np.ndarray) -> np.ndarray:
        img = np.clip((D - lo) / (hi - lo), 0, 1) ** gamma
        img = haze + (1 - haze) * img
        img *= 1.0 + heel * (an.X / 0.5)
        if lead is not None:
            img = img + (1.0 - img) * 0.85 * lead
        if coll is not None:
            (t, b, le, ri), white = coll
            fill = 0.93 if white else 0.02
            if t:
                img[:t] = fill
            if b:
                img[s - b :] = fill
            if le:
                img[:, :le] = fill
            if ri:
                img[:, s - ri :] = fill
        img = _blur(img, blur)
        sd = cfg.noise * np.sqrt(np.clip(img, 0, 1) + 0.1)
        img = img + sd * (noise_hi + 0.6 * noise_lo)
        # burned-in annotations are digital: crisp, after blur and noise
        if text_corner is not None:
            _burn_text(img, letters, text_corner, max(1, s // 112), int(0.03 * s))
        if has_conf and cfg.confounder == "marker":
            _burn_text(img, cfg.marker_text, cfg.marker_corner, max(1, s // 75), int(0.04 * s))
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    image = render(an.density + lesion_density)
    note_zones = mirror_zones(zones) if cfg.note_sides == "image" else zones
    clean = render(an.density) if cfg.keep_clean else None
    return SynthCase(
        image=image,
        mask=mask,
        note=make_note(note_zones),
        laterality=laterality(zones),
        zones=zones,
        note_zones=note_zones,
        zone_map=zmap,
        confounder=has_conf,
        split=split,
        clean=clean,
    )


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index): a case never depends on how many precede it."""
    return np.random.default_rng([int(seed), _SPLIT_CODE.get(split, 3), int(index)])


def generate(
    n: int, seed: int | None = None, cfg: SynthConfig | None = None, split: str = "train"
) -> list[SynthCase]:
    """``n`` cases in memory (seed defaults to ``cfg.seed``)."""
    cfg = cfg or SynthConfig()
    seed = cfg.seed if seed is None else seed
    return [synth_case(case_rng(seed, split, i), cfg, split) for i in range(n)]


# --------------------------------------------------------------------------- LViT writer


def _png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _xlsx_bytes(rows: Sequence[tuple[str, str]]) -> bytes:
    """Workbook with columns Image | Description, normalised so equal rows give equal bytes."""
    import datetime as dt

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["Image", "Description"])
    for r in rows:
        ws.append(list(r))
    fixed = dt.datetime(2000, 1, 1)
    wb.properties.created = fixed
    wb.properties.modified = fixed
    wb.properties.creator = "napari-causalseg synth"
    buf = io.BytesIO()
    wb.save(buf)
    # zip members carry wall-clock timestamps: rewrite them with a fixed one
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(2000, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps "modified" at save
                data = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                    rb"\g<1>2000-01-01T00:00:00Z\g<2>",
                    data,
                )
            zout.writestr(zi, data)
    return out.getvalue()


def write_lvit_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 32,
    seed: int | None = None,
    cfg: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a QaTa-like dataset in LViT's layout; returns ``out_dir``.

    ``{Train,Val,Test}_Folder/img/synth_000123.png`` (8-bit grey),
    ``.../labelcol/mask_synth_000123.png`` ({0,255}); ``Train_Folder/Train_Val_text.xlsx``
    (train + val rows) and ``Test_Folder/Test_text.xlsx``, columns ``Image`` (the MASK
    file name) and ``Description``: where LViT's Covid19 code reads them. Names are
    unique across splits (one workbook covers train and val). Each file is written to a
    temporary name and renamed, so an interrupted run leaves no half-written file.
    """
    cfg = cfg or SynthConfig()
    seed = cfg.seed if seed is None else seed
    root = Path(out_dir)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    total = sum(counts.values())
    rows: dict[str, list[tuple[str, str]]] = {k: [] for k in SPLITS}
    done = 0
    for split in SPLITS:
        folder = root / LVIT_FOLDERS[split]
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "labelcol").mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            case = synth_case(case_rng(seed, split, i), cfg, split)
            name = f"synth_{done:06d}.png"
            atomic_write_bytes(folder / "img" / name, _png_bytes(case.image))
            mask = np.where(case.mask, 255, 0).astype(np.uint8)
            atomic_write_bytes(folder / "labelcol" / f"mask_{name}", _png_bytes(mask))
            rows[split].append((f"mask_{name}", case.note))
            done += 1
            if progress is not None:
                progress(done, total)
    atomic_write_bytes(
        root / LVIT_FOLDERS["train"] / "Train_Val_text.xlsx",
        _xlsx_bytes(rows["train"] + rows["val"]),
    )
    atomic_write_bytes(root / LVIT_FOLDERS["test"] / "Test_text.xlsx", _xlsx_bytes(rows["test"]))
    return root
