"""Checkpoints written by the upstream transformers port load with no overrides and compute what the port computed.

The fixtures (tests/fixtures/port_zaya1_vl, see its README) were made by the port's own code (revision b53060fb,
eager attention, float32, CPU): multi-image and left-padded batches, rope theta 3e5, nonzero LoRA B and balancing
biases, a sliding layer; and an original-release folder with Megatron-style keys run through the port's converter.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zaya_vl import ZayaVL
from zaya_vl.configuration import ReferenceZayaVLConfig

PORT = Path(__file__).parents[1] / "fixtures" / "port_zaya1_vl"
CASES = ["single_image", "batch_multi_image_left_padded", "sliding_hybrid_left_padded"]


def load_case(name):
    meta = json.loads((PORT / "cases" / name / "case.json").read_text())
    return meta, load_file(PORT / "cases" / name / "case.safetensors")


@pytest.fixture(scope="module")
def models():
    return {name: ZayaVL.from_pretrained(PORT / "checkpoints" / name).eval() for name in ("main", "sliding")}


def model_for(models, meta):
    return models[Path(meta["checkpoint"]).name]


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_forward_matches_the_port(models, name):
    meta, case = load_case(name)
    model = model_for(models, meta)
    inputs = {key: case[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    torch.testing.assert_close(model.get_image_features(case["pixel_values"], case["image_grid_thw"]),
                               case["image_embeds"], rtol=0, atol=1e-5)
    logits = model(**inputs, use_cache=False).logits
    real = case["attention_mask"].bool()
    assert (logits[real] - case["logits"][real]).abs().max() <= 1e-4


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_greedy_generation_matches_the_port(models, name):
    meta, case = load_case(name)
    model = model_for(models, meta)
    inputs = {key: case[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    # The fixtures' generate stopped only at the text config's EOS (the extra ids of generation_config.json were
    # not in effect there), so one sample runs on past id 318.
    out = model.generate(**inputs, max_new_tokens=meta["max_new_tokens"], do_sample=False, output_logits=True,
                         return_dict_in_generate=True, eos_token_id=model.config.text_config.eos_token_id)
    assert torch.equal(out.sequences, case["generated_ids"])
    assert (torch.stack(out.logits, dim=1) - case["generated_step_logits"]).abs().max() <= 1e-4


def test_port_checkpoints_take_the_ports_behaviour_without_overrides(models):
    config = models["main"].config
    assert config.image_attention == "images"
    assert config.text_config.skip_expert_output == "zero"
    assert config.text_config.router_rms_norm_eps is None  # the router normalises with rms_norm_eps
    assert config.text_config.vision_lora_delayed_gate == "previous_token"
    assert config.text_config.rope_parameters["hybrid"]["rope_theta"] == 300_000.0
    generation = json.loads((PORT / "checkpoints" / "main" / "generation_config.json").read_text())
    assert models["main"].generation_config.eos_token_id == generation["eos_token_id"]


# Fields of our config that both the original keys and the port's converted config determine.
ARCHITECTURE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "moe_intermediate_size", "num_experts", "router_hidden_size", "rms_norm_eps",
                "cca_time0", "cca_time1", "tie_word_embeddings", "max_position_embeddings", "vision_lora_rank_attn",
                "vision_lora_rank_mlp", "bos_token_id", "eos_token_id", "pad_token_id", "layer_types")


def test_an_original_release_config_maps_every_key_as_the_ports_converter_does():
    original = ReferenceZayaVLConfig.from_pretrained(PORT / "original_layout" / "checkpoint")
    converted = ReferenceZayaVLConfig.from_pretrained(PORT / "original_layout" / "converted")
    assert original.layout == "zyphra" and converted.layout == "transformers"
    ours, theirs = original.to_native(), converted.to_native()
    for field in ARCHITECTURE:
        assert getattr(ours.text_config, field) == getattr(theirs.text_config, field), field
    assert ours.text_config.rope_parameters["hybrid"] == theirs.text_config.rope_parameters["hybrid"]
    for field in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(ours, field) == getattr(theirs, field), field
    for field in ("depth", "hidden_size", "num_heads", "intermediate_size", "in_channels", "patch_size",
                  "temporal_patch_size", "spatial_merge_size", "window_size", "out_hidden_size",
                  "fullatt_block_indexes", "tokens_per_second"):
        assert getattr(ours.vision_config, field) == getattr(theirs.vision_config, field), field
    # What the original release means by the reference's behaviour stays the reference's.
    assert ours.text_config.skip_expert_output == "scaled_input" and ours.image_attention == "causal"


@torch.no_grad()
def test_an_original_release_checkpoint_loads_and_differs_from_the_port_only_by_the_references_choices(models):
    """The same weights in the original layout, read with the port's behaviour settings, are the port's model."""
    original = ZayaVL.from_pretrained(
        PORT / "original_layout" / "checkpoint", image_attention="images").eval()
    text = original.config.text_config
    text.skip_expert_output, text.router_rms_norm_eps = "zero", None
    text.vision_lora_delayed_gate, text.sliding_window_masks_padding = "previous_token", False
    rebuilt = ZayaVL(original.config).eval()
    rebuilt.load_state_dict(original.state_dict())
    meta, case = load_case("batch_multi_image_left_padded")
    inputs = {key: case[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    real = case["attention_mask"].bool()
    logits = rebuilt(**inputs, use_cache=False).logits
    assert (logits[real] - case["logits"][real]).abs().max() <= 1e-4
