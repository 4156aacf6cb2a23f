"""The image-token-gated vision LoRA on vLLM's flat token batch: ``y + mask ⊙ B(A(x))``, computed on the image
rows only, so text rows are untouched by construction (as in ``zaya_vl.lora.gated``)."""

from __future__ import annotations

import torch


def add_gated_lora(output: torch.Tensor, x: torch.Tensor, adapter, image_token: torch.Tensor | None) -> torch.Tensor:
    """``output`` (tokens, out) plus ``B·A·x`` at the rows where ``image_token`` (tokens,) is true."""
    if image_token is None:
        return output
    rows = image_token.nonzero().squeeze(1)
    if rows.numel() == 0:
        return output
    delta = (x.index_select(0, rows) @ adapter.A.t().to(x.dtype)) @ adapter.B.t().to(x.dtype)
    return output.index_add(0, rows, delta.to(output.dtype))


__all__ = ["add_gated_lora"]
