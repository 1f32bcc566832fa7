"""CLIP's text Transformer: causal self-attention over the note, tau read at [EOS].

Pre-LayerNorm residual blocks (attention, then a 4x MLP with QuickGELU for OpenAI's
weights), a final LayerNorm, and a linear projection of the [EOS] position (the
highest token id in each row) into the joint space. Parameter names follow open_clip's
`TextTransformer` so OpenAI/open_clip weights and earlier checkpoints load unchanged;
the tests check keys and tau against open_clip's `encode_text`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .onednn import Linear, linear


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each token sees itself and the tokens before it.

    One fused q/k/v projection (`in_proj_*`, as in torch's MultiheadAttention, whose
    names CLIP's weights use) and an output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        qkv = Linear(self.in_proj_weight, self.in_proj_bias)(x)  # oneDNN's product on the CPU
        q, k, v = qkv.view(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return linear(out.transpose(1, 2).reshape(b, n, width), self.out_proj)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        mlp = self.mlp  # a container (state-dict names); its linears run through oneDNN
        return x + linear(mlp.gelu(linear(self.ln_2(x), mlp.c_fc)), mlp.c_proj)


class Transformer(nn.Module):
    """The block stack (a container, so state-dict keys read `transformer.resblocks.N`)."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class TextTransformer(nn.Module):
    """(B, context) token ids -> (B, output_dim) tau."""

    def __init__(
        self, context_length: int, vocab_size: int, width: int, heads: int, layers: int,
        output_dim: int, quick_gelu: bool = True,
    ):
        super().__init__()
        self.context_length = context_length
        # initialised below with the rest (nn.Embedding's own init would run twice)
        self.token_embedding = nn.Embedding(vocab_size, width, _weight=torch.empty(vocab_size, width))
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialisation (used when no CLIP weights are loaded)."""
        if self.positional_embedding.is_meta:
            # A shapes-only model whose weights come from a file. (normal_ on the meta
            # device would import torch's Python decompositions: ~150 MB and ~1 s.)
            return
        width, layers = self.positional_embedding.shape[1], len(self.transformer.resblocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens for a context of {self.context_length}")
        eos = tokens.argmax(dim=-1)  # [EOS] has the highest id
        # Attention is causal, so nothing after the last [EOS] can reach tau: drop the padding.
        n = int(eos.max()) + 1
        x = self.token_embedding(tokens[:, :n]) + self.positional_embedding[:n]
        x = self.transformer(x)[torch.arange(x.shape[0], device=x.device), eos]
        return self.ln_final(x) @ self.text_projection
