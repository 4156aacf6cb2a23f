"""Checkpoints: reference layout → native, round trips, Auto classes, dtype/device_map, and named errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from zaya_vl import ZayaVL
from zaya_vl.lm import CheckpointMismatchError
from zaya_vl.weights import MissingWeightsError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "zaya1_vl_reference" / "batch_two_images_left_padded"


@pytest.fixture
def reference_dir(tmp_path):
    target = tmp_path / "reference"
    shutil.copytree(FIXTURE / "checkpoint", target)
    return target


@pytest.fixture
def case():
    return load_file(FIXTURE / "case.safetensors")


def forward(model, case):
    return model(input_ids=case["input_ids"], attention_mask=case["attention_mask"],
                 pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"]).logits


@torch.no_grad()
def test_reference_to_native_round_trip_keeps_logits_identical(reference_dir, tmp_path, case):
    model = ZayaVL.from_pretrained(reference_dir).eval()
    model.save_pretrained(tmp_path / "native")
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    keys = set(load_file(tmp_path / "native" / "model.safetensors"))
    assert config["model_type"] == "zaya_vl"
    assert "model.language_model.layers.1.mlp.experts.gate_up_proj" in keys
    assert "model.language_model.norm.weight" in keys and "model.vision_tower.merger.ln_q.weight" in keys
    assert not any("local_experts" in k or "lora_" in k or ".attn.self_attn." in k for k in keys)
    assert all(k.startswith(("model.language_model.", "model.vision_tower.", "lm_head.")) for k in keys)
    reloaded = ZayaVL.from_pretrained(tmp_path / "native").eval()
    original = model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in reloaded.state_dict().items())
    # Same weights, but not the same memory alignment (the reload is memory-mapped), and CPU GEMMs may round
    # differently by alignment: the logits agree to float rounding, not always bit for bit.
    torch.testing.assert_close(forward(reloaded, case), forward(model, case), rtol=0, atol=1e-5)
    # The reference's choices travel with the converted config.
    assert reloaded.config.text_config.skip_expert_output == "scaled_input"
    assert reloaded.config.text_config.router_rms_norm_eps == 1e-6


@torch.no_grad()
def test_auto_model_loads_both_layouts_without_remote_code(reference_dir, tmp_path, case):
    import zaya_vl  # noqa: F401  (registers the Auto classes)

    from_reference = transformers.AutoModelForImageTextToText.from_pretrained(reference_dir, image_attention="causal")
    assert isinstance(from_reference, ZayaVL) and from_reference.config.image_attention == "causal"
    from_reference.save_pretrained(tmp_path / "native")
    native = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "native")
    assert isinstance(native, ZayaVL)
    real = case["attention_mask"].bool()
    torch.testing.assert_close(forward(native.eval(), case)[real], case["logits"][real], atol=1e-4, rtol=0)


@torch.no_grad()
def test_torch_dtype_and_device_map(reference_dir, case):
    model = ZayaVL.from_pretrained(reference_dir, dtype=torch.bfloat16, device_map="cpu", image_attention="causal")
    assert model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.language_model.layers[0].mlp.gate.down_proj.weight.dtype == torch.float32  # the router stays fp32
    logits = forward(model.eval(), case).float()
    real = case["attention_mask"].bool()
    assert (logits[real] - case["logits"][real]).abs().max() < 0.25  # bf16 weights: close, not exact


def test_wrong_number_of_image_tokens_is_a_named_error(reference_dir, case):
    model = ZayaVL.from_pretrained(reference_dir).eval()
    input_ids = case["input_ids"].clone()
    input_ids[1, 7] = 5  # one image token fewer than the images give
    with pytest.raises(ValueError, match=r"The input has 10 image tokens .* but the images give 11 embeddings"):
        model(input_ids=input_ids, pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"])
    with pytest.raises(ValueError, match=r"image tokens but no pixel_values"):
        model(input_ids=case["input_ids"])


def test_missing_weight_file_is_a_named_error(reference_dir):
    (reference_dir / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match=r"No weights found in .*reference: expected one of "
                                                  r"model.safetensors.index.json, model.safetensors"):
        ZayaVL.from_pretrained(reference_dir)


def test_key_missing_from_a_reference_checkpoint_is_a_named_error(reference_dir):
    tensors = load_file(reference_dir / "model.safetensors")
    del tensors["model.layers.1.attn.self_attn.qkv.val_proj2.weight"]
    save_file(tensors, reference_dir / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint: model\.language_model\."
                                                      r"layers\.1\.self_attn\.qkv_proj\.v_proj_delayed\.weight"):
        ZayaVL.from_pretrained(reference_dir)


def test_unknown_key_in_a_reference_checkpoint_is_a_named_error(reference_dir):
    tensors = load_file(reference_dir / "model.safetensors")
    tensors["model.layers.0.mlp.zaya_block.mystery.weight"] = torch.zeros(2)
    save_file(tensors, reference_dir / "model.safetensors")
    with pytest.raises(KeyError, match=r"matches no known layout.*zyphra: "
                                       r"model\.layers\.0\.mlp\.zaya_block\.mystery\.weight"):
        ZayaVL.from_pretrained(reference_dir)


class NotATensor:
    pass


def test_pickled_weights_load_only_as_plain_tensors(reference_dir, case):
    tensors = load_file(reference_dir / "model.safetensors")
    (reference_dir / "model.safetensors").unlink()
    torch.save(tensors, reference_dir / "pytorch_model.bin")
    model = ZayaVL.from_pretrained(reference_dir, image_attention="causal").eval()
    real = case["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(forward(model, case)[real], case["logits"][real], atol=1e-4, rtol=0)
    torch.save({**tensors, "extra": NotATensor()}, reference_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        ZayaVL.from_pretrained(reference_dir)
