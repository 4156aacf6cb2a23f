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

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
_TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs ``x`` (rows, in) against ``weight`` (experts, out, in) as one kernel
    here. Elsewhere the caller takes the Triton kernel or a loop over experts. The conditions are those under
    which torch has a real kernel (upstream transformers gates the same way):

    - CUDA: bf16 only (other dtypes take a per-expert loop inside torch that syncs), 16-byte aligned rows, and
      compute capability 9.x on torch ≤ 2.8 (Hopper-only kernel) or ≥ 8.0 from 2.9;
    - CPU: fp32/bf16 with 16-byte aligned rows and storage (torch ≤ 2.10 requires the alignment);
    - compiled: bf16 only (inductor lowers no other dtype);
    - autograd: CUDA only (the CPU kernel has no backward in the builds we support).
    """
    if not _HAS_GROUPED_MM:
        return False
    device = x.device.type
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) and device != "cuda":
        return False
    if torch.compiler.is_compiling() and weight.dtype != torch.bfloat16:
        return False
    if device == "cuda":
        if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16:
            return False
        if x.shape[-1] % 8 or weight.shape[1] % 8:
            return False
        capability = torch.cuda.get_device_capability(x.device)
        return capability >= (8, 0) if _TORCH_VERSION >= (2, 9) else capability[0] == 9
    if device == "cpu":
        if x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != x.dtype:
            return False
        # Both matrices' rows must be 16-byte aligned (the rank-r LoRA factors often are not).
        if any(size * x.element_size() % 16 for size in (x.shape[-1], weight.shape[1])):
            return False
        if torch.compiler.is_compiling():
            return True
        return x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
    return False


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x``: (rows, in) sorted by expert; ``weight``: (experts, out, in); ``offsets``: (experts,) cumulative ends."""
    if x.shape[0] == 0:
        return x.new_empty(0, weight.shape[1])
    if grouped_mm_supported(x, weight):
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
            gate, up = F.linear(x[token:token + 1], gate_up[chosen]).chunk(2, dim=-1)
            rows.append(F.linear(F.silu(gate) * up, down[chosen]))
        else:
            rows.append(x.new_zeros(1, down.shape[1]))
    if len(rows) == 1:
        return rows[0]
    return torch.cat(rows) if rows else x.new_zeros(0, down.shape[1])


__all__ = ["grouped_linear", "grouped_mm_supported", "ExpertLoRA", "grouped_linear_reference", "grouped_swiglu_reference",
           "expert_mlp_tokens_reference"]
