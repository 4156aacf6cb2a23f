"""ZAYA1 attention: CCA projections, q/k norm, partial RoPE, attention over the compressed cache."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from zaya_vl.lm.cca import CCAProjection, QKNorm
from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.layers import apply_rotary
from zaya_vl.lora.gated import GatedLoRA


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float,
    implementation: str = "sdpa",
    dropout: float = 0.0,
    block_mask=None,
) -> torch.Tensor:
    """query (b, heads, q, d); key/value (b, kv_heads, k, d); boolean ``mask`` from ``build_attention_mask``.

    ``mask=None`` means causal when q == k and unrestricted otherwise (one decode step). With
    ``implementation="flex_attention"`` a prefill uses FlexAttention on ``block_mask`` (the same mask, from
    ``to_block_mask``); single-token decode steps take SDPA, which needs no block mask.
    """
    if implementation == "flex_attention" and block_mask is not None:
        return _flex_attention(query.device)(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=True)
    is_causal = mask is None and query.shape[2] == key.shape[2] and query.shape[2] > 1
    if implementation == "eager":
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3)) * scale
        if is_causal:
            mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        probs = F.dropout(probs, p=dropout, training=dropout > 0)
        return torch.matmul(probs, value)
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    if rows == 1 and heads != kv_heads and (mask is None or mask.shape[1] == mask.shape[2] == 1):
        # One query row (a decode step): each KV head's group of query heads becomes that head's query rows, so no
        # key or value is repeated per query head (inductor lowers ``enable_gqa`` by copying K and V: ~1.5x the
        # attention's time at batch 8). Heads are grouped as ``enable_gqa`` groups them: head h reads h // group.
        out = F.scaled_dot_product_attention(query.view(batch, kv_heads, heads // kv_heads, dim), key, value,
                                             attn_mask=mask, dropout_p=dropout, scale=scale)
        return out.view(batch, heads, 1, dim)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale, enable_gqa=True
    )


def _flex_attention(device: torch.device):
    """FlexAttention, compiled on GPU (its fast path); on CPU the eager reference runs (tests only)."""
    from torch.nn.attention.flex_attention import flex_attention

    return compiled_flex_attention() if device.type == "cuda" else flex_attention


@functools.cache
def compiled_flex_attention(backend: str = "inductor"):
    """``flex_attention`` compiled once for every sequence length: shapes are dynamic, so a new prompt length
    reuses the kernel instead of compiling another (a prompt of a single 128-token block, where sizes of 1 are
    specialised, adds one more). Duck sizing is off while it traces: otherwise a block count that happens to
    equal the batch size or head count is tied to it, and the next length recompiles."""
    from torch.fx.experimental import _config as fx_config
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=True, backend=backend)

    def call(*args, **kwargs):
        with fx_config.patch(use_duck_shape=False):
            return compiled(*args, **kwargs)

    return call


class ZayaAttention(nn.Module):
    def __init__(self, config: ZayaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.head_dim, self.num_heads = config.head_dim, config.num_attention_heads
        self.qkv_proj = CCAProjection(config, layer_idx)
        self.qk_norm = QKNorm(config)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size,
                                bias=config.attention_bias)
        rank = config.vision_lora_rank_attn
        self.vision_adapters = nn.ModuleDict(
            {"o": GatedLoRA(self.o_proj.in_features, self.o_proj.out_features, rank)}
        ) if rank > 0 else None

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        batch, seq, _ = x.shape
        cache = ctx.cache
        heads, value = self.qkv_proj(x, ctx)
        # Norm and rotate the query and key heads together (one pass each), then split them as views.
        heads = apply_rotary(self.qk_norm(heads), ctx.rotary[self.layer_type]).transpose(1, 2)
        query, key = heads[:, : self.num_heads], heads[:, self.num_heads:]
        value = value.transpose(1, 2)
        if cache is not None:
            key, value = cache.update(self.layer_idx, key.to(cache.dtype), value.to(cache.dtype), ctx.cache_positions)
            key, value = key.to(query.dtype), value.to(query.dtype)
        out = attend(
            query, key, value, ctx.attention_masks[self.layer_type],
            scale=self.head_dim ** -0.5,
            implementation=ctx.attn_implementation,
            dropout=self.config.attention_dropout if self.training else 0.0,
            block_mask=ctx.block_masks.get(self.layer_type),
        )
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        projected = self.o_proj(out)
        if self.vision_adapters is not None:
            projected = self.vision_adapters["o"].add_to(projected, out, ctx.image_rows)
        return projected


__all__ = ["attend", "compiled_flex_attention", "ZayaAttention"]
