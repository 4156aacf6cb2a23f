"""Grouped (per-expert) linear layers over rows sorted by expert: the torch path.

``grouped_linear(x, weight, offsets)`` computes ``x[rows of e] @ weight[e].T`` for every expert ``e`` in
one call, where the rows of expert ``e`` are ``offsets[e-1]:offsets[e]``. It uses ``torch._grouped_mm``
(one kernel for all experts) where this torch build has it, and a loop over *experts* — never over
tokens — otherwise.
"""

from __future__ import annotations

import torch

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


__all__ = ["grouped_linear"]
