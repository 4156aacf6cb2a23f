"""``attend``: attention over grouped key/value heads, checked against a naive loop over query heads."""

import pytest
import torch

from zaya_vl.lm.attention import attend


def naive_attention(query, key, value, mask, scale):
    """Each query head h reads KV head h // (heads // kv_heads), one row at a time, masked positions excluded."""
    batch, heads, rows, _ = query.shape
    group = heads // key.shape[1]
    out = torch.empty_like(query)
    for b in range(batch):
        for h in range(heads):
            for r in range(rows):
                scores = key[b, h // group] @ query[b, h, r] * scale
                if mask is not None:
                    scores = scores.masked_fill(~mask[b, 0, r], float("-inf"))
                out[b, h, r] = torch.softmax(scores, dim=0) @ value[b, h // group]
    return out


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("masked", [True, False])
def test_one_query_row_over_grouped_kv_heads_matches_the_naive_loop(heads, kv_heads, masked):
    generator = torch.Generator().manual_seed(heads * 10 + kv_heads)
    batch, length, dim = 3, 9, 16
    query = torch.randn(batch, heads, 1, dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, dim, generator=generator)
    value = torch.randn(batch, kv_heads, length, dim, generator=generator)
    mask = None
    if masked:  # a static cache's length mask, with a left-padded row
        mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
        mask[:, ..., 6:] = False
        mask[1, ..., :2] = False
    got = attend(query, key, value, mask, scale=0.3)
    torch.testing.assert_close(got, naive_attention(query, key, value, mask, 0.3), rtol=1e-5, atol=1e-5)


def test_several_query_rows_over_grouped_kv_heads_match_the_naive_loop():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 5, 8, generator=generator)
    key, value = (torch.randn(2, 2, 5, 8, generator=generator) for _ in range(2))
    causal = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5)
    torch.testing.assert_close(attend(query, key, value, None, scale=0.5),
                               naive_attention(query, key, value, causal, 0.5), rtol=1e-5, atol=1e-5)
