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
  plain F.linear;
- a packed tower applies the MLP's activation in the same oneDNN pass as its first
  linear layer (`FusedActivation`): QuickGELU, x * sigmoid(1.702 x), is oneDNN's swish,
  y * sigmoid(y), of y = 1.702 x divided by 1.702, so 1.702 goes into that layer's weight
  and bias and 1 / 1.702 into the next one's weight. Three elementwise passes fewer per block:
  ~0.2 ms of a new note's ~7 ms for rn101 (alternating both in one process).

`encode_text` reads the model's parameters on every call, so it follows weight changes;
a `PackedTextTower` is a snapshot, for a model that no longer changes (a Segmenter's own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .onednn import Linear, _onednn_linear
from .text_transformer import QuickGELU, ResidualAttentionBlock, TextTransformer

QUICK_GELU_SCALE = 1.702  # QuickGELU(x) = swish(1.702 x) / 1.702


class Block(NamedTuple):
    """One residual block's weights; `qkv` for a full block, `q` and `kv` for the last."""

    ln_1: nn.LayerNorm
    ln_2: nn.LayerNorm
    qkv: Linear | None
    q: Linear | None
    kv: Linear | None
    out: Linear
    fc: Linear | FusedActivation
    proj: Linear
    gelu: Callable[[torch.Tensor], torch.Tensor]  # the identity where `fc` applies it
    heads: int


class FusedActivation(NamedTuple):
    """A linear layer with packed weights and its activation in one oneDNN pass: `attr`
    "swish" (x * sigmoid(x)) or "gelu" with `algorithm` "none" (erf) or "tanh"."""

    weight: torch.Tensor
    bias: torch.Tensor
    attr: str
    algorithm: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _onednn_linear()(x, self.weight, self.bias, self.attr, [], self.algorithm)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def fused_mlp_input(gelu: nn.Module) -> tuple[str, str, float] | None:
    """(oneDNN attr, algorithm, scale of the first layer) that computes `gelu` in that
    layer's pass, or None: the activation then runs on its own."""
    if isinstance(gelu, QuickGELU) and _fusion_works("swish", ""):
        return "swish", "", QUICK_GELU_SCALE
    if isinstance(gelu, nn.GELU) and gelu.approximate in ("none", "tanh") and _fusion_works("gelu", gelu.approximate):
        return "gelu", gelu.approximate, 1.0
    return None


@functools.cache
def _fusion_works(attr: str, algorithm: str) -> bool:
    """Whether this torch build's oneDNN linear applies `attr` as expected (checked once)."""
    op = _onednn_linear()
    if op is None:
        return False
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    y = F.linear(x, w, b)
    want = y * torch.sigmoid(y) if attr == "swish" else F.gelu(y, approximate=algorithm)
    try:
        with torch.no_grad():
            got = op(x, torch.ops.mkldnn._reorder_linear_weight(w), b, attr, [], algorithm)
    except RuntimeError:
        return False
    return torch.allclose(got, want, atol=1e-5)


def block_weights(block: ResidualAttentionBlock, last: bool,
                  pack: Callable[..., torch.Tensor] | None = None) -> Block:
    """The block's weights as they are, or through `pack(weight, scale=1.0)` (oneDNN's
    layout: the activation is then fused into the MLP's first layer where it can be)."""
    attn, mlp = block.attn, block.mlp
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width = w.shape[1]
    put = pack or (lambda weight, scale=1.0: weight)
    qkv = q = kv = None
    if last:
        q, kv = Linear(put(w[:width]), b[:width]), Linear(put(w[width:]), b[width:])
    else:
        qkv = Linear(put(w), b)
    out = Linear(put(attn.out_proj.weight), attn.out_proj.bias)
    fused = fused_mlp_input(mlp.gelu) if pack is not None else None
    if fused is None:
        fc, proj = Linear(put(mlp.c_fc.weight), mlp.c_fc.bias), Linear(put(mlp.c_proj.weight), mlp.c_proj.bias)
        gelu = mlp.gelu
    else:
        attr, algorithm, scale = fused
        with torch.no_grad():
            fc = FusedActivation(put(mlp.c_fc.weight, scale), mlp.c_fc.bias.detach() * scale, attr, algorithm)
            proj = Linear(put(mlp.c_proj.weight, 1 / scale), mlp.c_proj.bias)
        gelu = _identity
    return Block(block.ln_1, block.ln_2, qkv, q, kv, out, fc, proj, gelu, attn.heads)


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

        def pack(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            source = w.detach() if scale == 1.0 else w.detach() * scale
            packed = torch.ops.mkldnn._reorder_linear_weight(source)
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
