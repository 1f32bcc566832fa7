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
        return torch.allclose(out, F.conv2d(x, w, b, 2, 1), atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


def packable(conv: nn.Module) -> bool:
    """A float32 CPU nn.Conv2d with numeric zero padding: what PackedConv2d can replace."""
    return (isinstance(conv, nn.Conv2d) and conv.weight.device.type == "cpu"
            and conv.weight.dtype == torch.float32 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


class PackedConv2d(nn.Module):
    """An nn.Conv2d's computation with the weight in oneDNN's layout (float32, CPU,
    inference only: there is no PyTorch-layout weight left to differentiate)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise RuntimeError(f"a packed convolution runs float32 on the CPU, got {x.dtype} on {x.device}")
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "none", [], "",
        )

    def extra_repr(self) -> str:
        return f"{self.shape}, stride={self.stride}, padding={self.padding}"


def pack_convolutions_(
    module: nn.Module,
    run: Callable[[], object],
    release: Callable[[torch.Tensor], None] = lambda w: None,
) -> int:
    """Replace every float32 CPU nn.Conv2d under `module` by a PackedConv2d, in place;
    returns how many. `run()` runs the module once at the input size it will see (the
    packing is chosen for that size; other sizes still compute correctly). `release(w)`
    gets each replaced weight."""
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
    for conv, name in convs.items():
        if conv not in sizes:
            continue  # not on the path that runs: left as it is
        parent_name, _, attr = name.rpartition(".")
        setattr(parents[parent_name], attr, PackedConv2d(conv, sizes[conv]))
        release(conv.weight)
    return len(sizes)
