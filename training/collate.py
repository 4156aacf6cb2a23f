"""Rows → the model's batch tensors.

Each row's samples are laid end to end; ``segment_ids`` number them (0, 1, …) so attention, the CCA
convolution window / delayed value and positions restart at every document start, and the loss never
predicts across a boundary. Padding goes at the end of a row with ``attention_mask`` 0, label ``-100`` and a
segment id of its own. ``pixel_values`` / ``image_grid_thw`` of all images are concatenated in row order,
the layout the processor and the vision tower use. ``cell_labels`` (like ``labels``) is there when a sample's
image has cells.
"""

from __future__ import annotations

import torch

from zaya_vl.lm.loss import shifted_targets
from zaya_vl.training.data import IGNORE_INDEX
from zaya_vl.training.packing import Row


def collate_rows(rows: list[Row], *, pad_token_id: int, seq_len: int, pad_to: str = "max_length",
                 with_segments: bool = True) -> dict[str, torch.Tensor]:
    if not rows:
        raise ValueError("collate_rows needs at least one row")
    longest = max(row.length for row in rows)
    length = seq_len if pad_to == "max_length" else max(longest, 1)  # rows left empty by a skip: one pad token
    if longest > length:
        raise ValueError(f"a row has {longest} tokens, more than the {length} it may have")
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    segment_ids = torch.zeros((batch, length), dtype=torch.long)
    pixel_values, image_grid_thw = [], []
    with_cells = any(sample.cell_labels is not None for row in rows for sample in row.samples)
    cell_labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long) if with_cells else None
    for b, row in enumerate(rows):
        start = 0
        for k, sample in enumerate(row.samples):
            end = start + len(sample)
            input_ids[b, start:end] = torch.tensor(sample.input_ids)
            labels[b, start:end] = torch.tensor(sample.labels)
            attention_mask[b, start:end] = 1
            segment_ids[b, start:end] = k
            if sample.cell_labels is not None:
                cell_labels[b, start:end] = torch.tensor(sample.cell_labels)
            if sample.has_images:
                pixel_values.append(sample.pixel_values)
                image_grid_thw.append(sample.image_grid_thw)
            start = end
        segment_ids[b, start:] = len(row.samples)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if with_segments:
        out["segment_ids"] = segment_ids
    if pixel_values:
        out["pixel_values"] = torch.cat(pixel_values)
        out["image_grid_thw"] = torch.cat(image_grid_thw)
    if cell_labels is not None:
        out["cell_labels"] = cell_labels
    return out


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss counts in ``batch``: exactly those the model's causal-LM loss averages over."""
    return int((shifted_targets(batch["labels"], batch.get("segment_ids")) != IGNORE_INDEX).sum())


__all__ = ["collate_rows", "count_targets"]
