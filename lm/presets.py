"""Named configurations and parameter accounting for the ZAYA1 LM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zaya_vl.lm.config import ZayaLMConfig


def zaya1_8b_config(**overrides) -> ZayaLMConfig:
    """ZAYA1-8B as released (upstream `ZayaConfig` defaults, checkpoint `Zyphra/ZAYA1-8B`)."""
    return ZayaLMConfig(**overrides)


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


__all__ = ["PRESETS", "ParameterCount", "count_parameters", "describe", "zaya1_8b_config"]
