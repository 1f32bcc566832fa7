"""The image side's convolutions with their weights packed once for oneDNN (CPU inference).

Why: torch's conv2d hands oneDNN the weight in PyTorch's layout on every call, and oneDNN
reorders it into its own blocked layout each time. For the ~130 convolutions of the CLIP
trunk and the causal intervention at batch 1 that reorder (and the layout changes of the
activations between calls) was about a quarter of the image tower's time (a layer3-like
stack of 23 bottlenecks on a 2-core AMD EPYC: 33 -> 24 ms). Packed once, with
`torch.ops.mkldnn._reorder_convolution_weight` for the input size the model sees, and run
with `torch.ops.mkldnn._convolution_pointwise`: the ops torch's own compiler uses on the
CPU. Same numbers up to float rounding (~1e-6 relative).

Only for a model that is inference-only and already has its BatchNorms folded
(bn_folding.py): the packed copy replaces the module, and `release` is called on the old
weight so that a Segmenter can drop its file pages (the copy takes their place in memory).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .causal import CoordConv, coordinates
from .resnet import Bottleneck


@functools.cache
def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed convolution ops, and they compute
    what conv2d computes (checked once on a small case)."""
    try:
        ops = torch.ops.mkldnn
        if not torch.backends.mkldnn.is_available():
            return False
        x, w, b = torch.randn(1, 4, 6, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
        packed = ops._reorder_convolution_weight(w, [1, 1], [2, 2], [1, 1], 1, list(x.shape))
        out = ops._convolution_pointwise(x, packed, b, [1, 1], [2, 2], [1, 1], 1, "none", [], "")
        other = torch.randn_like(out)  # the fused residual add and ReLU of PackedBottleneck
        fused = ops._convolution_pointwise.binary(
            x, other, packed, b, [1, 1], [2, 2], [1, 1], 1, "add", 1.0, "relu", [], "")
        return torch.allclose(out, F.conv2d(x, w, b, 2, 1), atol=1e-5) and \
            torch.allclose(fused, (out + other).relu(), atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


def packable(conv: nn.Module) -> bool:
    """A float32 CPU nn.Conv2d with numeric zero padding: what PackedConv2d can replace."""
    return (isinstance(conv, nn.Conv2d) and conv.weight.device.type == "cpu"
            and conv.weight.dtype == torch.float32 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


class PackedConv2d(nn.Module):
    """An nn.Conv2d's computation with the weight in oneDNN's layout (float32, CPU,
    inference only: there is no PyTorch-layout weight left to differentiate). With `relu`
    set (`fuse_relus_` does) it is ReLU(conv(x) + add) in one pass over its output."""

    relu = False

    def __init__(self, conv: nn.Conv2d, input_size: list[int]):
        super().__init__()
        if not packable(conv):
            raise ValueError(f"cannot pack {conv}: only float32 CPU convolutions with numeric zero padding")
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.shape = tuple(conv.weight.shape)
        with torch.no_grad():
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(), self.padding, self.stride, self.dilation, self.groups, input_size
            )
            self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """conv(x), plus `add` (a tensor of the output's shape) if given, ReLU'd if `relu`."""
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise RuntimeError(f"a packed convolution runs float32 on the CPU, got {x.dtype} on {x.device}")
        conv = (self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *conv, "relu" if self.relu else "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, add, *conv, "add", 1.0, "relu" if self.relu else None, [], "")

    def extra_repr(self) -> str:
        return f"{self.shape}, stride={self.stride}, padding={self.padding}" + (", relu" if self.relu else "")


class PackedBottleneck(nn.Module):
    """A Bottleneck whose convolutions are packed and BatchNorms folded, with its three
    ReLUs and the residual add fused into the convolutions: no separate passes over the
    activations (rn101's tower at batch 1: ~2 ms of ~55). Same numbers."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3
        for conv in (self.conv1, self.conv2, self.conv3):
            conv.relu = True
        self.avgpool, self.downsample = block.avgpool, block.downsample

    @staticmethod
    def fusable(block: nn.Module) -> bool:
        return isinstance(block, Bottleneck) and all(
            isinstance(getattr(block, f"conv{i}"), PackedConv2d)
            and isinstance(getattr(block, f"bn{i}"), nn.Identity) for i in (1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.conv2(self.conv1(x)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3(out, add=shortcut)  # ReLU(conv3(out) + shortcut)


class PackedCoordConv(nn.Module):
    """A CoordConv (causal.py) with its BatchNorm folded, packed: conv(cat(x, coords)) is
    conv_x(x) + conv_c(coords), and the second is a fixed map per input size, made once
    and added in the same oneDNN pass as the bias and the ReLU. So the (C+2)-channel
    concatenation is never made (rn101's maskers: ~0.15 ms of ~2 ms per CoordConv)."""

    def __init__(self, coord: CoordConv, input_size: list[int]):
        super().__init__()
        if not self.packable(coord):
            raise ValueError(f"cannot pack {coord}: needs a folded BatchNorm and a float32 CPU convolution")
        conv = coord.conv[0]
        # the feature channels' convolution, holding the slice of the weight (on "meta" first:
        # a random initialisation would cost ~14 ms per rn101 CoordConv, only to be replaced)
        features = nn.Conv2d(conv.in_channels - 2, conv.out_channels, conv.kernel_size,
                             conv.stride, conv.padding, bias=False, device="meta")
        features.weight = nn.Parameter(conv.weight[:, :-2].detach().contiguous(), requires_grad=False)
        features.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.coord_weight = conv.weight[:, -2:].detach().clone()
        self.conv = PackedConv2d(features, [input_size[0], input_size[1] - 2, *input_size[2:]])
        self.conv.relu = True
        self.stride, self.padding = conv.stride, conv.padding
        self.maps: dict[tuple[int, int], torch.Tensor] = {}  # the coordinates' share per (h, w)

    @staticmethod
    def packable(coord: nn.Module) -> bool:
        return (isinstance(coord, CoordConv) and packable(coord.conv[0])
                and isinstance(coord.conv[1], nn.Identity) and isinstance(coord.conv[2], nn.ReLU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        share = self.maps.get((h, w))
        if share is None:
            share = F.conv2d(coordinates(h, w, x), self.coord_weight, None, self.stride, self.padding)
            share = self.maps[(h, w)] = share.contiguous(memory_format=torch.channels_last)
        return self.conv(x, add=share.expand(b, -1, -1, -1).contiguous(memory_format=torch.channels_last)
                         if b > 1 else share)


def fuse_relus_(module: nn.Module) -> int:
    """Fold ReLUs into the packed convolutions before them, in place; returns how many:
    a ReLU after a PackedConv2d in an nn.Sequential (nn.Identity between them, a folded
    BatchNorm, is skipped) and the ReLUs and residual add of every packed Bottleneck."""
    fused = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if PackedBottleneck.fusable(child):
                setattr(parent, name, PackedBottleneck(child))
                fused += 3
        if isinstance(parent, nn.Sequential):
            conv = None
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU) and conv is not None:
                    conv.relu = True
                    parent._modules[name] = nn.Identity()
                    fused += 1
                if not isinstance(child, nn.Identity):
                    conv = child if isinstance(child, PackedConv2d) and not child.relu else None
    return fused


def _let_go(conv: nn.Conv2d, release: Callable[[torch.Tensor], None]) -> None:
    """Hand a replaced convolution's weight to `release` and drop it from the module now,
    not when packing ends: a weight in the process's own memory (BatchNorm folded into a
    copy, bn_folding.py) is freed before the next is packed, so the old and packed copies
    of the whole image side are never resident at once."""
    release(conv.weight)
    conv.register_parameter("weight", None)


def pack_convolutions_(
    module: nn.Module,
    run: Callable[[], object],
    release: Callable[[torch.Tensor], None] = lambda w: None,
) -> int:
    """Replace every float32 CPU nn.Conv2d under `module` by a PackedConv2d (a CoordConv
    with its BatchNorm folded by a PackedCoordConv), in place; returns how many
    convolutions. `run()` runs the module once at the input size it will see (the
    packing is chosen for that size; other sizes still compute correctly). `release(w)`
    gets each replaced weight, which the replaced module then lets go of."""
    if not packing_available():
        return 0
    convs = {conv: name for name, conv in module.named_modules() if packable(conv)}
    sizes: dict[nn.Conv2d, list[int]] = {}

    def record(conv: nn.Module, args: tuple) -> None:  # None: the input goes on unchanged
        sizes.setdefault(conv, list(args[0].shape))

    hooks = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    parents = dict(module.named_modules())
    for name, coord in list(parents.items()):
        if PackedCoordConv.packable(coord) and coord.conv[0] in sizes:
            parent_name, _, attr = name.rpartition(".")
            setattr(parents[parent_name], attr, PackedCoordConv(coord, sizes[coord.conv[0]]))
            _let_go(coord.conv[0], release)
            del convs[coord.conv[0]]
    for conv, name in convs.items():
        if conv not in sizes:
            continue  # not on the path that runs: left as it is
        parent_name, _, attr = name.rpartition(".")
        setattr(parents[parent_name], attr, PackedConv2d(conv, sizes[conv]))
        _let_go(conv, release)
    fuse_relus_(module)
    return len(sizes)
