"""ZAYA1 (text) served by vLLM through our plugin equals our ZayaLM: greedy tokens identical and each step's
log-probability within 1e-4 (fp32, CPU, a tiny random checkpoint), one sequence at a time, a batch of mixed
lengths in flight together, and prompts split across prefill chunks."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import assert_matches, release, run_reference  # noqa: E402

pytestmark = pytest.mark.timeout(1800)

CHUNK = 16  # tokens per engine step: prompts longer than this are prefilled in chunks
MAX_NEW = 10


def _prompts() -> list[list[int]]:
    rng = random.Random(3)
    lengths = [13, 1, 3, 30, 47, 9, 21]  # one single-token prompt; three longer than a chunk
    return [[rng.randrange(3, 160) for _ in range(n)] for n in lengths]


SPEC = {
    "config": {"head_dim": 32, "layer_types": ["hybrid", "hybrid_sliding", "hybrid"], "sliding_window": 8,
               "attention_bias": True},
    "seed": 0, "std": 0.3, "skip_bias": -0.3, "prompts": _prompts(), "max_new": MAX_NEW,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("zaya_lm")
    return out / "checkpoint", run_reference("lm", SPEC, out)


@pytest.fixture(scope="module")
def llm(reference):
    from vllm import LLM

    checkpoint, _ = reference
    engine = LLM(model=str(checkpoint), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                 skip_tokenizer_init=True, max_model_len=256, max_num_seqs=8, enable_chunked_prefill=True,
                 max_num_batched_tokens=CHUNK, seed=0)
    yield engine
    release(engine)


def _generate(llm, prompts):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0, detokenize=False)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def test_engine_is_configured_to_chunk(llm):
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    assert scheduler.max_num_batched_tokens == CHUNK
    assert max(len(p) for p in SPEC["prompts"]) > 2 * CHUNK  # some prompt spans three chunks


def test_one_sequence(llm, reference):
    _, expected = reference
    assert_matches(_generate(llm, SPEC["prompts"][:1]), expected[:1])


def test_mixed_length_batch_with_chunked_prefill(llm, reference):
    # All prompts at once: decode steps of short prompts share engine steps with later prompts' prefill chunks.
    _, expected = reference
    assert_matches(_generate(llm, SPEC["prompts"]), expected)


def test_single_token_prompt_after_others(llm, reference):
    # A one-token prompt is scheduled like a decode step; its state slot was used by an earlier request and must
    # be read as empty.
    _, expected = reference
    assert_matches(_generate(llm, SPEC["prompts"][1:3]), expected[1:3])


def test_text_experts_run_through_vllms_fused_moe(llm):
    # The exactness tests above pass through vLLM's CPU fused-MoE kernel, not our experts' own path.
    kinds = llm.apply_model(lambda model: [type(layer.mlp.fused).__name__ for layer in model.model.layers])
    assert kinds == [["FusedExperts"] * len(SPEC["config"]["layer_types"])]
