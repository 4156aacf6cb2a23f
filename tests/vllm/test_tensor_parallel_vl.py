"""ZAYA1-VL served by vLLM with tensor parallelism (two CPU ranks) equals our ZayaVL: greedy tokens identical and
each step's log-probability within 1e-4, with vision LoRA on attention and experts (split across the ranks with
their projections), image tokens attending to every image token of the prompt ("images"), two images in a prompt,
one image, and a text-only prompt in flight together."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import (assert_matches, generate_images, image_requests, release, run_reference,  # noqa: E402
                     tp_engine, write_images)

pytestmark = pytest.mark.timeout(1800)

MAX_NEW = 8


def test_images_with_vision_lora_match_across_two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("zaya_vl_tp")
    paths = write_images(out, [(90, 60), (56, 120)], seed=3)
    spec = {
        "config": {"head_dim": 32}, "image_attention": "images", "seed": 4, "std": 0.3, "max_new": MAX_NEW,
        "prompts": [
            {"text": "<bos>Compare <image> and <image> please", "images": paths},
            {"text": "<bos>Describe the chart: sales rise from January to June.", "images": []},
            {"text": "<bos>What is the total? <image> Answer:", "images": paths[:1]},
        ],
    }
    expected = run_reference("vl", spec, out)
    engine = tp_engine(out / "checkpoint", max_model_len=512, max_num_seqs=4, limit_mm_per_prompt={"image": 2})
    try:
        assert_matches(generate_images(engine, image_requests(spec), MAX_NEW), expected)
    finally:
        release(engine)
