"""Named model sizes (the one registry: LM and vision tower) and parameter accounting for the ZAYA1 LM."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from zaya_vl.lm.config import ZayaLMConfig


# The one registry of named model sizes. Plain keyword dicts (not config objects) so the same numbers build
# our `ZayaLMConfig`, upstream `transformers.ZayaConfig` and a Qwen2.5-VL vision config alike; this module
# stays free of `zaya_vl` top-level imports so `zaya_vl.lm` can use it without loading the VL model.
LM_SIZES = {
    # the smallest LM whose every part is exercised: the unit tests' model
    "test-tiny": dict(vocab_size=160, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=4,
                      router_hidden_size=16, max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2),
    # benchmark sizes: tiny checks a bench script end to end, medium is the CPU-affordable speed model
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, moe_intermediate_size=64, num_experts=4, router_hidden_size=16),
    "medium": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=128, moe_intermediate_size=512, num_experts=8,
                   router_hidden_size=128),
    "zaya1-8b": {},  # the released config (upstream ZayaConfig defaults)
}

# Qwen2.5-VL vision towers paired with the LM size of the same name; `out_hidden_size` is that LM's width.
VISION_SIZES = {
    "test-tiny": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
    "tiny": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                 spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
    "medium": dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[3]),
}


def lm_size(name: str) -> dict:
    """A fresh copy of the keyword arguments of the named LM size (callers may mutate it)."""
    if name not in LM_SIZES:
        raise KeyError(f"unknown LM size {name!r}; known: {', '.join(sorted(LM_SIZES))}")
    return copy.deepcopy(LM_SIZES[name])


def vision_size(name: str) -> dict:
    """A fresh copy of the keyword arguments of the named vision tower size."""
    if name not in VISION_SIZES:
        raise KeyError(f"unknown vision size {name!r}; known: {', '.join(sorted(VISION_SIZES))}")
    return copy.deepcopy(VISION_SIZES[name])


def lm_config(name: str, **overrides) -> ZayaLMConfig:
    """Our `ZayaLMConfig` of the named size, with `overrides` on top."""
    return ZayaLMConfig(**{**lm_size(name), **overrides})


def zaya1_8b_config(**overrides) -> ZayaLMConfig:
    """ZAYA1-8B as released (upstream `ZayaConfig` defaults, checkpoint `Zyphra/ZAYA1-8B`)."""
    return lm_config("zaya1-8b", **overrides)


# What `zaya-vl describe --preset` offers: the real model sizes (the test and bench sizes are not worth describing).
PRESETS = {"zaya1-8b": zaya1_8b_config}


@dataclass(frozen=True)
class ParameterCount:
    total: int
    embedding: int
    experts: int
    active: int  # per token: everything but the embedding, with one expert of `num_experts` per layer

    @property
    def active_with_embedding(self) -> int:
        return self.active + self.embedding


def count_parameters(model: nn.Module, config: ZayaLMConfig) -> ParameterCount:
    """Count parameters (works on the meta device). Tied weights are counted once."""
    seen, total, embedding, experts = set(), 0, 0, 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if name.endswith("embed_tokens.weight"):
            embedding += param.numel()
        elif ".mlp.experts." in name:
            experts += param.numel()
    inactive_experts = experts * (config.num_experts - 1) // config.num_experts
    return ParameterCount(total=total, embedding=embedding, experts=experts,
                          active=total - embedding - inactive_experts)


def describe(config: ZayaLMConfig, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Sizes of a config, computed on the meta device (no memory is allocated)."""
    from zaya_vl.lm.modeling import ZayaLM

    with torch.device("meta"):
        model = ZayaLM(config)
    counts = count_parameters(model, config)
    return {
        "total_parameters": counts.total,
        "embedding_parameters": counts.embedding,
        "active_parameters": counts.active,
        "active_parameters_with_embedding": counts.active_with_embedding,
        "kv_cache_bytes_per_token": config.kv_cache_bytes_per_token(dtype),
    }


__all__ = ["LM_SIZES", "PRESETS", "VISION_SIZES", "ParameterCount", "count_parameters", "describe", "lm_config",
           "lm_size", "vision_size", "zaya1_8b_config"]
