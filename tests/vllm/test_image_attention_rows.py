"""The plugin's re-attention of image rows (no vLLM needed: runs in both venvs) equals full attention under the
dense mask our model builds (``build_attention_mask``), row block by row block, in every non-causal mode, with
a sliding window, and leaves the causal rows as vLLM computed them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zaya_vl.lm.masks import build_attention_mask, image_attention_spans
from zaya_vl.vllm.image_attention import ImageAttentionPlan, attend_image_rows

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


@pytest.mark.parametrize("mode", ["bidirectional", "images", "prefix"])
@pytest.mark.parametrize("window", [None, 4])
def test_image_rows_equal_full_attention_under_our_mask(mode, window):
    generator = torch.Generator().manual_seed(0)
    decode_rows, length = 2, 20  # the flat batch: two decode tokens, then one prefill sequence
    image = torch.zeros(decode_rows + length, dtype=torch.bool)
    image[decode_rows + 3: decode_rows + 8] = True    # first image
    image[decode_rows + 11: decode_rows + 15] = True  # second image
    tokens = decode_rows + length
    query = torch.randn(tokens, HEADS * HEAD_DIM, generator=generator)
    key = torch.randn(tokens, KV_HEADS * HEAD_DIM, generator=generator)
    value = torch.randn(tokens, KV_HEADS * HEAD_DIM, generator=generator)
    causal_out = torch.randn(tokens, HEADS * HEAD_DIM, generator=generator)  # stands for vLLM's causal output

    sequence = ImageAttentionPlan(mode)._sequence(image, decode_rows, tokens)
    out = attend_image_rows(causal_out, query, key, value, [sequence], num_heads=HEADS, num_kv_heads=KV_HEADS,
                            head_dim=HEAD_DIM, sliding_window=window, rows_per_block=3)

    spans = image_attention_spans(image[None, decode_rows:], mode)
    mask = build_attention_mask(batch_size=1, query_length=length, key_length=length, device=torch.device("cpu"),
                                sliding_window=window, image_span_ids=spans)
    q = query[decode_rows:].view(length, HEADS, HEAD_DIM).transpose(0, 1)
    k = key[decode_rows:].view(length, KV_HEADS, HEAD_DIM).transpose(0, 1).repeat_interleave(2, dim=0)
    v = value[decode_rows:].view(length, KV_HEADS, HEAD_DIM).transpose(0, 1).repeat_interleave(2, dim=0)
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[0]).transpose(0, 1).reshape(length, -1)

    rows = (spans[0] > 0).nonzero().squeeze(1)
    assert rows.numel() > 3  # more rows than one block
    torch.testing.assert_close(out[decode_rows + rows], full[rows], rtol=1e-5, atol=1e-5)
    untouched = torch.ones(tokens, dtype=torch.bool)
    untouched[decode_rows + rows] = False
    assert torch.equal(out[untouched], causal_out[untouched])
