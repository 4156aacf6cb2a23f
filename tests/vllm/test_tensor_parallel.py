"""ZAYA1 (text) served by vLLM with tensor parallelism (two CPU ranks) equals our ZayaLM: greedy tokens identical
and each step's log-probability within 1e-4, for a batch of mixed lengths under chunked prefill; each rank holds
only its share of the heads (test_tensor_parallel_vl.py: the same for ZAYA1-VL)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import TP, assert_matches, release, run_reference, tp_engine  # noqa: E402

pytestmark = pytest.mark.timeout(1800)

CHUNK = 16
MAX_NEW = 8


def _prompts() -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(3, 160) for _ in range(n)] for n in (11, 1, 37, 5)]


# Two key heads of two query heads each: rank 0's value heads are the current-token half, rank 1's the delayed.
# The skip expert passes the token through (scaled), which the ranks must add once, not once each.
SPEC = {
    "config": {"head_dim": 32, "layer_types": ["hybrid", "hybrid_sliding"], "num_hidden_layers": 2,
               "sliding_window": 8, "attention_bias": True, "skip_expert_output": "scaled_input"},
    "seed": 1, "std": 0.3, "skip_bias": -0.3, "prompts": _prompts(), "max_new": MAX_NEW,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("zaya_lm_tp")
    return out / "checkpoint", run_reference("lm", SPEC, out)


@pytest.fixture(scope="module")
def llm(reference):
    checkpoint, _ = reference
    engine = tp_engine(checkpoint, skip_tokenizer_init=True, max_model_len=256, max_num_seqs=8,
                     enable_chunked_prefill=True, max_num_batched_tokens=CHUNK)
    yield engine
    release(engine)


def _generate(llm, prompts):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0, detokenize=False)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def test_mixed_length_batch_matches_across_two_ranks(llm, reference):
    _, expected = reference
    assert_matches(_generate(llm, SPEC["prompts"]), expected)


def test_each_rank_holds_its_share(llm):
    def shares(worker):  # sent by value (cloudpickle) as the RPC itself, so it needs no importable module
        layer = worker.get_model().model.layers[0]
        attention = layer.self_attn
        return (attention.num_heads, attention.num_kv_heads, tuple(attention.qkv_proj.q_proj.weight.shape),
                tuple(attention.o_proj.weight.shape), attention.qk_norm.temp.tolist())

    per_rank = llm.collective_rpc(shares)
    assert len(per_rank) == TP
    hidden, head_dim = 64, SPEC["config"]["head_dim"]
    # 4 query heads and 2 key heads in the checkpoint: 2 and 1 on each rank, their projections' rows and columns.
    assert [r[:4] for r in per_rank] == [(2, 1, (2 * head_dim, hidden), (hidden, 2 * head_dim))] * TP
    assert per_rank[0][4] != per_rank[1][4]  # each rank its own key head's temperature


def test_heads_that_do_not_split_evenly_are_refused():
    from zaya_vl.lm.config import ZayaLMConfig
    from zaya_vl.vllm.parallel import check_divisible

    with pytest.raises(ValueError, match="num_key_value_heads"):
        check_divisible(ZayaLMConfig(num_attention_heads=6, num_key_value_heads=3, moe_intermediate_size=64), 2)

