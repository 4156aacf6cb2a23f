"""ZAYA1-VL's non-causal image attention served by vLLM through our plugin equals our ZayaVL (fp32, CPU, a tiny
random checkpoint with vision LoRA): greedy tokens identical and each step's log-probability within 1e-4 for
``image_attention`` = ``"bidirectional"``, ``"images"`` and ``"prefix"``, with a prompt holding two images and
prompts with and without images in flight together. The engine is asked for 32-token prefill chunks; the plugin
must turn that into whole-prompt prefill, and a step that splits a prompt with images must fail, not answer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import (assert_matches, generate_images, image_requests, release, run_reference,  # noqa: E402
                     write_images)

pytestmark = pytest.mark.timeout(1800)

MODES = ["bidirectional", "images", "prefix"]
MAX_NEW = 8
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Per mode (and causal, to show the mode matters): the checkpoint and our model's greedy outputs. The same
    seed gives the same weights in every mode."""
    out = tmp_path_factory.mktemp("zaya_vl_image_attention")
    paths = write_images(out, [(90, 60), (56, 120), (120, 90)], seed=4)
    prompts = [
        {"text": "<bos>Compare <image> and <image> please", "images": paths[:2]},
        {"text": "<bos>Describe the chart: sales rise from January to June.", "images": []},
        {"text": "<bos>What is the total? <image> Answer:", "images": paths[2:]},
        {"text": "<bos><image>", "images": paths[:1]},  # the prompt ends with the image's last tokens
    ]
    results = {}
    for mode in ["causal", *MODES]:
        spec = {"config": {"head_dim": 32, "layer_types": ["hybrid", "hybrid_sliding", "hybrid"],
                           "sliding_window": 8},
                "image_attention": mode, "seed": 0, "std": 0.3, "max_new": MAX_NEW, "prompts": prompts}
        results[mode] = (out / mode / "checkpoint", spec, run_reference("vl", spec, out / mode))
    return results


def _engine(checkpoint):
    from vllm import LLM

    # Chunked prefill asked for on purpose: the plugin must prefill prompts with images whole regardless.
    return LLM(model=str(checkpoint), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
               max_model_len=MAX_MODEL_LEN, max_num_seqs=4, enable_chunked_prefill=True, max_num_batched_tokens=32,
               limit_mm_per_prompt={"image": 2}, seed=0)


def _differs(a: dict, b: dict) -> bool:
    return a["tokens"] != b["tokens"] or max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_mode_matches_our_model(references, mode):
    checkpoint, spec, expected = references[mode]
    _, _, causal = references["causal"]
    # The mode changes our model's answers here, so a causal (or otherwise wrong) mask could not pass.
    assert any(_differs(e, c) for e, c in zip(expected, causal)), f"{mode} answers like causal: nothing tested"
    llm = _engine(checkpoint)
    try:
        scheduler = llm.llm_engine.vllm_config.scheduler_config
        assert not scheduler.enable_chunked_prefill and scheduler.max_num_batched_tokens >= MAX_MODEL_LEN
        outputs = generate_images(llm, image_requests(spec), MAX_NEW)
        for output, reference in zip(outputs, expected, strict=True):
            assert output.prompt_token_ids == reference["prompt_ids"]
        assert_matches(outputs, expected)
        # One request at a time too (a step with a single prefill sequence, then its decode steps alone).
        assert_matches(generate_images(llm, image_requests(spec)[:1], MAX_NEW), expected[:1])
    finally:
        release(llm)


def test_split_prompt_with_images_fails_rather_than_answers(references):
    # Force the live scheduler to cut prefills at 16 tokens (the plugin configured it not to; vLLM applies the cut
    # only with more than one request in flight): the two-image prompt's image tokens would have been attended
    # without the later image's keys.
    checkpoint, spec, _ = references["images"]
    llm = _engine(checkpoint)
    try:
        llm.llm_engine.engine_core.engine_core.scheduler.scheduler_config.long_prefill_token_threshold = 16
        with pytest.raises(Exception, match="more than one engine step"):
            generate_images(llm, image_requests(spec)[:2], MAX_NEW)
    finally:
        release(llm)
