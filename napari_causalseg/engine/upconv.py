"""conv3x3(bilinear_x4(x)) computed at low resolution: the decoder's hot spot, restructured.

Why this is exact and not an approximation: channel mixing commutes with bilinear
upsampling (both are linear), so a 3x3 convolution after upsampling is nine 1x1 channel
mixings at low resolution (one per tap), each followed by the upsampling and a one-pixel
shift (with the convolution's zero padding). Bilinear upsampling is separable, and
"upsample, then shift by d" is a fixed matrix per axis, so the whole layer is

    T[kx] = x @ W[..., kx]          3 GEMMs at low resolution, columns (ky, C_out)
    Z = A_col @ T                   width: (W, 3w) @ (3w, b*h*3*C_out), one GEMM
    out = A_row @ Z (per image)     height: (H, 3h) @ (3h, W*C_out), the sum over ky

The interpolation matrices and their cuts are upconv_plan.py's: A_row is banded, so it
is applied in a few row groups that skip its zero columns. For the 512->256 layer at 224 px
this is ~5.9 GMAC instead of 59, and the full-resolution tensor is written once. The
backward pass is the same restructuring transposed; in training, BatchNorm then sees this
output, which equals conv(up(x)) up to float rounding.

Layout: the input is channels-last (B, h, w, C_in) and the output (B, 4h, 4w, C_out);
only Z is transposed once between the two products. All work is in large GEMMs: many
small ones (a batched matmul is a loop on the CPU) fall apart when other processes
compete for the cores. At inference a layer with large buffers (rn101's second) runs one
image and output row group (a quarter of the rows) at a time, so that its reused buffers
hold a group, not an image, and within a group one slab of output columns at a time;
training, and small layers at inference, run every image at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .device import autocast_dtype
from .onednn import mm
from .upconv_plan import SCALE, Plan, interpolation_matrix, make_plan, shifted_taps

__all__ = ["SCALE", "interpolation_matrix", "blocks_apply", "shifted_taps", "tap_weights",
           "upsample_conv3x3", "upsample_conv3x3_blocks", "upsample_conv3x3_taps"]

_workspace = threading.local()

# At inference a layer runs in row groups (per-thread buffers that hold a group, not the
# batch) only where its whole-batch buffers would be large: rn101's second layer at 224 px
# needs ~120 MB of them, its first ~15 MB, for which the row groups' many small products
# cost more than they save (~4.5 -> ~3.9 ms, alternating both in one process).
_GROUPED_ABOVE_BYTES = 32 * 2**20


def _whole_batch_bytes(b: int, h: int, w: int, c_out: int, itemsize: int) -> int:
    """The tap products, the width product and the output of `_rows_at_once`."""
    return itemsize * b * h * w * c_out * (9 + 3 * SCALE + SCALE * SCALE)


def _scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A transient buffer for inference, kept per thread and reused on the CPU: fresh
    tens-of-MB tensors are mmapped and page-faulted on every call (a quarter of the
    decoder's time). Training allocates normally: batch-sized buffers should not outlive it."""
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    numel = math.prod(shape)
    buf = buffers.get((name, like.dtype))
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of it
            buf = buffers[(name, like.dtype)] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def tap_weights(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (3 kx, C_in, 3 ky * C_out): one GEMM per kernel column.
    Differentiable; callers at inference may keep the result (see decoder.py)."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(3, 1, 2, 0).reshape(3, c_in, 3 * c_out)


def _centre_bias(bias: torch.Tensor | None, c_out: int, like: torch.Tensor) -> torch.Tensor | None:
    """The bias as a tap GEMM's bias row, on the centre tap only: its matrices are the plain
    upsampling (rows sum to 1), so it reaches every output pixel exactly once."""
    if bias is None:
        return None
    return torch.cat([torch.zeros_like(bias, dtype=like.dtype), bias.to(like.dtype),
                      torch.zeros_like(bias, dtype=like.dtype)])


def _forward(
    xw: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, b: int, h: int,
    reuse: bool, relu: bool,
) -> torch.Tensor:
    """xw: the input as (w, b, h, C_in) rows; returns (b, H, W, C_out), ReLU'd if `relu`
    (applied per row group while it is still in cache)."""
    w, c_in = xw.shape[0], xw.shape[-1]
    c_out = taps.shape[-1] // 3
    plan = make_plan(h, w, SCALE, xw.dtype, xw.device)
    out = torch.empty(b, SCALE * h, SCALE * w, c_out, dtype=xw.dtype, device=xw.device)
    flat = out.view(b, SCALE * h, -1)
    centre = _centre_bias(bias, c_out, xw)
    grouped = _whole_batch_bytes(b, h, w, c_out, xw.element_size()) > _GROUPED_ABOVE_BYTES
    if reuse and grouped and xw.device.type == "cpu":  # on a GPU, ~1000 small kernels instead
        _by_row_group(xw.view(w, b, h, c_in), taps, centre, plan, relu, out)
        return out
    # 1. nine 1x1 mixings at low resolution: t[kx] = x @ W[:, :, :, kx], columns (ky, c)
    rows_in = xw.reshape(w * b * h, c_in)
    t = torch.empty(3, w * b * h, 3 * c_out, dtype=xw.dtype, device=xw.device)
    for kx in range(3):
        mm(rows_in, taps[kx], out=t[kx], bias=centre if kx == 1 else None)
    _rows_at_once(t.view(3, w, -1), plan, flat, b, h, c_out, relu)
    return out


def _by_row_group(x, taps, centre, plan: Plan, relu: bool, out) -> None:
    """The whole layer at inference, one image and output row group at a time, from the
    low-res rows that group reads (its own and a one-row halo; the tap products of the
    two rows it shares with the group before are taken from that group's), so the
    per-thread buffers hold a group, not an image (rn101 at 224 px: ~20 instead of
    ~85 MB). Within a group, one slab of output columns at a time goes through both
    interpolation products, so that the width product's result (~3 MB) is still in cache
    when the height product reads it (~2 ms of ~35 per rn101 first prompt, against the
    group's whole width at once). x: (w, b, h, C_in). The interpolation products go
    through oneDNN (ReLU fused; ~11 ms per image faster than MKL in place), the height
    product in two halves of the group's rows (half the multiply-adds by zeros).
    `out`: the (b, H, W, C_out) output, or a callable handed each block of the output
    instead, `out(image, row0, row1, col0, col1, block)` (`upsample_conv3x3_blocks`)."""
    w, b, _, c_in = x.shape
    c_out = taps.shape[-1] // 3
    for i in range(b):
        done, end = [], 0  # the previous group's tap products, and the low-res row it ended at
        for (o0, _, r0, r1, _), halves in zip(plan.groups, plan.halves):
            rows, kept = r1 - r0, max(end - r0, 0)
            cols = rows * 3 * c_out  # (h, ky, c) of this group
            xg = _scratch("x", (w, rows - kept, c_in), x)
            xg.copy_(x[:, i, r0 + kept : r1])
            # 1. nine 1x1 mixings: t[kx] = x @ W[:, :, :, kx], rows (w, h), columns (ky, c),
            # for the rows not done yet, oneDNN's results as they come (the width product
            # gathers from them and from the previous group's shared rows anyway)
            new = [mm(xg.view(-1, c_in), taps[kx], bias=centre if kx == 1 else None).view(w, rows - kept, -1)
                   for kx in range(3)]
            t = []  # per kx, (products, first row in the group) pieces covering its rows
            for kx in range(3):  # the shared rows are the last of the group before
                t.append(([(done[kx][:, -kept:], 0)] if kept else []) + [(new[kx], kept)])
            done, end = new, r1
            for q0, q1, s0, s1, coeff in plan.col_groups:
                # 2.+3. upsample + shift along the width, all taps kx at once, for the output
                # columns q0:q1 from the 3 x (few) low-res columns they can touch; the result
                # goes to the height product's layout, rows outermost: ((h, ky), (q, c))
                src = _scratch("c", (3, s1 - s0, rows, 3 * c_out), x)
                for kx in range(3):
                    for part, start in t[kx]:
                        src[kx, :, start : start + part.shape[1]].copy_(part[s0:s1])
                part = mm(coeff, src.view(-1, cols)).view(q1 - q0, 3 * rows, c_out)
                zt = _scratch("d", (3 * rows, q1 - q0, c_out), x)
                zt.copy_(part.transpose(0, 1))
                # 4. upsample + shift along the height, sum over ky
                zrows = zt.view(3 * rows, -1)
                for a0, a1, k0, k1, coeff_h in halves:
                    block = mm(coeff_h, zrows[k0:k1], relu=relu).view(a1 - a0, q1 - q0, c_out)
                    if callable(out):
                        out(i, o0 + a0, o0 + a1, q0, q1, block)
                    else:
                        out[i, o0 + a0 : o0 + a1, q0:q1] = block


def _rows_at_once(t, plan: Plan, flat, b: int, h: int, c_out: int, relu: bool) -> None:
    """Steps 2-4 in training and on GPUs, every image at once. On the CPU, oneDNN's
    product plus a copy of its result took half of MKL's time in place (batch 4, 512->256
    at 56->224 px: 36 vs 66 ms for the height product; training keeps freed memory for
    reuse anyway). Each width-product result goes straight to step 3's layout."""
    w, big_w, rest = t.shape[1], SCALE * t.shape[1], t.shape[2]
    n = flat.shape[-1]
    # 2.+3. upsample + shift along the width: (W, (b, h, ky, c)), stored as (b, (h, ky), W, c)
    zt = torch.empty(b, 3 * h, big_w, c_out, dtype=t.dtype, device=t.device)
    dest = zt.permute(2, 0, 1, 3)  # (W, b, 3h, c)
    for o0, o1, s0, s1, coeff in plan.col_groups:
        src = t if s1 - s0 == w else t[:, s0:s1].contiguous()
        dest[o0:o1].copy_(mm(coeff, src.reshape(-1, rest)).view(o1 - o0, b, 3 * h, c_out))
    z = zt.view(b, 3 * h, n)
    # 4. upsample + shift along the height, sum over ky: (b, H, W, c)
    for i in range(b):
        for o0, o1, r0, r1, coeff in plan.groups:
            mm(coeff, z[i, 3 * r0 : 3 * r1], out=flat[i, o0:o1], relu=relu)


def _backward(g: torch.Tensor, xw: torch.Tensor, taps: torch.Tensor, b: int, h: int, needs):
    """The same restructuring, transposed: row product, width product, then the GEMMs,
    all through oneDNN where it applies (training only: see `_rows_at_once`)."""
    w, c_in = xw.shape[0], xw.shape[-1]
    c_out = taps.shape[-1] // 3
    plan = make_plan(h, w, SCALE, xw.dtype, xw.device)
    big_h, big_w, n = SCALE * h, SCALE * w, SCALE * w * c_out
    g = g.contiguous()
    flat = g.view(b, big_h, n)
    # each group's result goes straight to the width product's layout, (W, (b, 3h, c))
    gz = torch.empty(big_w, b, 3 * h, c_out, dtype=g.dtype, device=g.device)
    for i in range(b):
        for r0, r1, o0, o1, coeff in plan.groups_t:
            part = mm(coeff, flat[i, o0:o1]).view(3 * (r1 - r0), big_w, c_out)
            gz[:, i, 3 * r0 : 3 * r1].copy_(part.transpose(0, 1))
    rest = b * 3 * h * c_out
    gz = gz.view(big_w, rest)
    gt = torch.empty(3, w, rest, dtype=g.dtype, device=g.device)
    for kx, b0, b1, o0, o1, coeff in plan.col_groups_t:
        mm(coeff, gz[o0:o1], out=gt[kx, b0:b1])
    gt = gt.view(3, w * b * h, 3 * c_out)
    del gz
    grad_x = grad_taps = grad_b = None
    if needs[0]:
        gx = mm(gt[0], taps[0].T)
        gx.add_(mm(gt[1], taps[1].T)).add_(mm(gt[2], taps[2].T))
        grad_x = gx.view(w, b, h, c_in).permute(1, 2, 0, 3)
    if needs[1]:
        # oneDNN reads a transposed left operand slowly: one copy of it, then 3 products at
        # ~1.6x MKL's speed (x^T @ g for 512 x 12544 by 12544 x 768: 32 instead of 52 ms)
        rows_t = xw.reshape(w * b * h, c_in).T.contiguous()
        grad_taps = torch.stack([mm(rows_t, gt[kx]) for kx in range(3)])
    if needs[2]:
        # the bias entered through the centre tap, whose upsampling rows sum to 1: its
        # gradient is the sum of gt's centre block (1/9 of gt) rather than of all of g
        grad_b = gt[1].view(-1, 3, c_out)[:, 1].sum(0)
    return grad_x, grad_taps, grad_b


class _UpsampleConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, taps, bias, reuse, relu):
        device = x.device.type
        # under autocast behave like a convolution: compute in, and return, its dtype
        dtype = autocast_dtype(device) or x.dtype
        b, h, w, _ = x.shape
        ctx.dtypes = (x.dtype, taps.dtype, bias.dtype if bias is not None else None)
        xw = x.to(dtype).permute(2, 0, 1, 3).contiguous()  # (w, b, h, C_in): see _forward
        taps = taps.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            out = _forward(xw, taps, bias, b, h, reuse, relu)
        ctx.save_for_backward(xw, taps)
        ctx.shape = (b, h)
        return out

    @staticmethod
    def backward(ctx, grad):
        xw, taps = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        with torch.autocast(xw.device.type, enabled=False):
            grads = _backward(grad.to(xw.dtype), xw, taps, *ctx.shape, needs)
        return (*(g.to(d) if g is not None else None for g, d in zip(grads, ctx.dtypes)), None, None)


def upsample_conv3x3_taps(
    x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """`upsample_conv3x3` with the weight already arranged by `tap_weights`, optionally
    followed by ReLU (fused when nothing is differentiated)."""
    _check_taps(x, taps)
    # inference (nothing will be differentiated) may reuse per-thread scratch buffers
    tensors = (x, taps) if bias is None else (x, taps, bias)
    reuse = not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    if relu and not reuse:
        return F.relu(_UpsampleConv3x3.apply(x, taps, bias, reuse, False))
    return _UpsampleConv3x3.apply(x, taps, bias, reuse, relu)


def _check_taps(x: torch.Tensor, taps: torch.Tensor) -> None:
    if x.dim() != 4 or taps.dim() != 3 or taps.shape[:2] != (3, x.shape[-1]):
        raise ValueError(f"input {tuple(x.shape)} does not match taps {tuple(taps.shape)}")


def blocks_apply(x: torch.Tensor) -> bool:
    """Whether `upsample_conv3x3_blocks` runs for `x`: float32 on the CPU, nothing
    recorded for autograd, no autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and autocast_dtype("cpu") is None)


def upsample_conv3x3_blocks(
    x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
    consume: Callable[[int, int, int, int, int, torch.Tensor], None], relu: bool = False,
) -> None:
    """`upsample_conv3x3_taps(x, taps, bias, relu)` handed to `consume(image, row0, row1,
    col0, col1, block)` block by block, (row1 - row0, col1 - col0, C_out), each valid during
    the call only: for a caller that reduces it at once (a first prompt, decoder.py).
    Where `blocks_apply(x)`."""
    if not blocks_apply(x):
        raise ValueError("upsample_conv3x3_blocks is for float32 CPU inference (no autograd, no autocast)")
    _check_taps(x, taps)
    b, h, w, c_in = x.shape
    xw = x.permute(2, 0, 1, 3).contiguous()
    centre = _centre_bias(bias, taps.shape[-1] // 3, xw)
    _by_row_group(xw.view(w, b, h, c_in), taps, centre, make_plan(h, w, SCALE, xw.dtype, xw.device), relu, consume)


def upsample_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, scale: int = 4
) -> torch.Tensor:
    """conv2d(interpolate(x, scale, bilinear), weight, bias, padding=1), channels-last.

    x: (B, h, w, C_in); weight: (C_out, C_in, 3, 3); returns (B, scale*h, scale*w, C_out).
    Differentiable in x, weight and bias.
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got {tuple(weight.shape)}")
    if scale != SCALE:
        raise ValueError(f"only x{SCALE} upsampling is implemented, got x{scale}")
    return upsample_conv3x3_taps(x, tap_weights(weight), bias)
