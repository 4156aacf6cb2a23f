"""Torch reference of the CCA q|k mixing that ``cca_triton.py`` fuses, derived from ``CCAProjection``.

Input: raw q|k rows (batch, seq, channels) from the fused projection, the previous ``window`` raw rows
(``history``, the decode conv state), and the folded conv (``CCAProjection.folded_conv``: the depthwise and
grouped convs as one grouped kernel (groups, out, in, window + 1) plus bias). Output, per row: conv + bias + the
residual means (query head: (q + its key head) / 2; key head: the mean of that over its query heads) — the
``query | key`` that ``CCAProjection.forward`` returns, flattened. Optionally the conv state is shifted in place.
"""

from __future__ import annotations

import torch


def cca_conv_reference(qk: torch.Tensor, history: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
                       num_heads: int, num_kv_heads: int, *, update_state: bool = False) -> torch.Tensor:
    batch, seq, channels = qk.shape
    groups, head_dim, _, taps = kernel.shape  # one conv group per head
    padded = torch.cat([history.to(qk.dtype), qk], dim=1)
    windows = padded.unfold(1, taps, 1).reshape(batch * seq, groups, -1).transpose(0, 1)  # (g, b·s, in·taps)
    bmm_kernel = kernel.permute(0, 2, 3, 1).reshape(groups, head_dim * taps, head_dim).to(qk.dtype)
    mixed = torch.bmm(windows, bmm_kernel).transpose(0, 1).reshape(batch, seq, channels) + bias.to(qk.dtype)

    query_width = num_heads * head_dim
    q5 = qk[..., :query_width].reshape(batch, seq, num_kv_heads, num_heads // num_kv_heads, head_dim)
    k4 = qk[..., query_width:].reshape(batch, seq, num_kv_heads, head_dim)
    query_residual = (q5 + k4[:, :, :, None]) * 0.5
    key_residual = query_residual.mean(dim=3)
    out = mixed + torch.cat([query_residual.reshape(batch, seq, -1), key_residual.reshape(batch, seq, -1)], dim=-1)

    if update_state:
        history.copy_(padded[:, seq:])
    return out


__all__ = ["cca_conv_reference"]
