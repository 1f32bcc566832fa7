"""tau for notes at inference: TextTransformer's numbers, restructured for a CPU.

A note is ~15 tokens, so each of the text tower's 48 GEMMs is a (15 x 512) by (512 x
up to 2048) product. Exact changes make it cheap:

- the Transformer is causal, so tokens after the last [EOS] never reach tau: only the
  first (EOS index + 1) positions run (TextTransformer.forward does that too);
- in the last block only the [EOS] row is read: it needs every row's key and value, but
  its own query, attention output and MLP only;
- on CPUs with oneDNN the linear layers run through oneDNN's inner product with the
  residual add fused. For these small-M shapes it is ~2x faster than the BLAS behind
  F.linear on some CPUs (measured on AMD EPYC, torch 2.14 with MKL), and ~3.5x with the
  weights packed once into oneDNN's blocked layout (`PackedTextTower`), which also spares
  the per-call repacking its transient 1-4 MB buffers. Elsewhere, and with autograd on,
  plain F.linear.

`encode_text` reads the model's parameters on every call, so it follows weight changes;
a `PackedTextTower` is a snapshot, for a model that no longer changes (a Segmenter's own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .onednn import Linear, _onednn_linear
from .text_transformer import ResidualAttentionBlock, TextTransformer


class Block(NamedTuple):
    """One residual block's weights; `qkv` for a full block, `q` and `kv` for the last."""

    ln_1: nn.LayerNorm
    ln_2: nn.LayerNorm
    qkv: Linear | None
    q: Linear | None
    kv: Linear | None
    out: Linear
    fc: Linear
    proj: Linear
    gelu: nn.Module
    heads: int


def block_weights(block: ResidualAttentionBlock, last: bool,
                  pack: Callable[[torch.Tensor], torch.Tensor] = lambda w: w) -> Block:
    attn, mlp = block.attn, block.mlp
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width = w.shape[1]
    qkv = q = kv = None
    if last:
        q, kv = Linear(pack(w[:width]), b[:width]), Linear(pack(w[width:]), b[width:])
    else:
        qkv = Linear(pack(w), b)
    return Block(block.ln_1, block.ln_2, qkv, q, kv, Linear(pack(attn.out_proj.weight), attn.out_proj.bias),
                 Linear(pack(mlp.c_fc.weight), mlp.c_fc.bias), Linear(pack(mlp.c_proj.weight), mlp.c_proj.bias),
                 mlp.gelu, attn.heads)


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _mlp(x: torch.Tensor, block: Block) -> torch.Tensor:
    """x + MLP(LN(x)) on rows (..., width)."""
    return block.proj(block.gelu(block.fc(_layer_norm(x, block.ln_2))), residual=x)


def _full_block(x: torch.Tensor, block: Block, b: int, n: int) -> torch.Tensor:
    """One block on (b * n, width) rows, causal attention within each note."""
    width, heads = x.shape[-1], block.heads
    qkv = block.qkv(_layer_norm(x, block.ln_1))
    q, k, v = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = block.out(out.transpose(1, 2).reshape(b * n, width), residual=x)
    return _mlp(x, block)


def _eos_block(x: torch.Tensor, block: Block, eos: torch.Tensor, n: int) -> torch.Tensor:
    """The last block, for the [EOS] rows only: (b * n, width) -> (b, width). [EOS] is
    each note's last token, so its causal attention sees positions 0..eos."""
    width, heads, b = x.shape[-1], block.heads, eos.shape[0]
    rows = torch.arange(b, device=x.device) * n + eos
    h = _layer_norm(x, block.ln_1)
    q = block.q(h[rows]).view(b, 1, heads, width // heads).transpose(1, 2)
    k, v = block.kv(h).view(b, n, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
    # a shorter note in a batch must not see the padding after its own [EOS]
    mask = None if bool((eos == n - 1).all()) else \
        (torch.arange(n, device=x.device) <= eos[:, None])[:, None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(b, width)
    return _mlp(block.out(out, residual=x[rows]), block)


def encode_text(text: TextTransformer, tokens: torch.Tensor, blocks: list[Block] | None = None) -> torch.Tensor:
    """(B, context) token ids -> (B, output_dim) tau, equal to `text(tokens)` up to
    float rounding; notes of different lengths may share a batch. `blocks`: the blocks'
    weights in another form (PackedTextTower); by default the live parameters."""
    if tokens.shape[1] > text.context_length:
        raise ValueError(f"{tokens.shape[1]} tokens for a context of {text.context_length}")
    resblocks = text.transformer.resblocks
    if blocks is None:
        blocks = [block_weights(blk, i == len(resblocks) - 1) for i, blk in enumerate(resblocks)]
    b = tokens.shape[0]
    eos = tokens.argmax(dim=-1)  # [EOS] has the highest id
    n = int(eos.max()) + 1
    x = text.token_embedding(tokens[:, :n]) + text.positional_embedding[:n]
    x = x.reshape(b * n, -1)
    for block in blocks[:-1]:
        x = _full_block(x, block, b, n)
    if blocks:
        x = _eos_block(x, blocks[-1], eos, n)
    else:
        x = x[torch.arange(b, device=x.device) * n + eos]
    return _layer_norm(x, text.ln_final) @ text.text_projection


class PackedTextTower:
    """`encode_text` with the linear weights packed once into oneDNN's layout (a copy:
    ~150 MB for RN101's text tower). For a model whose weights no longer change.
    `release(weight)` is called on each source weight once packed (a Segmenter drops the
    weight's file pages from its memory map, so that the copy does not add to its RSS)."""

    def __init__(self, text: TextTransformer, release: Callable[[torch.Tensor], None] = lambda w: None):
        self.text = text

        def pack(w: torch.Tensor) -> torch.Tensor:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach())
            release(w)
            return packed

        resblocks = text.transformer.resblocks
        with torch.no_grad():
            self.blocks = [block_weights(blk, i == len(resblocks) - 1, pack) for i, blk in enumerate(resblocks)]

    @staticmethod
    def available(text: TextTransformer) -> bool:
        p = text.positional_embedding
        return p.device.type == "cpu" and p.dtype == torch.float32 and _onednn_linear() is not None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_text(self.text, tokens, self.blocks)
