"""The interpolation side of upconv.py: bilinear x4 (+ the 3x3 shift) as banded matrices,
and how the products with them are cut into groups that skip their zero blocks.

The matrices come from `F.interpolate` applied to an identity, so they are PyTorch's own
bilinear weights (border clamping included). Every cut is checked when it is made: what
a group leaves out must be zero, so skipping it changes no number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALE = 4  # the decoder's bilinear factor; the only one implemented


def interpolation_matrix(n: int, scale: int) -> torch.Tensor:
    """(scale*n, n) float64 matrix of `F.interpolate(mode='linear', align_corners=False)`."""
    eye = torch.eye(n, dtype=torch.float64)[None]  # n signals of length n
    return F.interpolate(eye, scale_factor=scale, mode="linear", align_corners=False)[0].T


def shifted_taps(n: int, scale: int) -> torch.Tensor:
    """(scale*n, n, 3): for tap k, row i is row i+k-1 of the upsampling matrix, zero when
    i+k-1 falls in the 3x3 convolution's zero padding."""
    a = interpolation_matrix(n, scale)
    zero = torch.zeros_like(a[:1])
    return torch.stack([torch.cat([zero, a[:-1]]), a, torch.cat([a[1:], zero])], dim=-1)


@dataclass(frozen=True)
class Plan:
    """The interpolation products for one (h, w, scale), cut into groups.

    The row matrix is banded (block a of `scale` output rows reads low-res rows a-1..a+1),
    so it is applied as a few GEMMs over row groups, each with only the columns its rows
    can touch; likewise its transpose in the backward pass.
    """

    col_groups_t: tuple[tuple[int, int, int, int, int, torch.Tensor], ...]  # (kx, b0, b1, o0, o1, coeff)
    col_groups: tuple[tuple[int, int, int, int, torch.Tensor], ...]  # (o0, o1, s0, s1, coeff)
    groups: tuple[tuple[int, int, int, int, torch.Tensor], ...]  # (o0, o1, r0, r1, rows[o0:o1, 3r0:3r1])
    groups_t: tuple[tuple[int, int, int, int, torch.Tensor], ...]  # (r0, r1, o0, o1, that, transposed)
    halves: tuple[tuple[tuple[int, int, int, int, torch.Tensor], ...], ...]  # per group: (a0, a1, k0, k1, coeff)


GROUPS = 4  # GEMMs for each banded product (per image for the rows)
MIN_GROUP = 8  # low-res rows/columns per group, at least


def _group_size(n: int) -> int:
    return max(-(-n // GROUPS), MIN_GROUP)


def _col_groups(cols: torch.Tensor, w: int, s: int):
    """The width product cut into groups of output columns, each with the (tap, low-res
    column) inputs it can touch: 3 runs of columns, gathered into one block by the caller."""
    taps = cols.view(s * w, 3, w)
    groups = []
    size = _group_size(w)
    for b0 in range(0, w, size):
        b1 = min(b0 + size, w)
        o0, o1, s0, s1 = s * b0, s * b1, max(b0 - 1, 0), min(b1 + 1, w)
        block = taps[o0:o1]
        if block[:, :, :s0].any() or block[:, :, s1:].any():
            raise AssertionError("interpolation matrix is not banded as assumed")
        groups.append((o0, o1, s0, s1, block[:, :, s0:s1].reshape(o1 - o0, 3 * (s1 - s0))))
    return groups


def _col_groups_t(cols: torch.Tensor, w: int, s: int):
    """The width product's transpose (backward) cut the same way: for each tap and group of
    low-res columns, only the output columns that read them (the rest is zero)."""
    taps = cols.view(s * w, 3, w)
    groups = []
    size = _group_size(w)
    for b0 in range(0, w, size):
        b1 = min(b0 + size, w)
        o0, o1 = max(s * (b0 - 1), 0), min(s * (b1 + 1), s * w)
        for kx in range(3):
            block = taps[:, kx, b0:b1]
            if block[:o0].any() or block[o1:].any():
                raise AssertionError("interpolation matrix is not banded as assumed")
            groups.append((kx, b0, b1, o0, o1, block[o0:o1].T))
    return groups


def _row_groups(rows: torch.Tensor, h: int, s: int):
    """Exact slices of the banded row matrix: every column a group leaves out is zero."""
    size = _group_size(h)
    forward, backward = [], []
    for a0 in range(0, h, size):
        a1 = min(a0 + size, h)
        o0, o1, r0, r1 = s * a0, s * a1, max(a0 - 1, 0), min(a1 + 1, h)
        block = rows[o0:o1]
        if block[:, : 3 * r0].any() or block[:, 3 * r1 :].any():
            raise AssertionError("interpolation matrix is not banded as assumed")
        forward.append((o0, o1, r0, r1, block[:, 3 * r0 : 3 * r1]))
        # transpose: low-res rows a0..a1-1 receive from output rows s*(a0-1) .. s*(a1+1)-1
        o0, o1 = max(s * (a0 - 1), 0), min(s * (a1 + 1), s * h)
        cols = rows[:, 3 * a0 : 3 * a1]
        if cols[:o0].any() or cols[o1:].any():
            raise AssertionError("interpolation matrix is not banded as assumed")
        backward.append((a0, a1, o0, o1, cols[o0:o1].T))
    return forward, backward


def _halves(coeff: torch.Tensor) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """A row group's product in two halves of its output rows (inference), each with only
    the columns (low-res rows x taps) it reads: ~45 % fewer multiply-adds, all by zeros."""
    half = (coeff.shape[0] + 1) // 2
    out = []
    for a0, a1 in ((0, half), (half, coeff.shape[0])):
        touched = coeff[a0:a1].ne(0).any(0).nonzero()
        k0, k1 = int(touched.min()), int(touched.max()) + 1
        out.append((a0, a1, k0, k1, coeff[a0:a1, k0:k1]))
    return tuple(out)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)  # cached for later calls in any mode: normal tensors
def make_plan(h: int, w: int, scale: int, dtype: torch.dtype, device: torch.device) -> Plan:
    # the row matrix's columns in (low-res row, tap) order, the column matrix's in (tap,
    # low-res column) order; only their cuts are kept
    rows = shifted_taps(h, scale).reshape(scale * h, 3 * h)
    cols = shifted_taps(w, scale).permute(0, 2, 1).reshape(scale * w, 3 * w)
    forward, backward = _row_groups(rows, h, scale)

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    return Plan(
        tuple((*g[:5], to(g[5])) for g in _col_groups_t(cols, w, scale)),
        tuple((*g[:4], to(g[4])) for g in _col_groups(cols, w, scale)),
        tuple((*g[:4], to(g[4])) for g in forward),
        tuple((*g[:4], to(g[4])) for g in backward),
        tuple(tuple((*hv[:4], to(hv[4])) for hv in _halves(g[4])) for g in forward),
    )
