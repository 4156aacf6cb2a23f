"""ZAYA1-VL served by vLLM through our plugin equals our ZayaVL: the same prompt tokens from the same text and
images (vLLM's placeholder expansion vs ZayaVLProcessor), greedy tokens identical and each step's log-probability
within 1e-4 (fp32, CPU, a tiny random checkpoint with vision LoRA on attention and experts): one image, several
images in a prompt, a text-only prompt, and an image whose tokens straddle a prefill chunk boundary, all in flight
together (causal image attention; the other modes are test_image_attention.py's), a checkpoint in the upstream
port's layout with its own "images" attention, and one in Zyphra's original release layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import (assert_matches, generate_images, image_requests, release, run_reference,  # noqa: E402
                     write_images)

pytestmark = pytest.mark.timeout(1800)

CHUNK = 32
MAX_NEW = 8
LEAD_TEXT = "read the table and give the value"  # ~20 tokens: the image then spans the 32nd token


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("zaya_vl")
    paths = write_images(out, [(90, 60), (56, 120), (200, 150)], seed=0)
    spec = {
        "config": {"head_dim": 32}, "image_attention": "causal", "seed": 0, "std": 0.3, "max_new": MAX_NEW,
        "prompts": [
            {"text": "<bos>What is the total? <image> Answer:", "images": paths[:1]},
            {"text": "<bos>Compare <image> and <image> please", "images": paths[:2]},
            {"text": "<bos>Describe the chart: sales rise from January to June.", "images": []},
            {"text": f"<bos>{LEAD_TEXT} <image> which row?", "images": paths[2:]},
        ],
    }
    return out, spec, run_reference("vl", spec, out)


@pytest.fixture(scope="module")
def llm(case):
    from vllm import LLM

    out, _, _ = case
    engine = LLM(model=str(out / "checkpoint"), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                 max_model_len=512, max_num_seqs=4, enable_chunked_prefill=True, max_num_batched_tokens=CHUNK,
                 limit_mm_per_prompt={"image": 2}, seed=0)
    yield engine
    release(engine)


def test_prompts_are_expanded_as_our_processor_expands_them(llm, case):
    _, spec, expected = case
    outputs = generate_images(llm, image_requests(spec), MAX_NEW)
    for output, reference in zip(outputs, expected, strict=True):
        assert output.prompt_token_ids == reference["prompt_ids"]


def test_one_image(llm, case):
    _, spec, expected = case
    assert_matches(generate_images(llm, image_requests(spec)[:1], MAX_NEW), expected[:1])


def test_image_straddling_a_prefill_chunk(llm, case):
    # Alone in the engine, the prompt is prefilled in chunks of exactly CHUNK tokens; its image's tokens run across
    # the first boundary, so the CCA state (conv window, delayed value and its LoRA input) carries image tokens.
    _, spec, expected = case
    straddler = expected[3]["prompt_ids"]
    image_id = json.loads((case[0] / "checkpoint" / "config.json").read_text())["image_token_id"]
    first = straddler.index(image_id)
    last = len(straddler) - 1 - straddler[::-1].index(image_id)
    assert first < CHUNK <= last, "the last prompt's image must straddle the first prefill chunk's end"
    assert_matches(generate_images(llm, image_requests(spec)[3:], MAX_NEW), expected[3:])


def test_images_and_text_in_flight_together(llm, case):
    _, spec, expected = case
    assert_matches(generate_images(llm, image_requests(spec), MAX_NEW), expected)


def serve_and_compare(spec: dict, out: Path) -> dict:
    """Write ``spec``'s checkpoint (its layout) with our reference's greedy run, serve that folder with vLLM (no
    overrides) and assert vLLM's tokens and log-probs match; returns the folder's config."""
    from vllm import LLM

    expected = run_reference("vl", spec, out)
    engine = LLM(model=str(out / "checkpoint"), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                 max_model_len=512, max_num_seqs=4, limit_mm_per_prompt={"image": 2}, seed=0)
    try:
        assert_matches(generate_images(engine, image_requests(spec), MAX_NEW), expected)
    finally:
        release(engine)
    return json.loads((out / "checkpoint" / "config.json").read_text())


def test_upstream_port_layout(case, tmp_path_factory):
    # The same kind of model saved in the upstream transformers port's layout (its config says which delayed-value
    # LoRA gate it uses, and its image tokens attend to every image token of the prompt, "images"): vLLM reads it
    # through the port's key table, with no overrides, and matches our model reading it.
    _, spec, _ = case
    port_spec = {**spec, "layout": "transformers", "seed": 2, "image_attention": "images"}
    assert "text_config" in serve_and_compare(port_spec, tmp_path_factory.mktemp("zaya_vl_port"))


def test_zyphra_release_layout(case, tmp_path_factory):
    # The same kind of model written as Zyphra's original release lays it out (flat Megatron-style config, one
    # tensor per expert, residual scales on the next sub-layer; the skip expert passes its scaled input on, and
    # image tokens attend causally, as the release's code does): vLLM reads it with no overrides and matches our
    # model reading the same folder.
    from zaya_vl.testing import ZYPHRA_TEXT_SETTINGS

    _, spec, _ = case
    release_spec = {**spec, "layout": "zyphra", "seed": 3, "image_attention": "causal",
                    "config": {**spec["config"], **ZYPHRA_TEXT_SETTINGS}}
    assert "text_config" not in serve_and_compare(release_spec, tmp_path_factory.mktemp("zaya_vl_release"))


def test_text_tokens_use_vllms_fused_moe_and_image_tokens_their_lora(llm):
    # Text rows through vLLM's CPU fused-MoE kernel; image rows through our experts, which hold their vision LoRA.
    layers = llm.apply_model(lambda model: [
        (type(layer.mlp.fused).__name__, layer.mlp.experts.vision_adapters is not None)
        for layer in model.model.layers])[0]
    assert layers and all(layer == ("FusedExperts", True) for layer in layers)
