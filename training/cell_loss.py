"""The cell loss: an auxiliary loss on the image features that teaches a vision tower trained from scratch to read.

A training row whose image carries ``cells`` (the glyph drawn in each merged image token, see ``data.py``) has
``cell_labels``: that glyph's token id at each image token, -100 elsewhere. Each labelled image token's feature
(the patch merger's output, ``image_hidden_states`` of the model's output) is read through the final norm and the
(tied) LM head, and the cross-entropy against its glyph pulls the tower's output for a glyph towards the text
embedding of that character, so the decoder can copy from image tokens the way it copies text.

The trainer's objective is ``loss + train.cell_loss_weight × cell loss``, each a mean over the global batch (answer
tokens, labelled image tokens), so it does not depend on how the batch is split into micro-batches or processes;
``cell_loss`` is logged apart from ``loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zaya_vl.lm.loss import IGNORE_INDEX


def count_cells(cell_labels: torch.Tensor | None) -> int:
    """Labelled image tokens in a batch's ``cell_labels``."""
    return 0 if cell_labels is None else int((cell_labels != IGNORE_INDEX).sum())


def cell_loss(model: nn.Module, image_hidden_states: torch.Tensor, image_mask: torch.Tensor,
              cell_labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the labelled image tokens' glyphs, their mean (or ``reduction="sum"``). ``model`` is the
    ZayaVL (its decoder's final norm, ``lm_head`` and input embedding dtype are read), ``image_hidden_states``
    one row per image token in the order of ``image_mask`` (b, s), ``cell_labels`` (b, s). No labelled token: a zero that still reaches the
    image features' weights, as a real loss would."""
    labels = cell_labels[image_mask.bool()]
    if labels.shape[0] != image_hidden_states.shape[0]:
        raise ValueError(f"{labels.shape[0]} image tokens but {image_hidden_states.shape[0]} image feature rows")
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return image_hidden_states.sum() * 0.0
    norm, head = model.get_decoder().norm, model.get_output_embeddings()
    # The rows as the decoder receives them (cast to the embedding dtype), then as the final norm reads them.
    rows = image_hidden_states[keep].to(model.get_input_embeddings().weight.dtype).to(norm.weight.dtype)
    logits = F.linear(norm(rows), head.weight, head.bias).float()
    return F.cross_entropy(logits, labels[keep], reduction=reduction)


__all__ = ["cell_loss", "count_cells"]
