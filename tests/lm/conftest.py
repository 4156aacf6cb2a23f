import pytest
import torch
import transformers

from zaya_vl.lm import ZayaLM

transformers.logging.set_verbosity_error()

# Configs the parity suite runs on: sliding-window layers, deeper stacks, wider conv windows, GQA 4:1, biases.
PARITY_CONFIGS = {
    "sliding": dict(layer_types=["hybrid", "hybrid_sliding", "hybrid"], sliding_window=5),
    "deep_gqa4_conv3": dict(num_hidden_layers=4, num_experts=6, num_key_value_heads=1, cca_time0=3,
                            tie_word_embeddings=False,
                            layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding", "hybrid"], sliding_window=7),
    "no_gqa_biases": dict(num_key_value_heads=4, attention_bias=True, lm_head_bias=True, tie_word_embeddings=False),
}


@pytest.fixture(params=sorted(PARITY_CONFIGS))
def model_pair(request, tmp_path):
    """(upstream ZayaForCausalLM, our ZayaLM loaded from its save_pretrained directory), same random weights."""
    from zaya_vl.testing import tiny_upstream_zaya

    upstream = tiny_upstream_zaya(seed=sorted(PARITY_CONFIGS).index(request.param), std=0.3, skip_bias=-0.5,
                                  **PARITY_CONFIGS[request.param])
    upstream.save_pretrained(tmp_path)
    ours = ZayaLM.from_pretrained(tmp_path).eval()
    return upstream, ours


def left_padded_batch():
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, 160, (2, 14), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0  # sample 0 is left-padded by 5
    input_ids[0, :5] = 0
    return input_ids, attention_mask


@pytest.fixture
def prompt_batch():
    return left_padded_batch()


@pytest.fixture
def upstream_prompt_batch(model_pair):
    """The batch to compare with upstream on. Upstream zeroes padded *inputs* of the CCA projections, so with
    attention_bias=True the projection bias of padding leaks into the first real token's conv window and its
    padded output differs from the sample alone (ours zeroes the projected q|k, and does not). For such configs
    the upstream comparisons use an unpadded batch; `test_left_padded_batch_equals_each_sample_alone` still
    checks our padding."""
    upstream, _ = model_pair
    input_ids, attention_mask = left_padded_batch()
    if upstream.config.attention_bias:
        return input_ids[1:].repeat(2, 1), torch.ones_like(attention_mask)
    return input_ids, attention_mask
