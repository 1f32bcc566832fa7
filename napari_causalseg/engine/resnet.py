"""CLIP's modified ResNet trunk (the RN50/RN101 image tower without its pooling head).

Differences from a torchvision ResNet, as OpenAI built it: a three-conv stem with an
average pool instead of a max pool, and "anti-aliased" strides (an average pool before
the stride-1 conv instead of a strided conv, in the main branch and in the shortcut).
Parameter names follow open_clip's `ModifiedResNet` so OpenAI/open_clip weights and
earlier checkpoints load unchanged; the tests check keys and outputs against open_clip.
The pooling head (CausalCLIPSeg's dense attention pool) is attached by encoders.py as
`attnpool`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg pool when strided) -> 1x1 x4, plus a shortcut."""

    expansion = 4

    def __init__(self, in_dim: int, planes: int, stride: int = 1):
        super().__init__()
        out_dim = planes * self.expansion
        self.conv1 = nn.Conv2d(in_dim, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_dim)
        self.downsample = None
        if stride > 1 or in_dim != out_dim:
            # key "-1" holds no parameters; "0"/"1" are the keys CLIP's weights use
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(in_dim, out_dim, 1, bias=False)),
                ("1", nn.BatchNorm2d(out_dim)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ModifiedResNet(nn.Module):
    """Stem and four Bottleneck stages; `stem` and `layer1..4` are called one by one."""

    def __init__(self, layers: tuple[int, int, int, int], width: int = 64):
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        dims = [width]
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(dims[-1], planes, stride=1 if i == 0 else 2)]
            stage += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            dims.append(planes * 4)
        # CLIP's init: each residual branch starts as zero, so every block starts as identity
        for name, param in self.named_parameters():
            if name.endswith("bn3.weight") and name.startswith("layer"):
                nn.init.zeros_(param)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)
