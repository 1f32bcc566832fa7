"""CLIP's two towers as CausalCLIPSeg uses them.

The vision tower is CLIP's modified ResNet whose attention pool is replaced by a dense
version: the same pretrained q/k/v/c projections and positional embedding, but every
/32 position is kept (no pooled token), plus a new residual branch. The text tower is
CLIP's text Transformer, so tau is exactly CLIP's `encode_text`. Both are this
package's own modules with open_clip's parameter names (see resnet.py and
text_transformer.py for why not open_clip's classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .onednn import Linear, _onednn_linear, linear
from .resnet import ModifiedResNet
from .text_transformer import TextTransformer


class DenseAttentionPool(nn.Module):
    """CLIP's attention pool applied at every position, with a conv+BN shortcut.

    Parameter names match open_clip's AttentionPool2d so pretrained weights load
    unchanged; only `connect` is new.
    """

    def __init__(self, grid: int, in_dim: int, heads: int, out_dim: int):
        super().__init__()
        self.grid = grid
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, in_dim))
        if not self.positional_embedding.is_meta:  # see TextTransformer.reset_parameters
            nn.init.normal_(self.positional_embedding, std=in_dim**-0.5)
        self.k_proj = nn.Linear(in_dim, in_dim)
        self.q_proj = nn.Linear(in_dim, in_dim)
        self.v_proj = nn.Linear(in_dim, in_dim)
        self.c_proj = nn.Linear(in_dim, out_dim)
        self.connect = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim)
        )
        self.packed: tuple[Linear, Linear] | None = None  # (q|k|v, c): see pack_projections_

    def pack_projections_(self, release: Callable[[torch.Tensor], None] = lambda w: None) -> bool:
        """For inference on the CPU (a snapshot: later weight changes are not seen): q, k
        and v as one product and c_proj, with their weights packed once into oneDNN's
        layout (rn101 at 224 px: ~1.3 of the pool's ~5.5 ms). `release(w)` gets each source
        weight once packed. False, and nothing changes, where oneDNN's op is missing or the
        weights are not float32 on the CPU."""
        projections = (self.q_proj, self.k_proj, self.v_proj, self.c_proj)
        weights = [p.weight for p in projections]
        if _onednn_linear() is None or any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
            return False
        pack = torch.ops.mkldnn._reorder_linear_weight
        with torch.no_grad():
            qkv = Linear(pack(torch.cat(weights[:3])), torch.cat([p.bias for p in projections[:3]]))
            self.packed = (qkv, Linear(pack(weights[3].detach()), self.c_proj.bias.detach().clone()))
        for w in weights:
            release(w)
        return True

    def spatial_positions(self, h: int, w: int) -> torch.Tensor:
        """Pretrained positions without the pooled token, resized for non-224 inputs."""
        pos = self.positional_embedding[1:]
        if (h, w) == (self.grid, self.grid):
            return pos
        grid = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.packed is not None and (x.device.type != "cpu" or x.dtype != torch.float32):
            raise RuntimeError(f"packed projections run float32 on the CPU, got {x.dtype} on {x.device}")
        shortcut = self.connect(x)
        tokens = x.flatten(2).transpose(1, 2) + self.spatial_positions(h, w).to(x.dtype)
        if self.packed is None:
            q, k, v = linear(tokens, self.q_proj), linear(tokens, self.k_proj), linear(tokens, self.v_proj)
            split = lambda t: t.reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
        else:
            qkv = self.packed[0](tokens.reshape(b * h * w, c))
            q, k, v = qkv.view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        if self.packed is None:
            attended = linear(attended, self.c_proj)
        else:
            attended = self.packed[1](attended.reshape(b * h * w, c)).view(b, h * w, -1)
        dense = attended.transpose(1, 2).reshape(b, -1, h, w)
        return F.relu(dense + shortcut)


class VisionEncoder(nn.Module):
    """ModifiedResNet returning layer2 (/8), layer3 (/16) and the dense pool (/32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        self.backbone = ModifiedResNet(layers=v.layers, width=v.width)
        # CLIP's pooled attention head as a dense one (same parameter names).
        self.backbone.attnpool = DenseAttentionPool(
            grid=v.image_size // 32,
            in_dim=v.stage_channels[2],
            heads=v.attn_heads,
            out_dim=cfg.embed_dim,
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.backbone
        x = net.stem(image.to(net.conv1.weight.dtype))
        x = net.layer1(x)
        c2 = net.layer2(x)
        c3 = net.layer3(c2)
        c4 = net.attnpool(net.layer4(c3))
        return c2, c3, c4


class TextEncoder(nn.Module):
    """CLIP text Transformer: tau is the projected top-layer activation at [EOS]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        t = cfg.text
        self.transformer = TextTransformer(
            context_length=t.context_length,
            vocab_size=t.vocab_size,
            width=t.width,
            heads=t.heads,
            layers=t.layers,
            output_dim=cfg.embed_dim,
            quick_gelu=cfg.quick_gelu,
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)
