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
