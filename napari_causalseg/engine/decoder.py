"""Text-to-pixel decoder D: a note-generated kernel convolved over full-resolution features.

A linear layer maps tau to C*K*K + 1 numbers: a per-sample kernel W_tau and bias b_tau.
The method's visual path is bilinear x4, conv3x3+BN+ReLU, bilinear x4, conv3x3+BN+ReLU,
conv1x1, and then S = W_tau * (that) + b_tau. This module computes exactly that, but
restructured (the straightforward version is the oracle in tests/reference.py):

- each "bilinear x4 then conv3x3" runs at low resolution (`upconv.upsample_conv3x3`);
  in training BatchNorm then sees that very tensor (batch statistics), in eval BN is
  folded into the convolution's weights and bias;
- the 1x1 conv and the dynamic KxK conv are both linear, so they are folded into one
  KxK conv C->1 per note (`logits`), with the 1x1 bias handled through the zero padding.

So the note-independent part ends at the second ReLU (`features`): that is what the
image-feature cache holds, and a new note costs one C->1 KxK convolution.
Features are kept channels-last (B, C, H, W with C innermost in memory); at inference a
note's projection runs along the pixels (`_tap_major`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .bn_folding import batchnorm_affine
from .causal import conv_bn_relu
from .device import autocast_dtype
from .onednn import Linear, applies, mm
from .upconv import (
    SCALE,
    blocks_apply,
    tap_weights,
    upsample_conv3x3,
    upsample_conv3x3_blocks,
    upsample_conv3x3_taps,
)


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN(conv(x)) as one conv: (taps for `upsample_conv3x3_taps`, bias)."""
    scale, shift = batchnorm_affine(conv, bn)
    return tap_weights(conv.weight * scale[:, None, None, None]), shift


def _folded_for_inference(block: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """`_fold_batchnorm`, kept on the block until a weight or statistic changes: the same
    tensor objects (`.to()` makes new ones) at the same versions (in-place updates, e.g.
    an optimiser step or `load_state_dict`, bump them)."""
    conv, bn = block[0], block[1]
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    cached = getattr(block, "_inference_fold", None)
    if cached is None or not all(
        (ref is None and t is None) or (ref is not None and ref() is t and t._version == v)
        for (ref, v), t in zip(cached[0], tensors)
    ):
        key = tuple((None, 0) if t is None else (weakref.ref(t), t._version) for t in tensors)
        cached = (key, *_fold_batchnorm(conv, bn))
        block._inference_fold = cached
    return cached[1], cached[2]


def _up_conv_bn_relu(x: torch.Tensor, block: nn.Sequential) -> torch.Tensor:
    """ReLU(BN(conv3x3(up_x4(x)))) on channels-last (B, h, w, C) -> (B, 4h, 4w, C')."""
    conv, bn, _ = block
    if bn.training or bn.running_mean is None:
        # BN must see the true full-resolution conv output to take batch statistics; its
        # backward needs its input, not its output, so the ReLU runs in place.
        out = upsample_conv3x3(x, conv.weight, conv.bias)
        return F.relu(bn(out.permute(0, 3, 1, 2)), inplace=True).permute(0, 2, 3, 1)
    if torch.is_grad_enabled():
        return upsample_conv3x3_taps(x, *_fold_batchnorm(conv, bn), relu=True)
    return upsample_conv3x3_taps(x, *_folded_for_inference(block), relu=True)


class _PixelProjection(torch.autograd.Function):
    """bias + pixels @ weight^T per sample: (B, P, C) by (B, K, C) -> (B, P, K), K small.

    Its own backward because autograd's weight gradient, pixels^T @ grad, is a batched
    product of a transposed (C, P) view with a K-column matrix, a shape torch's CPU BLAS
    ran ~15x slower (175 ms for 4 x 50,176 pixels x 256 channels x 9 taps) than the same
    numbers as grad^T @ pixels (11 ms). Same sums, other order.
    """

    @staticmethod
    def forward(ctx, bias: torch.Tensor, pixels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # under autocast behave like baddbmm: compute in, and return, its dtype
        dtype = autocast_dtype(pixels.device.type) or pixels.dtype
        ctx.dtypes = (bias.dtype, pixels.dtype, weight.dtype)
        bias, pixels, weight = bias.to(dtype), pixels.to(dtype), weight.to(dtype)
        ctx.save_for_backward(pixels, weight)
        with torch.autocast(pixels.device.type, enabled=False):
            if applies(pixels):  # per sample through oneDNN: ~1.7x baddbmm's speed on the CPU
                out = pixels.new_empty(pixels.shape[:2] + weight.shape[1:2])
                for i in range(len(pixels)):
                    mm(pixels[i], weight[i].T, out=out[i], bias=bias[i])
                return out
            return torch.baddbmm(bias[:, None], pixels, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pixels, weight = ctx.saved_tensors
        grad = grad.to(pixels.dtype)
        needs = ctx.needs_input_grad
        with torch.autocast(pixels.device.type, enabled=False):
            grad_w = None
            if needs[2] and applies(pixels):
                grad_w = torch.stack([mm(g.T.contiguous(), p) for g, p in zip(grad, pixels)])
            elif needs[2]:
                grad_w = torch.bmm(grad.transpose(1, 2), pixels)
            grads = (grad.sum(1) if needs[0] else None,
                     torch.bmm(grad, weight) if needs[1] else None, grad_w)
        return tuple(g.to(d) if g is not None else None for g, d in zip(grads, ctx.dtypes))


class _VisualPath(nn.Sequential):
    """The method's visual path as a parameter container (state-dict keys `visual.N.*`
    stay those of the straightforward nn.Sequential); calling it runs the fast path."""

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """After the first ReLU, (B, 4h, 4w, C) channels-last: the second layer's input."""
        # (B, h, w, C): the restructured convs work channels-last
        return _up_conv_bn_relu(x.permute(0, 2, 3, 1), self[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Note-independent features after the second ReLU: (B, C, 16h, 16w), channels-last."""
        return _up_conv_bn_relu(self.first_layer(x), self[3]).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[4](self.features(x))


class TextConditionedDecoder(nn.Module):
    """S = W_tau * visual(F) + b_tau at input resolution (one logit channel)."""

    def __init__(self, in_dim: int, dim: int, text_dim: int, kernel_size: int = 3):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.upsample = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.visual = _VisualPath(
            self.upsample,
            conv_bn_relu(in_dim, in_dim),
            self.upsample,
            conv_bn_relu(in_dim, dim),
            nn.Conv2d(dim, dim, 1),
        )
        self.text = nn.Linear(text_dim, dim * kernel_size * kernel_size + 1)

    def kernels(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, K, K) kernels and (B,) biases from the text feature."""
        params = self.text(tau)
        k = self.kernel_size
        return params[:, :-1].reshape(-1, self.dim, k, k), params[:, -1]

    def features(self, features: torch.Tensor) -> torch.Tensor:
        """The note-independent part (what an image-feature cache keeps)."""
        return self.visual.features(features)

    def _note_taps(self, tau: torch.Tensor, dtype: torch.dtype):
        """The note's KxK kernel with the 1x1 conv folded in: (n, K*K, C_in) tap weights,
        (n, K*K) tap biases and the (n,) output bias."""
        kernel, bias = self.kernels(tau.to(dtype))
        taps = kernel.flatten(2)  # (n, C, K*K)
        conv1 = self.visual[4]
        folded = torch.einsum("nck,cd->nkd", taps, conv1.weight.flatten(1))  # (n, K*K, C_in)
        # The 1x1 conv's bias is part of its output, which the KxK conv zero-pads: add it
        # per tap before the shift, so the borders see it only where the reference does.
        tap_bias = torch.einsum("nck,c->nk", taps, conv1.bias)
        return folded, tap_bias, bias

    def _shift_sum(self, proj: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(m, K*K, H, W) per-tap maps (any memory layout) -> (m, 1, H, W) logits: each
        tap's map shifted into place (zero padding) and summed, plus the note's bias."""
        m, _, h, w = proj.shape
        k = self.kernel_size
        p = k // 2
        padded = F.pad(proj, (p, p, p, p))
        out = bias.expand(m)[:, None, None]
        for ky in range(k):
            for kx in range(k):
                out = out + padded[:, ky * k + kx, ky : ky + h, kx : kx + w]
        return out[:, None]

    def _tap_major(self, flat: torch.Tensor, folded: torch.Tensor, tap_bias: torch.Tensor,
                   bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inference through oneDNN: each image's tap maps as taps @ pixels^T, (n*K*K, H*W),
        with the pixels as the product's weight operand, so that it runs along the pixels
        (rn101 at 224 px: 51 MB of features in ~2.0 ms, against ~2.8 ms as pixels @ taps^T,
        whose 9 output columns leave most of each vector unit idle)."""
        b, n, kk = flat.shape[0], folded.shape[0], folded.shape[1]
        if b == 1:  # one image, any number of notes: one product
            proj = mm(folded.reshape(n * kk, -1), flat[0].T).view(n, kk, h, w)
        else:  # one note for every image, or a note per image
            proj = flat.new_empty(b, kk, h, w)
            for i in range(b):
                mm(folded[i if n > 1 else 0], flat[i].T, out=proj[i].view(kk, h * w))
        proj += tap_bias[:, :, None, None]  # before the shift: the padding must not see it
        return self._shift_sum(proj, bias)

    def logits(self, pixels: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The note-dependent part: conv1x1 then the per-sample KxK conv, folded into one
        KxK conv C->1 per note. `pixels` from `features`; one note for many images or
        many notes for one image broadcast."""
        b, c, h, w = pixels.shape
        folded, tap_bias, bias = self._note_taps(tau, pixels.dtype)
        n = folded.shape[0]
        if n != b and n != 1 and b != 1:
            raise ValueError(f"{n} notes for {b} images")
        m = max(n, b)
        kk = self.kernel_size**2
        flat = pixels.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when channels-last
        if applies(flat):
            return self._tap_major(flat, folded, tap_bias, bias, h, w)
        # every tap's 1-channel map, (m, H*W, K*K): one GEMM over the features
        if n == 1:  # one note (for one or many images): a plain GEMM (oneDNN's where it applies)
            proj = Linear(folded[0], tap_bias[0])(flat.reshape(b * h * w, c))
            proj = proj.view(b, h * w, kk)
        elif b == 1:  # many notes, one image
            proj = torch.addmm(tap_bias.reshape(-1), flat[0], folded.reshape(n * kk, c).T)
            proj = proj.view(h * w, n, kk).transpose(0, 1)
        else:  # a note per image
            proj = _PixelProjection.apply(tap_bias, flat, folded)
        return self._shift_sum(proj.reshape(m, h, w, kk).permute(0, 3, 1, 2), bias)

    def logits_without_features(self, features: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """`logits(self.features(features), tau)` for one note, without the full-resolution
        features ever held whole: for an image prompted once (a first prompt, a folder
        run). At CPU inference each block of the second upsample-convolution's output is
        projected onto the note's taps as it is made (the same products, so the same
        numbers), so its output (51 MB for rn101 at 224 px) is never written to fresh
        memory: that was ~12,500 page faults, 12 to 90 ms on a 2-core VM, plus a pass
        over it. Elsewhere (GPU, training, several notes) the plain path."""
        bn = self.visual[3][1]
        if (tau.shape[0] != 1 or bn.training or bn.running_mean is None
                or not blocks_apply(features)):
            return self.logits(self.features(features), tau)
        b, _, h, w = features.shape
        y = self.visual.first_layer(features)
        folded, tap_bias, bias = self._note_taps(tau, features.dtype)
        taps = folded[0]
        kk = self.kernel_size**2
        proj = features.new_empty(b, kk, y.shape[1] * SCALE, y.shape[2] * SCALE)

        def consume(image: int, row0: int, row1: int, col0: int, col1: int, block: torch.Tensor) -> None:
            pixels = block.reshape(-1, block.shape[-1])  # tap-major, as `_tap_major` explains
            proj[image, :, row0:row1, col0:col1] = mm(taps, pixels.T).view(kk, row1 - row0, col1 - col0)

        upsample_conv3x3_blocks(y, *_folded_for_inference(self.visual[3]), consume, relu=True)
        proj += tap_bias[:, :, None, None]
        return self._shift_sum(proj, bias)

    def forward(self, features: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(features), tau)
