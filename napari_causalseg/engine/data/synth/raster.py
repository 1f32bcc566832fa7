"""Raster primitives of the generator: blur, smooth noise, soft bands, line segments and
connected components, all vectorised numpy (no per-pixel Python loops)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge padding); wide blurs run on a downsampled copy."""
    if sigma <= 0.05:
        return a
    a = a.astype(np.float32, copy=False)
    h, w = a.shape
    if sigma > 4.0:
        from PIL import Image

        f = int(sigma // 2)
        small = Image.fromarray(a).resize((max(1, w // f), max(1, h // f)), Image.BOX)
        small = blur(np.asarray(small, np.float32), sigma / f)
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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish std random field with features ~shape/cells (bicubic upsampling)."""
    from PIL import Image

    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g, mode="F")
    h, w = shape
    box = (1.0, 1.0, cells + 2.0, cells + 2.0)  # avoid the edge cells' padding artefacts
    return np.asarray(im.resize((w, h), Image.BICUBIC, box=box), dtype=np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic between: soft edges without aliasing."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def band(d: np.ndarray, half: float, edge: float) -> np.ndarray:
    """Soft 0..1 band |d| < half with an edge of width ``edge``."""
    return smoothstep((half - np.abs(d)) / edge + 0.5)


def segments(shape: tuple[int, int], segs: Sequence[Sequence[float]]) -> np.ndarray:
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


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected part of ``mask``: one contiguous area, as a note promises."""
    labels, n = _components(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))
