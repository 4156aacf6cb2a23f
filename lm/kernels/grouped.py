"""Grouped (per-expert) linear layers over rows sorted by expert: the torch path, and the references the
Triton kernels in ``moe_triton.py`` are tested against.

``grouped_linear(x, weight, offsets)`` computes ``x[rows of e] @ weight[e].T`` for every expert ``e`` in
one call, where the rows of expert ``e`` are ``offsets[e-1]:offsets[e]``. It uses ``torch._grouped_mm``
(one kernel for all experts) where this torch build has it, and a loop over *experts* — never over
tokens — otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from zaya_vl.lm.kernels import few_rows

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def _grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not _HAS_GROUPED_MM or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # torch._grouped_mm's backward is CUDA-only in the builds we support; autograd takes the loop.
        return False
    if x.device.type == "cuda":
        # The CUDA kernel wants bf16 and 16-byte aligned rows.
        return x.dtype == torch.bfloat16 and x.shape[-1] % 8 == 0 and weight.shape[1] % 8 == 0
    # Both matrices' rows must be 16-byte aligned (the rank-r LoRA factors often are not).
    aligned = all(size * x.element_size() % 16 == 0 for size in (x.shape[-1], weight.shape[1]))
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and aligned


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x``: (rows, in) sorted by expert; ``weight``: (experts, out, in); ``offsets``: (experts,) cumulative ends."""
    if x.shape[0] == 0:
        return x.new_empty(0, weight.shape[1])
    if _grouped_mm_supported(x, weight):
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets.to(torch.int32))
    ends = offsets.tolist()
    outputs, start = [], 0
    for expert, end in enumerate(ends):
        if end > start:
            outputs.append(x[start:end] @ weight[expert].t())
        start = end
    return torch.cat(outputs) if outputs else x.new_empty(0, weight.shape[1])


class ExpertLoRA(NamedTuple):
    """A per-expert vision LoRA applied to the image rows only. Rows are sorted by (expert, is_image), so each
    expert's image rows are the tail of its range; ``image_positions`` lists them in that order and
    ``image_ends`` (experts,) are the cumulative image-row counts."""

    A: torch.Tensor                 # (experts, rank, in)
    B: torch.Tensor                 # (experts, out, rank)
    image_positions: torch.Tensor   # (image_rows,) long, row indices into x
    image_ends: torch.Tensor        # (experts,) cumulative ends


def grouped_linear_reference(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                             lora: ExpertLoRA | None = None) -> torch.Tensor:
    """``grouped_linear`` plus ``B·A·x`` at the image rows: shrink and expand only over the image sub-ranges."""
    out = grouped_linear(x, weight, offsets)
    if lora is None:
        return out
    shrunk = grouped_linear(x[lora.image_positions], lora.A.to(x.dtype), lora.image_ends)
    delta = grouped_linear(shrunk, lora.B.to(x.dtype), lora.image_ends)
    return out.index_add(0, lora.image_positions, delta.to(out.dtype))


def grouped_swiglu_reference(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                             lora: ExpertLoRA | None = None) -> torch.Tensor:
    """``silu(gate) * up`` of the grouped gate_up projection (``weight`` (E, 2I, in): gate rows first)."""
    gate, up = grouped_linear_reference(x, weight, offsets, lora).chunk(2, dim=-1)
    return F.silu(gate) * up


def expert_mlp_tokens_reference(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                                expert: torch.Tensor) -> torch.Tensor:
    """Unsorted tokens, each through its own expert's SwiGLU MLP; ``expert == E`` (skip) gives zeros."""
    rows = []
    for token, chosen in enumerate(expert.tolist()):
        if chosen < gate_up.shape[0]:
            gate, up = few_rows.linear(x[token:token + 1], gate_up[chosen]).chunk(2, dim=-1)
            rows.append(few_rows.linear(F.silu(gate) * up, down[chosen]))
        else:
            rows.append(x.new_zeros(1, down.shape[1]))
    if len(rows) == 1:
        return rows[0]
    return torch.cat(rows) if rows else x.new_zeros(0, down.shape[1])


__all__ = ["grouped_linear", "ExpertLoRA", "grouped_linear_reference", "grouped_swiglu_reference",
           "expert_mlp_tokens_reference"]
