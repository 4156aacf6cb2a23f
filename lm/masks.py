"""The one attention-mask builder: padding + causal order + sliding window + image spans + documents.

Every attention backend but FlexAttention consumes what this returns: a boolean mask (True = may attend) of shape
(batch or 1, 1, queries, keys), or ``None`` when plain causal attention (or none at all) is exact, so SDPA
can take its fast ``is_causal`` path. Queries are the last ``query_length`` of the ``key_length`` keys.

- Image spans (``image_span_ids``: 0 for text, k > 0 for the k-th image of the row): every image token also
  sees every token of its own image, before or after it; text stays causal. Pass ``None`` for plain causal
  attention over images (the reference's behaviour).
- Documents (``segment_ids``): packed rows never attend across documents.
- A padded query row would have nothing to attend to; it attends to itself so no NaN is produced (its
  output is never used, but a NaN would leak through the CCA convolution into real tokens).

FlexAttention gets the same rules (``may_attend``, shared with the dense builder) as a ``BlockMask`` from
``to_block_mask``, evaluated per (query, key) pair on the per-token tensors.
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
    query_pos = torch.arange(offset, key_length, device=device)[:, None]  # (Q, 1)
    key_pos = torch.arange(key_length, device=device)[None, :]  # (1, K)

    def per_query(ids):  # (b, K) -> (b, Q, 1)
        return ids[:, offset:, None] if ids is not None else None

    def per_key(ids):  # (b, K) -> (b, 1, K)
        return ids[:, None, :] if ids is not None else None

    padding_mask = padding_mask.bool() if padding_mask is not None else None
    allowed = may_attend(
        query_pos, key_pos, sliding_window=sliding_window if window_matters else None,
        query_real=per_query(padding_mask), key_real=per_key(padding_mask),
        query_span=per_query(image_span_ids), key_span=per_key(image_span_ids),
        query_segment=per_query(segment_ids), key_segment=per_key(segment_ids),
    )
    if allowed.dim() == 2:
        allowed = allowed[None]  # no per-row input: one (Q, K) mask for every row
    allowed = allowed[:, None]  # (b or 1, 1, Q, K)
    return allowed.expand(batch_size, -1, -1, -1) if allowed.shape[0] == 1 else allowed


def may_attend(query_pos, key_pos, *, sliding_window, query_real, key_real, query_span, key_span, query_segment,
                key_segment):
    """The rules, written once, on anything that broadcasts: (Q, K) grids of positions with (b, Q, 1) / (b, 1, K)
    per-token facts for the dense mask, or scalars for FlexAttention's ``mask_mod``. A per-token fact that is
    ``None`` does not constrain."""
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed = allowed & (query_pos - key_pos < sliding_window)
    if query_span is not None:
        allowed = allowed | ((query_span > 0) & (query_span == key_span))
    if query_segment is not None:
        allowed = allowed & (query_segment == key_segment)
    if query_real is not None:
        allowed = (allowed & key_real) | (~query_real & (query_pos == key_pos))
    return allowed


def to_block_mask(
    *,
    batch_size: int,
    query_length: int,
    key_length: int,
    device: torch.device,
    padding_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    image_span_ids: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
):
    """``build_attention_mask``'s mask (same arguments) as FlexAttention's ``BlockMask``. Its ``mask_mod`` applies
    the same rules to the (batch, key_length) per-token tensors one (query, key) pair at a time, so no
    (batch, queries, keys) tensor is ever built."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = key_length - query_length
    window = sliding_window if sliding_window is not None and key_length > sliding_window else None
    padding_mask = padding_mask.bool() if padding_mask is not None else None
    per_row = padding_mask is not None or image_span_ids is not None or segment_ids is not None

    def mask_mod(b, h, q, k):
        query_pos = q + offset

        def at(ids, position):
            return ids[b, position] if ids is not None else None

        return may_attend(
            query_pos, k, sliding_window=window,
            query_real=at(padding_mask, query_pos), key_real=at(padding_mask, k),
            query_span=at(image_span_ids, query_pos), key_span=at(image_span_ids, k),
            query_segment=at(segment_ids, query_pos), key_segment=at(segment_ids, k),
        )

    return create_block_mask(mask_mod, batch_size if per_row else None, None, query_length, key_length,
                             device=device)


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
