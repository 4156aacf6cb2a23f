"""The one attention-mask builder: padding + causal order + sliding window + image spans + documents.

Every attention backend consumes what this returns (FlexAttention through ``to_block_mask``): a boolean mask (True = may attend) of shape
(batch or 1, 1, queries, keys), or ``None`` when plain causal attention (or none at all) is exact, so SDPA
can take its fast ``is_causal`` path. Queries are the last ``query_length`` of the ``key_length`` keys.

- Image spans (``image_span_ids``: 0 for text, k > 0 for the k-th image of the row): every image token also
  sees every token of its own image, before or after it; text stays causal. Pass ``None`` for plain causal
  attention over images (the reference's behaviour).
- Documents (``segment_ids``): packed rows never attend across documents.
- A padded query row would have nothing to attend to; it attends to itself so no NaN is produced (its
  output is never used, but a NaN would leak through the CCA convolution into real tokens).
"""

from __future__ import annotations

import torch


def build_attention_mask(
    *,
    batch_size: int,
    query_length: int,
    key_length: int,
    device: torch.device,
    padding_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    image_span_ids: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``padding_mask``, ``image_span_ids`` and ``segment_ids`` are (batch, key_length) over all keys. Nothing here
    reads a device value on the host (a decode step must not sync): a caller that knows there is no padding,
    or no image among the queries, passes ``None`` to get the unmasked fast path."""
    window_matters = sliding_window is not None and key_length > sliding_window
    if padding_mask is None and image_span_ids is None and segment_ids is None and not window_matters:
        if query_length == 1 or query_length == key_length:
            return None  # no mask (decode) or SDPA's is_causal (prefill from empty) is exact

    offset = key_length - query_length
    query_pos = torch.arange(offset, key_length, device=device)[:, None]
    key_pos = torch.arange(key_length, device=device)[None, :]
    allowed = key_pos <= query_pos
    if window_matters:
        allowed = allowed & (query_pos - key_pos < sliding_window)
    allowed = allowed[None, None]  # (1, 1, Q, K)

    if image_span_ids is not None:
        query_span = image_span_ids[:, offset:, None]
        same_image = (query_span > 0) & (query_span == image_span_ids[:, None, :])
        allowed = allowed | same_image[:, None]
    if segment_ids is not None:
        same_document = segment_ids[:, offset:, None] == segment_ids[:, None, :]
        allowed = allowed & same_document[:, None]
    if padding_mask is not None:
        padding_mask = padding_mask.bool()
        allowed = allowed & padding_mask[:, None, None, :]
        padded_query = ~padding_mask[:, offset:]
        self_position = (query_pos == key_pos)[None, None]
        allowed = allowed | (self_position & padded_query[:, None, :, None])
    return allowed.expand(batch_size, -1, -1, -1) if allowed.shape[0] == 1 else allowed


def to_block_mask(mask: torch.Tensor | None, *, query_length: int, key_length: int, device: torch.device):
    """The same mask for FlexAttention, as a ``BlockMask``; ``None`` (plain causal) becomes its causal block mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    if mask is None:
        offset = key_length - query_length

        def mask_mod(b, h, q, k):
            return k <= q + offset

        return create_block_mask(mask_mod, None, None, query_length, key_length, device=device)
    dense = mask[:, 0]

    def mask_mod(b, h, q, k):  # noqa: F811 - one of the two definitions is used
        return dense[b, q, k]

    return create_block_mask(mask_mod, dense.shape[0], None, query_length, key_length, device=device)


# How image tokens attend; text is always causal. Each mode is one reference's behaviour:
# - "images": every image token sees every image token of its row, across images (the upstream transformers port's
#   eager attention);
# - "bidirectional": every image token sees every token of its own image (ours);
# - "prefix": every token up to two past the row's last image token sees that whole prefix, text included (Zyphra's
#   reference code on its flash-attention path, there computed over the flattened batch; here per row);
# - "causal": plain causal attention (Zyphra's reference code, eager and SDPA).
IMAGE_ATTENTION_MODES = ("images", "bidirectional", "prefix", "causal")


def image_attention_spans(image_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Span ids for ``build_attention_mask``: tokens sharing a span id > 0 see each other both ways."""
    if mode == "images":
        return image_mask.long()
    if mode == "bidirectional":
        return image_span_ids_from_mask(image_mask)
    if mode == "prefix":
        positions = torch.arange(image_mask.shape[1], device=image_mask.device)
        last_image = torch.where(image_mask.bool(), positions, -1).amax(dim=1, keepdim=True)
        return ((positions < last_image + 3) & (last_image >= 0)).long()
    raise ValueError(f"image_attention={mode!r} has no image spans; expected one of {IMAGE_ATTENTION_MODES[:-1]}.")


def image_span_ids_from_mask(image_mask: torch.Tensor) -> torch.Tensor:
    """Number each maximal run of image tokens in a row 1, 2, …; text positions get 0."""
    image_mask = image_mask.bool()
    previous = torch.nn.functional.pad(image_mask[:, :-1], (1, 0), value=False)
    run_starts = image_mask & ~previous
    return torch.cumsum(run_starts.long(), dim=1) * image_mask.long()


__all__ = ["IMAGE_ATTENTION_MODES", "build_attention_mask", "image_attention_spans", "image_span_ids_from_mask",
           "to_block_mask"]
