"""Where the two lung fields of a chest radiograph are: a box per lung, from the image alone.

Why: lung zones (upper / middle / lower x left / right) are defined relative to the lungs,
not the image frame, and the lungs sit very differently in real X-rays (on QaTa-COV19's
training masks the apex lies between 1 % and 27 % of the image height, the base between
54 % and 98 %, 5th to 95th percentile). With zones cut from the image frame instead, only
71 % of QaTa's test masks agree with their own captions; with this estimate 91 %
(benchmarks/ZONES.md).

How: a ridge regression from a 16x16 thumbnail (intensity-normalised) to the 8 box
edges, fitted on the QaTa-COV19 TRAINING split's six-zone masks (those cover nearly both
lung fields) with left-right mirrored copies, by ``benchmarks/fit_lung_boxes.py``. The
257x8 coefficients ship as ``lung_boxes.npz``. It is linear, takes well under 1 ms
after the thumbnail, works at any image size (the image is subsampled first) and makes
no claim beyond a box: the lung outline is not needed to tell zones apart. Prediction
averages the image and its mirror (mirrored back), so a flipped image gets flipped boxes.

Coordinates are FRACTIONS of the image height (rows) and width (columns), so one estimate
serves the image and a mask of any size. "left"/"right" here are IMAGE sides.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS_FILE = Path(__file__).with_name("lung_boxes.npz")
IMAGE_SIDES = ("left", "right")  # image sides, in column order
_MIN_HEIGHT = 0.15  # a lung box shorter than this share of the image is not believed
_MIN_WIDTH = 0.08
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class LungBox:
    """One lung field as fractions of the image: rows [top, bottom), columns [col0, col1)."""

    top: float
    bottom: float
    col0: float
    col1: float

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def width(self) -> float:
        return self.col1 - self.col0


@dataclass(frozen=True)
class LungFields:
    """Both lung fields of one image; ``midline`` (a column fraction) splits the sides."""

    left: LungBox  # the lung on the IMAGE left (the patient's right in a PA view)
    right: LungBox  # the lung on the image right
    midline: float
    source: str  # "estimate" | "frame" | "mask"

    def box(self, side: str) -> LungBox:
        if side not in IMAGE_SIDES:
            raise ValueError(f"image side must be 'left' or 'right', got {side!r}")
        return self.left if side == "left" else self.right

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "midline": round(self.midline, 4),
            **{side: {k: round(getattr(self.box(side), k), 4) for k in ("top", "bottom", "col0", "col1")}
               for side in IMAGE_SIDES},
        }


@dataclass(frozen=True)
class LungConfig:
    """Where the regression comes from and the thumbnail it reads."""

    weights: str | os.PathLike = WEIGHTS_FILE
    max_side: int = 512  # images are subsampled to about this before the thumbnail
    low_high_percentiles: tuple[float, float] = (1.0, 99.0)  # intensity normalisation


def frame_lung_fields() -> LungFields:
    """The naive baseline: each image half, full height (no lung estimate at all)."""
    return LungFields(LungBox(0.0, 1.0, 0.0, 0.5), LungBox(0.0, 1.0, 0.5, 1.0), 0.5, "frame")


def lung_fields_from_mask(left: np.ndarray, right: np.ndarray) -> LungFields:
    """Boxes of known lung masks (bool, image-left and image-right lung), e.g. a synthetic
    case's own lungs; the midline lies halfway between their inner edges."""
    boxes = []
    for lung in (left, right):
        lung = np.asarray(lung, bool)
        rows, cols = np.flatnonzero(lung.any(1)), np.flatnonzero(lung.any(0))
        if rows.size == 0:
            raise ValueError("a lung mask is empty")
        h, w = lung.shape
        boxes.append(LungBox(float(rows[0] / h), float((rows[-1] + 1) / h), float(cols[0] / w),
                             float((cols[-1] + 1) / w)))
    midline = (boxes[0].col1 + boxes[1].col0) / 2
    return LungFields(boxes[0], boxes[1], float(midline), "mask")


def gray_image(image: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """2-D float32 from grey or RGB(A) data, strided down to about ``max_side`` first (cheap
    on large radiographs: only the kept pixels are converted); a clear error otherwise."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    bad_channels = a.ndim == 3 and a.shape[-1] not in (1, 3, 4)
    if bad_channels or a.ndim not in (2, 3) or min(a.shape[:2]) < 2:
        raise ValueError(f"expected a 2-D grey or RGB radiograph, got an array of shape {np.shape(image)}")
    if max_side:
        step = max(1, max(a.shape[:2]) // max_side)
        a = a[::step, ::step]
    if a.ndim == 3:  # BT.601 luminance, as the image readers use
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3].astype(np.float32) @ _LUMA
    return np.nan_to_num(np.ascontiguousarray(a, dtype=np.float32))


def thumbnail(image: np.ndarray, size: int, cfg: LungConfig = LungConfig()) -> np.ndarray:
    """``size`` x ``size`` box-filtered, intensity-normalised (0..1) view of the image.

    Large radiographs are subsampled by striding first (aliasing does not matter for a
    16-pixel summary), so a 3000 x 3000 image costs about as much as a 512 one."""
    from PIL import Image

    a = gray_image(image, cfg.max_side)
    small = np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.BOX), np.float32)
    lo, hi = np.percentile(small, cfg.low_high_percentiles)
    return np.clip((small - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def features(image: np.ndarray, size: int, cfg: LungConfig = LungConfig()) -> np.ndarray:
    """The regression's input: the thumbnail's pixels and a constant."""
    return np.append(thumbnail(image, size, cfg).ravel(), 1.0).astype(np.float32)


def mirror_edges(y: np.ndarray) -> np.ndarray:
    """Box edges (..., 8) of the mirrored image: sides swap, columns become 1 - column."""
    y = np.asarray(y)
    out = np.empty_like(y)
    out[..., 0:2], out[..., 4:6] = y[..., 4:6], y[..., 0:2]
    out[..., 2], out[..., 3] = 1 - y[..., 7], 1 - y[..., 6]
    out[..., 6], out[..., 7] = 1 - y[..., 3], 1 - y[..., 2]
    return out


@functools.lru_cache(maxsize=4)
def load_regression(path: str) -> tuple[np.ndarray, int, dict]:
    """(coefficients (size*size+1, 8), thumbnail size, provenance) of a fitted estimator."""
    try:
        with np.load(path) as z:
            weights, size, info = z["weights"].astype(np.float32), int(z["size"]), str(z["info"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot read the lung-field regression {path}: {exc}") from exc
    if weights.shape != (size * size + 1, 8):
        raise ValueError(f"{path}: coefficients of shape {weights.shape}, expected ({size * size + 1}, 8)")
    return weights, size, json.loads(info)


def save_regression(path: str | os.PathLike, weights: np.ndarray, size: int, info: dict) -> None:
    np.savez_compressed(path, weights=np.asarray(weights, np.float32), size=np.int64(size),
                        info=np.array(json.dumps(info, sort_keys=True)))
    load_regression.cache_clear()


def fit_regression(images: list[np.ndarray], edges: np.ndarray, size: int = 16, lam: float = 3.0,
                   cfg: LungConfig = LungConfig()) -> np.ndarray:
    """Ridge coefficients from images and their true box edges (N, 8), each case also mirrored."""
    x = np.stack([features(im, size, cfg) for im in images]
                 + [features(np.asarray(im)[:, ::-1], size, cfg) for im in images]).astype(np.float64)
    y = np.concatenate([np.asarray(edges, float), mirror_edges(np.asarray(edges, float))])
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def edges_from_masks(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The 8 box edges (top, bottom, col0, col1 of the image-left, then image-right lung)."""
    f = lung_fields_from_mask(left, right)
    return np.array([getattr(f.box(s), k) for s in IMAGE_SIDES for k in ("top", "bottom", "col0", "col1")])


def _fields_from_edges(y: np.ndarray) -> LungFields:
    """Clip raw regression output into two plausible boxes either side of a midline."""
    y = np.clip(np.asarray(y, float), 0.0, 1.0)
    midline = float(np.clip((y[3] + y[6]) / 2, 0.25, 0.75))
    boxes = []
    for side, (top, bottom, c0, c1) in zip(IMAGE_SIDES, (y[0:4], y[4:8])):
        if bottom - top < _MIN_HEIGHT:  # grow about the centre
            centre = float(np.clip((top + bottom) / 2, _MIN_HEIGHT / 2, 1 - _MIN_HEIGHT / 2))
            top, bottom = centre - _MIN_HEIGHT / 2, centre + _MIN_HEIGHT / 2
        lo, hi = (0.0, midline) if side == "left" else (midline, 1.0)
        c0, c1 = float(np.clip(c0, lo, hi)), float(np.clip(c1, lo, hi))
        if c1 - c0 < _MIN_WIDTH:
            c0, c1 = (max(lo, c1 - _MIN_WIDTH), c1) if side == "left" else (c0, min(hi, c0 + _MIN_WIDTH))
        boxes.append(LungBox(float(top), float(bottom), c0, c1))
    return LungFields(boxes[0], boxes[1], midline, "estimate")


def estimate_lung_fields(image: np.ndarray, cfg: LungConfig = LungConfig()) -> LungFields:
    """Both lung boxes of a chest radiograph (grey or RGB, any size), from pixels alone."""
    weights, size, _ = load_regression(str(cfg.weights))
    a = gray_image(image, cfg.max_side)
    direct = features(a, size, cfg) @ weights
    mirrored = features(a[:, ::-1], size, cfg) @ weights
    return _fields_from_edges((direct + mirror_edges(mirrored)) / 2)
