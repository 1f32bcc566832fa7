"""Analytic PA chest anatomy: patient pose, lungs, mediastinum, heart, spine, ribs,
clavicles, diaphragm and soft tissue as one density map, and the lung zone map.

Every part draws from the case's one ``np.random.Generator`` in a fixed order (the order
of the calls in :func:`draw_anatomy`): reordering them changes every generated case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...notes import SIDES
from .config import IMAGE_SIGN, SynthConfig
from .raster import band, blur, largest_component, segments, smooth_noise, smoothstep

#: (dome height, costophrenic angle height, dome peak and lateral extent) of one hemidiaphragm
Dome = tuple[float, float, float, float]


@dataclass
class Pose:
    """Random similarity between anatomical coordinates and pixels (patient positioning)."""

    s: int
    ca: float
    sa: float
    zoom: float
    tx: float
    ty: float

    @classmethod
    def draw(cls, rng: np.random.Generator, s: int, jitter: float, mean_zoom: float = 1.0) -> Pose:
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
        """An anatomical segment as a pixel-space row for :func:`segments`."""
        c0, r0 = self.to_px(x0, y0)
        c1, r1 = self.to_px(x1, y1)
        return (c0, r0, c1, r1, max(0.5, w * self.zoom * self.s), a)


@dataclass
class Anatomy:
    """The drawn chest: pixel coordinates, lung masks, density and the air a lesion can fill."""

    pose: Pose
    X: np.ndarray  # anatomical coordinates of each pixel (fractions of the image side)
    Y: np.ndarray
    lungs: dict[str, np.ndarray]  # side -> bool mask
    density: np.ndarray  # float32 attenuation-like map (brighter = denser)
    air: np.ndarray  # float32 lung air thickness (what a lesion can fill)


def _diaphragm(u: np.ndarray, dome: Dome) -> np.ndarray:
    """Height of a hemidiaphragm: flat medially, falling to the costophrenic angle."""
    y_dome, y_cp, u_peak, u_lat = dome
    k = (y_cp - y_dome) / (u_lat - u_peak) ** 2
    return y_dome + k * np.clip(u - u_peak, 0, None) ** 2


def draw_anatomy(rng: np.random.Generator, cfg: SynthConfig) -> Anatomy:
    """Analytic PA chest: soft tissue, lungs, heart, spine, ribs, clavicles, diaphragm."""
    s = cfg.size
    pose = Pose.draw(rng, s, cfg.pose_jitter, cfg.zoom)
    X, Y = pose.grid()
    domes = _domes(rng)
    contour = _mediastinal_contours(rng, Y, domes)
    c_img = np.where(X > 0, contour["left"], contour["right"])
    mediastinum = smoothstep((c_img - np.abs(X)) / 0.015 + 0.5)
    lungs = _lung_fields(rng, X, Y, domes, contour)
    lung_f = (lungs["left"] | lungs["right"]).astype(np.float32)
    body, D = _soft_tissue(rng, X, Y)
    # lung air: a smooth thickness, thinner at the bases (diaphragm / breast overlap)
    air = blur(lung_f, 1.2 * s / 224) * (0.55 + 0.45 * blur(lung_f, 9.0 * s / 224))
    air *= 1.0 - 0.28 * smoothstep((Y - 0.45) / 0.35)
    air *= 1.0 - 0.15 * smoothstep((0.22 - Y) / 0.12)
    D -= rng.uniform(0.36, 0.42) * air
    _add_lung_markings(D, rng, pose, X, Y, lung_f)
    _add_mediastinum(D, rng, pose, X, Y, domes, mediastinum)
    _add_gastric_bubble(D, rng, X, Y, domes)
    _add_bones(D, rng, X, Y, body, lung_f)
    if rng.random() < cfg.p_breasts:
        _add_breasts(D, rng, X, Y)
    return Anatomy(pose=pose, X=X, Y=Y, lungs=lungs, density=D.astype(np.float32), air=air)


def _domes(rng: np.random.Generator) -> dict[str, Dome]:
    """Hemidiaphragms; the right dome (image left) sits a little higher."""
    U = rng.uniform
    y_dome_r = U(0.66, 0.72)
    domes: dict[str, Dome] = {}
    for side in SIDES:
        y_dome = y_dome_r + (U(0.01, 0.035) if side == "left" else 0.0)
        domes[side] = (y_dome, y_dome + U(0.10, 0.14), U(0.12, 0.17), U(0.37, 0.42))
    return domes


def _mediastinal_contours(
    rng: np.random.Generator, Y: np.ndarray, domes: dict[str, Dome]
) -> dict[str, np.ndarray]:
    """Half-width of the mediastinum per side and row: a straight upper mediastinum widening
    into the heart, which bulges more to the patient's left (image right); aortic knob on
    the left."""
    U = rng.uniform
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
    return contour


def _lung_fields(
    rng: np.random.Generator,
    X: np.ndarray,
    Y: np.ndarray,
    domes: dict[str, Dome],
    contour: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Lung masks: rounded apex, convex lateral wall, mediastinal and cardiac borders."""
    U = rng.uniform
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
        lungs[side] = largest_component(lung)
    return lungs


def _soft_tissue(
    rng: np.random.Generator, X: np.ndarray, Y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(body profile, starting density): thick in the middle, thin at the flanks, neck and
    shoulders."""
    U = rng.uniform
    body_w = U(0.47, 0.56)
    neck_w = U(0.09, 0.12)
    y_sh = U(0.05, 0.12)
    half_w = neck_w + (body_w - neck_w) * smoothstep((Y - (y_sh - 0.12)) / 0.14)
    body = np.sqrt(np.clip(1.0 - (X / half_w) ** 2, 0, 1))
    D = 0.42 * body + 0.08 * smoothstep((half_w - np.abs(X)) / 0.015)
    return body, D


def _add_lung_markings(
    D: np.ndarray,
    rng: np.random.Generator,
    pose: Pose,
    X: np.ndarray,
    Y: np.ndarray,
    lung_f: np.ndarray,
) -> None:
    """Vessels fanning out of each hilum, tapering and branching, plus interstitial texture
    (added to ``D`` in place)."""
    U = rng.uniform
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
    vessels = np.clip(segments(X.shape, segs), 0, 1.3)
    hil = sum(np.exp(-((X - hx_) ** 2 + (Y - hy_) ** 2) / 0.04**2) for hx_, hy_ in hila)
    D += U(0.045, 0.065) * vessels * (0.2 + 0.8 * lung_f) + 0.06 * hil
    D += 0.02 * smooth_noise(rng, X.shape, 30) * lung_f  # interstitial texture


def _add_mediastinum(
    D: np.ndarray,
    rng: np.random.Generator,
    pose: Pose,
    X: np.ndarray,
    Y: np.ndarray,
    domes: dict[str, Dome],
    mediastinum: np.ndarray,
) -> None:
    """Heart, aortic knob, mediastinal soft tissue, spine and trachea (in place)."""
    U = rng.uniform
    below = np.zeros_like(D)  # abdomen under the domes, merging with the heart shadow
    for side in SIDES:
        y_d = _diaphragm(IMAGE_SIGN[side] * X, domes[side])
        below = np.maximum(below, smoothstep((Y - y_d) / 0.03) * (IMAGE_SIGN[side] * X > 0))
    heart = np.maximum(mediastinum * smoothstep((Y - 0.36) / 0.12), below)
    D += 0.04 * mediastinum + 0.05 * heart
    spine_w = U(0.032, 0.04)
    vert = 0.7 + 0.3 * np.cos(2 * np.pi * (Y - U(0, 0.06)) / U(0.05, 0.06)) ** 2
    D += 0.045 * band(X, spine_w, 0.012) * vert * (1.0 - 0.5 * heart)
    D += 0.02 * band(np.abs(X) - spine_w, 0.006, 0.006)  # vertebral cortex lines
    carina_y, tr_x = U(0.28, 0.32), U(-0.01, 0.01)
    tr_w = U(0.012, 0.016)
    trachea = band(X - tr_x, tr_w, 0.01) * smoothstep((carina_y - Y) / 0.02)
    bronchi = segments(
        X.shape,
        [
            pose.seg(tr_x, carina_y, tr_x - 0.07, carina_y + 0.06, tr_w * 0.8, 1.0),
            pose.seg(tr_x, carina_y, tr_x + 0.08, carina_y + 0.08, tr_w * 0.7, 1.0),
        ],
    )
    D -= 0.09 * np.clip(trachea + 0.7 * bronchi, 0, 1)


def _add_gastric_bubble(
    D: np.ndarray, rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, domes: dict[str, Dome]
) -> None:
    """Gas in the stomach under the left dome, in most cases (in place)."""
    U = rng.uniform
    for side in SIDES:
        y_dome, _, u_peak, u_lat = domes[side]
        u = IMAGE_SIGN[side] * X
        y_d = _diaphragm(u, domes[side])
        if side == "left" and rng.random() < 0.6:
            bx, by = 0.5 * (u_peak + u_lat) * U(0.8, 1.1), y_dome + U(0.04, 0.07)
            bub = ((X - bx) / U(0.04, 0.06)) ** 2 + ((Y - by) / U(0.025, 0.035)) ** 2
            D -= 0.10 * smoothstep((1.0 - bub) / 0.3) * (y_d < Y)


def _add_bones(
    D: np.ndarray,
    rng: np.random.Generator,
    X: np.ndarray,
    Y: np.ndarray,
    body: np.ndarray,
    lung_f: np.ndarray,
) -> None:
    """Ribs, clavicles and humeral heads (in place). Ribs are a periodic "rib coordinate":
    one pass draws all ribs of a side."""
    U = rng.uniform
    px = 1.0 / X.shape[0]  # one pixel in anatomical units
    bone = np.zeros_like(D)
    for side in SIDES:
        u = IMAGE_SIGN[side] * X
        wob = 0.12 * smooth_noise(rng, X.shape, 4)
        # posterior ribs: rise a little from the spine, then curve down laterally
        sp = U(0.066, 0.074)
        v = (Y - U(0.05, 0.075) + U(0.5, 0.65) * u - (1.5 + 0.9 * Y) * u * u) / sp + wob
        f = v - np.floor(v) - 0.5
        hw = U(0.2, 0.25) * (1.0 + 0.2 * np.clip(u / 0.4, 0, 1))
        rib = smoothstep((hw - np.abs(f)) * sp / (1.5 * px) + 0.5)
        rib *= 0.65 + 0.35 * (np.abs(f) / hw) ** 2  # brighter cortex
        rib *= (v > -0.5) & (v < 10.5)
        rib *= smoothstep((u - 0.03) / 0.02) * smoothstep((0.46 - u) / 0.04)
        # anterior ribs: fainter, run down and in, end at the costal cartilage
        spa = U(0.08, 0.09)
        va = (Y - U(0.11, 0.14) - 0.30 * (0.42 - u) + 0.2 * (0.42 - u) ** 2) / spa + wob
        fa = va - np.floor(va) - 0.5
        hwa = 0.012 / spa
        rib_a = smoothstep((hwa - np.abs(fa)) * spa / (1.5 * px) + 0.5) * ((va > -0.5) & (va < 6))
        rib_a = rib_a * smoothstep((u - 0.13) / 0.05) * smoothstep((0.43 - u) / 0.03)
        bone += rib + 0.5 * rib_a
        # clavicle: from the sternal notch up and out to the shoulder
        ycl = U(0.14, 0.18) - 0.30 * u + 0.25 * u * u + 0.012 * np.sin(u / 0.3 * np.pi)
        clav = smoothstep((0.017 - np.abs(Y - ycl) / 1.05) / (1.5 * px) + 0.5)
        clav *= smoothstep((u - 0.025) / 0.02) * smoothstep((0.40 - u) / 0.03)
        bone += 1.3 * clav
        # humeral head at the top corner
        hr = ((u - U(0.49, 0.53)) ** 2 + (Y - U(0.07, 0.12)) ** 2) / U(0.07, 0.09) ** 2
        bone += 1.2 * smoothstep((1.0 - hr) / 0.15)
    bone *= body > 0
    D += U(0.055, 0.08) * np.clip(bone, 0, 1.6) * (0.5 + 0.5 * lung_f)


def _add_breasts(D: np.ndarray, rng: np.random.Generator, X: np.ndarray, Y: np.ndarray) -> None:
    """Breast shadows over the lower zones (in place)."""
    U = rng.uniform
    for side in SIDES:
        u = IMAGE_SIGN[side] * X
        bx, by = U(0.27, 0.33), U(0.68, 0.76)
        e = ((u - bx) / U(0.15, 0.2)) ** 2 + ((Y - by) / U(0.10, 0.13)) ** 2
        D += 0.045 * smoothstep((1.0 - e) / 0.3) * smoothstep((Y - by + 0.12) / 0.1)


def draw_zone_map(rng: np.random.Generator, lungs: dict[str, np.ndarray], s: int) -> np.ndarray:
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
            stray = zone & ~largest_component(zone)
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
