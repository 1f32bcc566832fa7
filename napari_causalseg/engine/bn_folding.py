"""BatchNorm folded into the convolution before it, for an inference-only model.

In eval mode BN(conv(x)) is conv(x) with the weight scaled per output channel and a
bias added, so each of the ~110 BatchNorms of the image side (CLIP trunk, dense-pool
shortcut, causal intervention) costs a full pass over its activations for nothing.
Folding is exact up to float rounding.

In place by default: a folded copy would hold the weights twice. Out of place where the
caller passes `release` (a Segmenter whose weights are copy-on-write views of the
checkpoint file, and which packs the folded convolutions at once, freeing the copies):
writing a mapped page copies it on a page fault of its own, ~1 s for
rn101's image side on a 2-core VM, where a fresh scaled copy took ~0.1 s; `release(old)`
then drops the file pages the copy replaces. The decoders are left alone: they fold
their own BN (decoder.py), cached and invalidated when weights change.

A fused model cannot train (its BatchNorms are gone) and cannot be saved as a
checkpoint (its state dict is not a CausalCLIPSeg's); both are refused with an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .resnet import Bottleneck, ModifiedResNet

if TYPE_CHECKING:
    from .model import CausalCLIPSeg


Release = Callable[[torch.Tensor], None]


class FusedModelError(RuntimeError):
    """A model whose BatchNorms were folded for inference was asked to train or be saved."""


def batchnorm_affine(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (scale, shift) with eval-mode BN(conv(x)) equal to
    conv_without_bias(x) * scale + shift: scale the weight, and shift is the new bias."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return scale, shift


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, release: Release | None) -> None:
    scale, shift = batchnorm_affine(conv, bn)
    if release is None:  # see the module docstring
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    else:
        old = conv.weight
        conv.weight = nn.Parameter(old * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        release(old)
    conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fold_batchnorm_(module: nn.Module, release: Release | None = None) -> int:
    """Fold every Conv2d -> BatchNorm2d pair under `module`; returns how many. The weight
    is scaled in place, or with `release` into a new tensor, `release(old weight)` after.

    Pairs are adjacent entries of an nn.Sequential, and the conv_i/bn_i attributes of
    CLIP's trunk and its Bottlenecks. The BN is replaced by nn.Identity.
    """
    folded = 0
    with torch.no_grad():
        for parent in list(module.modules()):
            if isinstance(parent, nn.Sequential):
                names = list(parent._modules)
                for a, b in zip(names, names[1:]):
                    if _foldable(parent._modules[a], parent._modules[b]):
                        _fold(parent._modules[a], parent._modules[b], release)
                        parent._modules[b] = nn.Identity()
                        folded += 1
            elif isinstance(parent, (Bottleneck, ModifiedResNet)):
                for i in (1, 2, 3):
                    conv, bn = getattr(parent, f"conv{i}"), getattr(parent, f"bn{i}")
                    if _foldable(conv, bn):
                        _fold(conv, bn, release)
                        setattr(parent, f"bn{i}", nn.Identity())
                        folded += 1
    return folded


def fuse_for_inference_(model: CausalCLIPSeg, release: Release | None = None) -> CausalCLIPSeg:
    """Fold the image side's BatchNorms of a CausalCLIPSeg (`fold_batchnorm_`) and mark it
    inference-only (`CausalCLIPSeg.train()` then raises instead of training without BN)."""
    if model.fused_for_inference:
        return model
    model.eval()
    for part in (model.vision, model.intervention):
        fold_batchnorm_(part, release)
    model.fused_for_inference = True
    return model
