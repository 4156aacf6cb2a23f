"""The one mask builder, against a direct reading of its rules, one (query, key) pair at a time."""

import itertools

import pytest
import torch

from zaya_vl.lm.masks import build_attention_mask, image_span_ids_from_mask


def naive_allowed(q, k, *, padding, window, spans, segments):
    if padding is not None and not padding[k]:
        return padding is not None and not padding[q] and q == k  # a padded query only sees itself
    if segments is not None and segments[q] != segments[k]:
        return False
    if spans is not None and spans[q] > 0 and spans[q] == spans[k]:
        return True
    return k <= q and (window is None or q - k < window)


# Packed documents are a training (cache-free) feature, so they are not combined with a past.
CASES = [case for case in itertools.product([None, "left"], [None, 3], [None, "images"], [None, "docs"], [0, 4])
         if not (case[3] and case[4])]


@pytest.mark.parametrize("padding_kind,window,span_kind,segment_kind,past", CASES)
def test_mask_matches_naive_rules(padding_kind, window, span_kind, segment_kind, past):
    keys, queries = 12, 12 - past
    padding = torch.ones(2, keys, dtype=torch.bool)
    if padding_kind:
        padding[1, :3] = False
    image_mask = torch.zeros(2, keys, dtype=torch.bool)
    image_mask[0, 5:8] = image_mask[0, 9:11] = image_mask[1, 6:9] = True
    spans = image_span_ids_from_mask(image_mask) if span_kind else None
    if spans is not None and past:
        spans[:, :past] = 0  # spans live in the current chunk only
    segments = torch.tensor([[0] * 6 + [1] * 6, [0] * 4 + [1] * 5 + [2] * 3]) if segment_kind else None
    mask = build_attention_mask(batch_size=2, query_length=queries, key_length=keys, device=torch.device("cpu"),
                                padding_mask=padding if padding_kind else None, sliding_window=window,
                                image_span_ids=spans, segment_ids=segments)
    if mask is None:
        mask = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal=past).expand(2, 1, -1, -1)
    for b in range(2):
        for qi in range(queries):
            q = past + qi
            for k in range(keys):
                expected = naive_allowed(q, k, padding=padding[b] if padding_kind else None, window=window,
                                         spans=spans[b] if spans is not None else None,
                                         segments=segments[b] if segments is not None else None)
                assert bool(mask[b, 0, qi, k]) == expected, (b, q, k)


def test_image_spans_are_numbered_per_run():
    image_mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1, 1, 1]], dtype=torch.bool)
    assert image_span_ids_from_mask(image_mask).tolist() == [[0, 1, 1, 0, 0, 2, 0, 3, 3, 3]]


def test_plain_causal_returns_no_mask_so_sdpa_takes_its_fast_path():
    assert build_attention_mask(batch_size=3, query_length=7, key_length=7, device=torch.device("cpu")) is None
    assert build_attention_mask(batch_size=3, query_length=1, key_length=9, device=torch.device("cpu")) is None


def _closure_tensors(fn):
    """Every tensor a function reaches through its closure (nested functions included)."""
    found, stack = [], [fn]
    while stack:
        for cell in stack.pop().__closure__ or ():
            value = cell.cell_contents
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif callable(value) and getattr(value, "__closure__", None):
                stack.append(value)
    return found


@pytest.mark.parametrize("seed", range(6))
def test_block_mask_matches_the_dense_mask_without_a_dense_tensor(seed):
    pytest.importorskip("torch.nn.attention.flex_attention")
    from zaya_vl.lm.masks import to_block_mask

    generator = torch.Generator().manual_seed(seed)
    batch, keys = 3, 150  # over one 128-token block, so partial and full blocks both occur
    past = [0, 0, 37][seed % 3]
    queries = keys - past

    def draw(high):
        return int(torch.randint(high, (), generator=generator))

    padding = torch.ones(batch, keys, dtype=torch.bool)
    for row in range(batch):
        padding[row, : draw(40)] = False  # left padding of random length (possibly none)
    image_mask = torch.rand(batch, keys, generator=generator) < 0.3
    image_mask[:, :past] = False  # spans live in the current chunk only
    spans = image_span_ids_from_mask(image_mask)
    segments = None if past else torch.sort(torch.randint(3, (batch, keys), generator=generator), dim=1).values
    window = [None, 5, 64][draw(3)]
    kwargs = dict(batch_size=batch, query_length=queries, key_length=keys, device=torch.device("cpu"),
                  padding_mask=padding if draw(4) else None, sliding_window=window,
                  image_span_ids=spans if draw(4) else None, segment_ids=segments if draw(2) else None)

    block_mask = to_block_mask(**kwargs)
    dense = build_attention_mask(**kwargs)
    if dense is None:
        dense = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal=past).expand(batch, 1, -1, -1)
    grid = torch.zeros(batch, queries, keys, dtype=torch.bool)  # the mask_mod evaluated pair by pair
    q_index = torch.arange(queries)[:, None].expand(queries, keys)
    k_index = torch.arange(keys)[None, :].expand(queries, keys)
    for b in range(batch):
        grid[b] = block_mask.mask_mod(torch.tensor(b), torch.tensor(0), q_index, k_index)
    assert torch.equal(grid, dense[:, 0])
    # The block-sparse summary agrees: a block is skipped exactly when the dense mask is all False there.
    materialised = block_mask.to_dense()  # (b or 1, 1, Q blocks, K blocks)
    size = block_mask.BLOCK_SIZE
    for b in range(batch):
        for qb in range(materialised.shape[2]):
            for kb in range(materialised.shape[3]):
                any_allowed = bool(dense[b, 0, qb * size[0]:(qb + 1) * size[0], kb * size[1]:(kb + 1) * size[1]].any())
                assert bool(materialised[min(b, materialised.shape[0] - 1), 0, qb, kb]) == any_allowed
    # Nothing of size batch x queries x keys hides behind the mask_mod: only per-token tensors.
    captured = _closure_tensors(block_mask.mask_mod)
    assert all(tensor.numel() <= batch * keys for tensor in captured), [tensor.shape for tensor in captured]


@torch.no_grad()
def test_compiled_flex_attention_compiles_once_across_prompt_lengths():
    """The GPU's compiled FlexAttention (here with a cheap backend on CPU) reuses one graph for prompts of new
    lengths, and computes SDPA's result on the same mask."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch._dynamo.utils import counters

    from zaya_vl.lm.attention import compiled_flex_attention
    from zaya_vl.lm.masks import to_block_mask

    torch._dynamo.reset()
    counters.clear()
    flex = compiled_flex_attention("aot_eager")
    generator = torch.Generator().manual_seed(0)
    for length in (150, 200, 260):  # 2, 2 and 3 blocks of 128, the first equal to the batch size
        q, k, v = (torch.randn(2, heads, length, 16, generator=generator) for heads in (4, 2, 2))
        padding = torch.ones(2, length, dtype=torch.bool)
        padding[0, :7] = False
        rule = dict(batch_size=2, query_length=length, key_length=length, device=torch.device("cpu"),
                    padding_mask=padding)
        out = flex(q, k, v, block_mask=to_block_mask(**rule), scale=0.25, enable_gqa=True)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=build_attention_mask(**rule), scale=0.25, enable_gqa=True)
        torch.testing.assert_close(out[0, :, 7:], expected[0, :, 7:], atol=1e-5, rtol=1e-4)  # real queries
        torch.testing.assert_close(out[1], expected[1], atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
