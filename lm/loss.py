"""Causal-LM cross-entropy that never holds full fp32 logits.

ZAYA1's vocabulary has 262,272 entries: fp32 logits for a 4k-token sequence are 4.3 GB. We compute the loss
over chunks of ``chunk_size`` tokens, each chunk's logits recomputed in the backward pass (activation
checkpointing) rather than stored, so peak memory grows with the chunk, not with sequence × vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def shifted_targets(labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for positions 0..s-2 (the next token), ignoring predictions across a packed-document boundary."""
    targets = labels[:, 1:].clone()
    if segment_ids is not None:
        targets[segment_ids[:, 1:] != segment_ids[:, :-1]] = IGNORE_INDEX
    return targets


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    segment_ids: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy of ``hidden`` (b, s, h) through the output projection ``weight`` (vocab, h).

    ``labels`` (b, s) are the input ids with ``-100`` where no loss is wanted; the shift happens here.
    ``reduction="sum"`` returns the summed loss (for exact averaging across accumulation steps/processes).
    """
    targets = shifted_targets(labels, segment_ids).reshape(-1)
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk_size):
        chunk_targets = targets[start:start + chunk_size]
        if bool((chunk_targets == IGNORE_INDEX).all()):
            continue
        chunk = rows[start:start + chunk_size]
        if torch.is_grad_enabled() and (chunk.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, chunk, weight, bias, chunk_targets, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(chunk, weight, bias, chunk_targets)
    if reduction == "sum":
        return total
    count = (targets != IGNORE_INDEX).sum().clamp_min(1)
    return total / count


__all__ = ["causal_lm_loss", "shifted_targets", "IGNORE_INDEX"]
