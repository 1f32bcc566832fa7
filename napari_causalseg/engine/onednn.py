"""Matrix products through oneDNN where that is the faster path: CPU, float32, no autograd.

torch's CPU GEMMs go to the BLAS it was built with (MKL for PyPI's wheels); on AMD CPUs
MKL's sgemm ran at about half the speed of oneDNN's inner product for every shape this
package multiplies (measured on AMD EPYC, torch 2.14: 15x512 by 512x1536, 3136x512 by
512x768, 56x45 by 45x57344, ...). oneDNN ships inside torch, so these helpers call its
fused linear op (`torch.ops.mkldnn._linear_pointwise`) when the build has a working one,
and torch.mm / F.linear otherwise. The op has no backward, so `mm` computes with torch
whenever autograd records (a custom autograd Function's own forward and backward run
without recording), and `Linear` records its own: `_LinearFunction`, whose backward is
oneDNN's products too (the text tower and the dense attention pool in training: ~2x).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .device import autocast_dtype


@functools.cache
def _onednn_linear():
    """oneDNN's fused linear op if this torch build has a working one, else None."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
        x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
        res = torch.randn(3, 5)
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5) and \
            torch.allclose(op(x, packed, b, "none", [], ""), F.linear(x, w, b), atol=1e-5) and \
            torch.allclose(op(x, w.T.contiguous().T, None, "relu", [], ""), F.linear(x, w).relu(), atol=1e-5) and \
            torch.allclose(op.binary(x, res, w, b, "add"), F.linear(x, w, b) + res, atol=1e-5)
        return op if ok else None
    except (AttributeError, RuntimeError):
        return None


def applies(x: torch.Tensor) -> bool:
    """Whether `mm(x, ...)` runs through oneDNN here (CPU, float32, not recorded)."""
    return _op_for(x) is not None


def _op_for(x: torch.Tensor):
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return None
    return _onednn_linear()


def _recordable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `_LinearFunction` applies to an F.linear that autograd records: a working
    oneDNN op, float32 CPU tensors, no autocast (which would change the dtype F.linear
    computes in)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or t.is_mkldnn for t in tensors):
        return False
    return autocast_dtype("cpu") is None and _onednn_linear() is not None


class _LinearFunction(torch.autograd.Function):
    """F.linear with oneDNN's products in both directions: y = x W^T + b, dx = dy W,
    dW = dy^T x (dy^T copied first: oneDNN reads a transposed left operand slowly)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.shape = x.shape
        ctx.has_bias = bias is not None
        out = _onednn_linear()(rows, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad = grad.reshape(-1, weight.shape[0])
        needs = ctx.needs_input_grad
        grad_x = mm(grad, weight).view(ctx.shape) if needs[0] else None
        grad_w = mm(grad.T.contiguous(), rows) if needs[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and needs[2] else None
        return grad_x, grad_w, grad_b


class Linear(NamedTuple):
    weight: torch.Tensor  # (out, in), or oneDNN's packed form of it
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """F.linear(x, weight, bias) (+ residual)."""
        w = self.weight
        op = _onednn_linear() if w.is_mkldnn else _op_for(x)
        if op is not None:
            if residual is None:
                return op(x, w, self.bias, "none", [], "")
            return op.binary(x, residual, w, self.bias, "add")
        if torch.is_grad_enabled() and _recordable(x, w, self.bias):
            out = _LinearFunction.apply(x, w, self.bias)
            return out if residual is None else out + residual
        out = F.linear(x, w, self.bias)
        return out if residual is None else out.add_(residual)


def linear(x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
    """`module(x)` for an nn.Linear."""
    return Linear(module.weight, module.bias)(x)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
       bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """a @ b (+ bias, a row vector), ReLU'd if `relu`, into `out` if given: torch.mm /
    torch.addmm. 2-D a and b, any strides."""
    op = _op_for(a)
    if op is not None and a.dim() == 2 and b.dim() == 2:
        result = op(a, b.T, bias, "relu" if relu else "none", [], "")
        return result if out is None else out.copy_(result)
    result = torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
    return result.clamp_min_(0) if relu else result
