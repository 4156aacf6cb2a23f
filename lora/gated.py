"""Token-gated LoRA: ``y = W x + mask ⊙ B(A(x))``, with ``mask`` = "this token is an image token".

ZAYA1-VL adapts the language model to image tokens with low-rank adapters that are switched on only at
image positions, so text behaves exactly as the text-only LM. The adapters here hold only the low-rank
factors; the base layer stays a plain ``nn.Linear`` / fused expert tensor that the caller computes, and the
caller adds ``delta`` at the image rows. Computing the delta on the image rows alone (index, matmul,
index_add) makes the contribution at text rows exactly zero by construction and costs nothing on text-only
batches.

No alpha scaling (the reference applies B·A·x as is). Parameter names are ``A`` and ``B`` — never
containing ``lora_`` — so PEFT LoRA can be stacked on the same model for fine-tuning without its
name-based bookkeeping mistaking these adapters for its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zaya_vl.lm.kernels.grouped import grouped_linear


class GatedLoRA(nn.Module):
    """Low-rank delta ``B @ A`` for one ``in_features -> out_features`` projection."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``B(A(x))`` for rows of ``x`` (..., in_features) that are all image tokens."""
        return (x @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype)

    def add_to(self, output: torch.Tensor, x: torch.Tensor, image_rows: torch.Tensor | None) -> torch.Tensor:
        """Return ``output`` with the delta added at ``image_rows`` (flat row indices into ``x``/``output``).

        ``x`` and ``output`` are viewed as 2-D row matrices; rows not listed are returned untouched.
        """
        if image_rows is None or image_rows.numel() == 0:
            return output
        x_rows = x.reshape(-1, x.shape[-1]).index_select(0, image_rows)
        flat = output.reshape(-1, output.shape[-1])
        flat = flat.index_add(0, image_rows, self.delta(x_rows).to(flat.dtype))
        return flat.view_as(output)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class GatedExpertLoRA(nn.Module):
    """Per-expert low-rank deltas for a grouped expert projection (``E`` experts)."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.num_experts, self.in_features, self.out_features, self.rank = num_experts, in_features, out_features, rank
        self.A = nn.Parameter(torch.empty(num_experts, rank, in_features))
        self.B = nn.Parameter(torch.zeros(num_experts, out_features, rank))
        for expert in range(num_experts):
            nn.init.kaiming_uniform_(self.A.data[expert], a=math.sqrt(5))

    def delta(self, x: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
        """Deltas for rows ``x`` sorted by expert; ``expert_offsets[e]`` is the end row of expert ``e``."""
        shrunk = grouped_linear(x, self.A.to(x.dtype), expert_offsets)
        return grouped_linear(shrunk, self.B.to(x.dtype), expert_offsets)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, rank={self.rank}"


__all__ = ["GatedLoRA", "GatedExpertLoRA"]
