"""engine/onednn.py: the oneDNN products are torch's products (up to float rounding)."""

from __future__ import annotations

import pytest
import torch

from napari_causalseg.engine import onednn
from napari_causalseg.engine.onednn import Linear, mm


@pytest.mark.parametrize("transposed", [False, True])
def test_mm_equals_torch_for_any_strides_with_bias_relu_and_out(transposed):
    torch.manual_seed(0)
    a = torch.randn(37, 45)
    b = torch.randn(300, 45).T if transposed else torch.randn(45, 300)
    bias = torch.randn(300)
    with torch.no_grad():
        torch.testing.assert_close(mm(a, b), a @ b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(mm(a, b, bias=bias, relu=True), (a @ b + bias).relu(), rtol=1e-5, atol=1e-4)
        out = torch.empty(2, 37, 300)
        assert mm(a, b, out=out[1]).data_ptr() == out[1].data_ptr()
        torch.testing.assert_close(out[1], a @ b, rtol=1e-5, atol=1e-4)


def test_without_onednn_and_with_autograd_torch_computes(monkeypatch):
    a, b = torch.randn(5, 7, requires_grad=True), torch.randn(7, 3)
    mm(a, b).sum().backward()  # recorded: torch.mm, so there is a gradient
    torch.testing.assert_close(a.grad, b.sum(1).expand(5, 7))
    monkeypatch.setattr(onednn, "_onednn_linear", lambda: None)
    with torch.no_grad():
        torch.testing.assert_close(mm(a, b, relu=True), (a @ b).relu())
        torch.testing.assert_close(mm(a.double(), b.double()), a.double() @ b.double())


def test_linear_with_residual_and_packed_weights():
    torch.manual_seed(1)
    x, w, bias, res = torch.randn(15, 64), torch.randn(96, 64), torch.randn(96), torch.randn(15, 96)
    with torch.inference_mode():
        torch.testing.assert_close(Linear(w, bias)(x, residual=res), x @ w.T + bias + res, rtol=1e-5, atol=1e-5)
        if onednn._onednn_linear() is not None:
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            torch.testing.assert_close(Linear(packed, bias)(x), x @ w.T + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_records_its_own_gradients_equal_to_torch(with_bias):
    """Under autograd a float32 CPU Linear is `_LinearFunction` (oneDNN's products both
    ways, where the build has them): outputs and all gradients as F.linear's."""
    torch.manual_seed(2)
    x = torch.randn(4, 7, 64, requires_grad=True)
    w = torch.randn(96, 64, requires_grad=True)
    bias = torch.randn(96, requires_grad=True) if with_bias else None
    out = Linear(w, bias)(x)
    if onednn._onednn_linear() is not None:
        assert type(out.grad_fn).__name__ == "_LinearFunctionBackward"
    want = torch.nn.functional.linear(x, w, bias)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    inputs = [x, w] + ([bias] if with_bias else [])
    for a, e in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
    res = torch.randn(4, 7, 96)
    torch.testing.assert_close(Linear(w, bias)(x, residual=res), want + res, rtol=1e-5, atol=1e-5)


def test_linear_under_autocast_or_in_float64_is_torchs():
    """Autocast changes the dtype F.linear computes in, float64 is not oneDNN's: both are
    left to torch, so dtypes and gradients are what torch gives."""
    x, w, bias = torch.randn(5, 8, requires_grad=True), torch.randn(3, 8), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Linear(w, bias)(x)
    assert out.dtype == torch.bfloat16
    assert type(out.grad_fn).__name__ != "_LinearFunctionBackward"
    x64 = x.detach().double().requires_grad_()
    out = Linear(w.double(), bias.double())(x64)
    assert out.dtype == torch.float64
    out.sum().backward()
    torch.testing.assert_close(x64.grad, w.double().sum(0).expand(5, 8))
