"""zaya_vl.lm reproduces upstream transformers.ZayaForCausalLM (same random weights, fp32, CPU)."""

import torch

ATOL = 1e-4


@torch.no_grad()
def test_full_forward_logits_match_upstream(model_pair):
    upstream, ours = model_pair
    input_ids = torch.randint(3, 160, (2, 20), generator=torch.Generator().manual_seed(0))
    expected = upstream(input_ids).logits
    actual = ours(input_ids).logits
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero tensors
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_left_padded_batch_equals_each_sample_alone(model_pair, prompt_batch):
    _, ours = model_pair
    input_ids, attention_mask = prompt_batch
    batched = ours(input_ids, attention_mask=attention_mask).logits
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].bool()
        alone = ours(input_ids[row, real][None]).logits[0]
        torch.testing.assert_close(batched[row, real], alone, atol=ATOL, rtol=0)


@torch.no_grad()
def test_padded_forward_matches_upstream_on_real_tokens(model_pair, upstream_prompt_batch):
    upstream, ours = model_pair
    input_ids, attention_mask = upstream_prompt_batch
    batched = ours(input_ids, attention_mask=attention_mask).logits
    expected = upstream(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(batched[real], expected[real], atol=ATOL, rtol=0)


@torch.no_grad()
def test_cached_step_by_step_decode_equals_full_forward(model_pair):
    _, ours = model_pair
    input_ids = torch.randint(3, 160, (2, 18), generator=torch.Generator().manual_seed(1))
    full = ours(input_ids, use_cache=False).logits
    prefix = 6
    out = ours(input_ids[:, :prefix], use_cache=True)
    step_logits = [out.logits]
    cache = out.cache
    for t in range(prefix, input_ids.shape[1]):
        out = ours(input_ids[:, t:t + 1], cache=cache, use_cache=True)
        step_logits.append(out.logits)
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=ATOL, rtol=0)
    assert cache.get_seq_length() == input_ids.shape[1]


@torch.no_grad()
def test_cached_decode_after_left_padding_matches_upstream_steps(model_pair, upstream_prompt_batch):
    upstream, ours = model_pair
    input_ids, attention_mask = upstream_prompt_batch
    expected = upstream.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    actual = ours.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                           output_logits=True, return_dict_in_generate=True)
    torch.testing.assert_close(torch.stack(actual.logits), torch.stack(expected.logits), atol=ATOL, rtol=0)


@torch.no_grad()
def test_greedy_generate_ids_identical_to_upstream(model_pair, upstream_prompt_batch):
    upstream, ours = model_pair
    input_ids, attention_mask = upstream_prompt_batch
    expected = upstream.generate(input_ids, attention_mask=attention_mask, max_new_tokens=16, do_sample=False)
    actual = ours.generate(input_ids, attention_mask=attention_mask, max_new_tokens=16, do_sample=False)
    assert actual.shape == (2, input_ids.shape[1] + 16)
    assert torch.equal(actual, expected)
    assert len(set(actual[:, input_ids.shape[1]:].flatten().tolist())) > 2  # a non-degenerate continuation


@torch.no_grad()
def test_beam_search_matches_upstream(model_pair, upstream_prompt_batch):
    upstream, ours = model_pair
    input_ids, attention_mask = upstream_prompt_batch
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, num_beams=3)
    assert torch.equal(ours.generate(input_ids, **kwargs), upstream.generate(input_ids, **kwargs))
