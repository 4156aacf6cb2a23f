"""Where the image-token-gated vision LoRA applies on vLLM's flat token batch. The adapters are
``zaya_vl.lora.gated``'s: they add their delta at these rows only, so text rows are untouched by construction."""

from __future__ import annotations

import torch


def image_rows(image_token: torch.Tensor | None) -> torch.Tensor | None:
    """The indices of the image tokens of ``image_token`` (tokens,) bool, or None when there are none."""
    if image_token is None:
        return None
    rows = image_token.nonzero().squeeze(1)
    return rows if rows.numel() else None


__all__ = ["image_rows"]
