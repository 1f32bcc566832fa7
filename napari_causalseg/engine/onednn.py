"""Matrix products through oneDNN where that is the faster path: CPU, float32, no autograd.

torch's CPU GEMMs go to the BLAS it was built with (MKL for PyPI's wheels); on AMD CPUs
MKL's sgemm ran at about half the speed of oneDNN's inner product for every shape this
package multiplies (measured on AMD EPYC, torch 2.14: 15x512 by 512x1536, 3136x512 by
512x768, 56x45 by 45x57344, ...). oneDNN ships inside torch, so these helpers call its
fused linear op (`torch.ops.mkldnn._linear_pointwise`) when the build has a working one,
and torch.mm / F.linear otherwise and whenever autograd records (the op has no backward;
a custom autograd Function's own forward and backward run without recording).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F


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


def _op_for(x: torch.Tensor):
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return None
    return _onednn_linear()


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
