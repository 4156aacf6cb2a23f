"""ZAYA1-VL served by vLLM through our plugin equals our ZayaVL: the same prompt tokens from the same text and
images (vLLM's placeholder expansion vs ZayaVLProcessor), greedy tokens identical and each step's log-probability
within 1e-4 (fp32, CPU, a tiny random checkpoint with vision LoRA on attention and experts): one image, several
images in a prompt, a text-only prompt, and an image whose tokens straddle a prefill chunk boundary, all in flight
together. On CPU (an attention backend without prefix-LM ranges) a checkpoint with bidirectional image attention
is refused, never served with causal masks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from harness import assert_matches, release, run_reference  # noqa: E402

pytestmark = pytest.mark.timeout(1800)

CHUNK = 32
MAX_NEW = 8
LEAD_TEXT = "read the table and give the value"  # ~20 tokens: the image then spans the 32nd token


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("zaya_vl")
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate([(90, 60), (56, 120), (200, 150)]):
        path = out / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
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


def _requests(spec):
    return [{"prompt": p["text"],
             "multi_modal_data": {"image": [Image.open(path).convert("RGB") for path in p["images"]]}}
            if p["images"] else {"prompt": p["text"]} for p in spec["prompts"]]


def _generate(llm, requests):
    from vllm import SamplingParams

    return llm.generate(requests, SamplingParams(temperature=0, max_tokens=MAX_NEW, logprobs=0), use_tqdm=False)


def test_prompts_are_expanded_as_our_processor_expands_them(llm, case):
    _, spec, expected = case
    outputs = _generate(llm, _requests(spec))
    for output, reference in zip(outputs, expected, strict=True):
        assert output.prompt_token_ids == reference["prompt_ids"]


def test_one_image(llm, case):
    _, spec, expected = case
    assert_matches(_generate(llm, _requests(spec)[:1]), expected[:1])


def test_image_straddling_a_prefill_chunk(llm, case):
    # Alone in the engine, the prompt is prefilled in chunks of exactly CHUNK tokens; its image's tokens run across
    # the first boundary, so the CCA state (conv window, delayed value and its LoRA input) carries image tokens.
    _, spec, expected = case
    straddler = expected[3]["prompt_ids"]
    image_id = json.loads((case[0] / "checkpoint" / "config.json").read_text())["image_token_id"]
    first = straddler.index(image_id)
    last = len(straddler) - 1 - straddler[::-1].index(image_id)
    assert first < CHUNK <= last, "the last prompt's image must straddle the first prefill chunk's end"
    assert_matches(_generate(llm, _requests(spec)[3:]), expected[3:])


def test_images_and_text_in_flight_together(llm, case):
    _, spec, expected = case
    assert_matches(_generate(llm, _requests(spec)), expected)


@pytest.mark.parametrize("mode", ["bidirectional", "images", "prefix"])
def test_image_attention_that_cpu_cannot_serve_is_refused(case, tmp_path, mode):
    from vllm import LLM

    out, _, _ = case
    checkpoint = tmp_path / mode
    shutil.copytree(out / "checkpoint", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["image_attention"] = mode
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="prefix-LM"):
        LLM(model=str(checkpoint), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
            max_model_len=512, max_num_seqs=2, limit_mm_per_prompt={"image": 1})


def test_upstream_port_layout(case, tmp_path_factory):
    # The same kind of model saved in the upstream transformers port's layout (its config says which delayed-value
    # LoRA gate it uses): vLLM reads it through the port's key table and matches our model reading it.
    from vllm import LLM

    _, spec, _ = case
    out = tmp_path_factory.mktemp("zaya_vl_port")
    port_spec = {**spec, "layout": "transformers", "seed": 2}
    expected = run_reference("vl", port_spec, out)
    engine = LLM(model=str(out / "checkpoint"), dtype="float32", enforce_eager=True, enable_prefix_caching=False,
                 max_model_len=512, max_num_seqs=4, limit_mm_per_prompt={"image": 2}, seed=0,
                 hf_overrides={"image_attention": "causal"})
    try:
        assert_matches(_generate(engine, _requests(port_spec)), expected)
    finally:
        release(engine)
