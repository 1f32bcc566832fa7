"""tau for notes at inference: TextTransformer's numbers, restructured for a CPU.

A note is ~15 tokens, so each of the text tower's 48 GEMMs is a (15 x 512) by (512 x
up to 2048) product. Three exact changes make it cheap:

- the Transformer is causal, so tokens after the last [EOS] never reach tau: only the
  first (EOS index + 1) positions run (TextTransformer.forward does that too);
- in the last block only the [EOS] row is read: it needs every row's key and value, but
  its own query, attention output and MLP only;
- on CPUs with oneDNN the linear layers run through oneDNN's inner product with the
  residual add fused; for these small-M shapes it is ~2x faster than the BLAS behind
  F.linear on some CPUs (measured on AMD EPYC, torch 2.14 with MKL). Elsewhere, and with
  autograd on, plain F.linear.

It reads the model's parameters on every call (no copies), so it follows weight changes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .text_transformer import ResidualAttentionBlock, TextTransformer


@functools.cache
def _onednn_linear():
    """oneDNN's fused linear op if this torch build has a working one, else None."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
        x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
        res = torch.randn(3, 5)
        ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5) and \
            torch.allclose(op.binary(x, res, w, b, "add"), F.linear(x, w, b) + res, atol=1e-5)
        return op if ok else None
    except (AttributeError, RuntimeError):
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) (+ residual), through oneDNN where that applies."""
    op = _onednn_linear() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if op is not None and not (torch.is_grad_enabled() and weight.requires_grad):
        if residual is None:
            return op(x, weight, bias, "none", [], "")
        return op.binary(x, residual, weight, bias, "add")
    out = F.linear(x, weight, bias)
    return out if residual is None else out.add_(residual)


def _layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _mlp(x: torch.Tensor, block: ResidualAttentionBlock) -> torch.Tensor:
    """x + MLP(LN(x)) on rows (..., width)."""
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    h = block.mlp.gelu(linear(_layer_norm(x, block.ln_2), fc.weight, fc.bias))
    return linear(h, proj.weight, proj.bias, residual=x)


def _full_block(x: torch.Tensor, block: ResidualAttentionBlock, b: int, n: int) -> torch.Tensor:
    """One block on (b * n, width) rows, causal attention within each note."""
    attn = block.attn
    width = x.shape[-1]
    heads = attn.heads
    qkv = linear(_layer_norm(x, block.ln_1), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = out.transpose(1, 2).reshape(b * n, width)
    x = linear(out, attn.out_proj.weight, attn.out_proj.bias, residual=x)
    return _mlp(x, block)


def _eos_block(x: torch.Tensor, block: ResidualAttentionBlock, eos: torch.Tensor,
               n: int) -> torch.Tensor:
    """The last block, for the [EOS] rows only: (b * n, width) -> (b, width). [EOS] is
    each note's last token, so its causal attention sees positions 0..eos."""
    attn = block.attn
    width = x.shape[-1]
    heads, b = attn.heads, eos.shape[0]
    rows = torch.arange(b, device=x.device) * n + eos
    h = _layer_norm(x, block.ln_1)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = linear(h[rows], w[:width], bias[:width])
    kv = linear(h, w[width:], bias[width:])
    k, v = kv.view(b, n, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
    q = q.view(b, 1, heads, width // heads).transpose(1, 2)
    # a shorter note in a batch must not see the padding after its own [EOS]
    mask = None if bool((eos == n - 1).all()) else \
        (torch.arange(n, device=x.device) <= eos[:, None])[:, None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(b, width)
    x = linear(out, attn.out_proj.weight, attn.out_proj.bias, residual=x[rows])
    return _mlp(x, block)


def encode_text(text: TextTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """(B, context) token ids -> (B, output_dim) tau, equal to `text(tokens)` up to
    float rounding; notes of different lengths may share a batch."""
    if tokens.shape[1] > text.context_length:
        raise ValueError(f"{tokens.shape[1]} tokens for a context of {text.context_length}")
    b = tokens.shape[0]
    eos = tokens.argmax(dim=-1)  # [EOS] has the highest id
    n = int(eos.max()) + 1
    x = text.token_embedding(tokens[:, :n]) + text.positional_embedding[:n]
    x = x.reshape(b * n, -1)
    blocks = text.transformer.resblocks
    for block in blocks[:-1]:
        x = _full_block(x, block, b, n)
    if len(blocks):
        x = _eos_block(x, blocks[-1], eos, n)
    else:
        x = x[torch.arange(b, device=x.device) * n + eos]
    return _layer_norm(x, text.ln_final) @ text.text_projection
