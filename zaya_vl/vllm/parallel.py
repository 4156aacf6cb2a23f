"""Tensor parallelism: which slice of each checkpoint tensor a rank holds, and the sums that join the ranks.

Attention is split by key/value head: a rank keeps its query heads and key heads (CCA's grouped convolution has
one group per head and its residual means stay within a key head's query group, so the q|k mixing is local), the
matching output-projection columns (partial outputs summed across ranks) and the key heads' QK-norm temperatures.
Values are ``[current | delayed]`` halves viewed as heads, so a rank's value heads may lie in either half: each rank
projects both halves whole (the small part of CCA) and keeps its heads. Experts are split along their
intermediate size (gate and up rows, down columns; partial outputs summed). The router, norms and residual
scaling are replicated; embeddings and the LM head are vLLM's vocabulary-parallel layers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def tp_rank_and_size() -> tuple[int, int]:
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def all_reduce(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    if tp_size == 1:
        return x
    from vllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce(x)


def check_divisible(config, tp_size: int) -> None:
    """Heads and the experts' intermediate size must split evenly over the ranks."""
    for name in ("num_key_value_heads", "moe_intermediate_size"):
        if getattr(config, name) % tp_size:
            raise ValueError(f"tensor_parallel_size={tp_size} must divide the checkpoint's {name} "
                             f"({getattr(config, name)})")


def local_config(config, tp_size: int):
    """The config one rank builds its modules from: its share of the heads and of the experts' width."""
    if tp_size == 1:
        return config
    local = copy.copy(config)
    local.num_attention_heads = config.num_attention_heads // tp_size
    local.num_key_value_heads = config.num_key_value_heads // tp_size
    local.moe_intermediate_size = config.moe_intermediate_size // tp_size
    return local


def load_slice(param: nn.Parameter, dim: int, index: torch.Tensor) -> None:
    """Make ``param`` load the rows ``index`` of dimension ``dim`` of the checkpoint tensor."""
    def loader(param: nn.Parameter, tensor: torch.Tensor) -> None:
        param.data.copy_(tensor.index_select(dim, index.to(tensor.device)))

    param.weight_loader = loader


def _block(rank: int, width: int, offset: int = 0) -> torch.Tensor:
    return torch.arange(offset + rank * width, offset + (rank + 1) * width)


class AttentionShard:
    """One rank's channels of a CCA layer (``config`` is the whole model's)."""

    def __init__(self, config, rank: int, tp_size: int) -> None:
        head_dim = config.head_dim
        heads, kv_heads = config.num_attention_heads // tp_size, config.num_key_value_heads // tp_size
        self.query = _block(rank, heads * head_dim)
        self.key = _block(rank, kv_heads * head_dim)
        self.qk = torch.cat([self.query, config.num_attention_heads * head_dim + self.key])
        self.kv_heads = _block(rank, kv_heads)
        self.values = slice(rank * kv_heads * head_dim, (rank + 1) * kv_heads * head_dim)


def shard_experts(experts: nn.Module, config, rank: int) -> None:
    """Gate and up rows, down columns of this rank's share of the intermediate size (and their LoRA factors)."""
    full, local = config.moe_intermediate_size, experts.down_proj.shape[-1]
    rows = torch.cat([_block(rank, local), _block(rank, local, offset=full)])
    load_slice(experts.gate_up_proj, 1, rows)
    load_slice(experts.down_proj, 2, _block(rank, local))
    if experts.vision_adapters is not None:
        load_slice(experts.vision_adapters["gate_up"].B, 1, rows)
        load_slice(experts.vision_adapters["down"].A, 2, _block(rank, local))


__all__ = ["AttentionShard", "all_reduce", "check_divisible", "load_slice", "local_config", "shard_experts",
           "tp_rank_and_size"]
