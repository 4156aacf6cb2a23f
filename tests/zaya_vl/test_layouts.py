"""Checkpoint layouts: which one a folder is, how each is read and written, and what a broken folder says."""

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zaya_vl import ZayaVL
from zaya_vl.conversion import LAYOUTS, NATIVE, NATIVE_V1, TRANSFORMERS, ZYPHRA, LayoutKeyError, detect_layout
from zaya_vl.testing import ZYPHRA_TEXT_SETTINGS, image_prompt, randomize_, save_zyphra_checkpoint, tiny_vl_config
from zaya_vl.weights import CorruptCheckpointError

REFERENCE = Path(__file__).parents[1] / "fixtures" / "zaya1_vl_reference" / "batch_two_images_left_padded"
PORT = Path(__file__).parents[1] / "fixtures" / "port_zaya1_vl" / "checkpoints" / "main" / "model.safetensors"
BUNDLED = Path(__file__).parents[2] / "examples" / "tiny_docvqa" / "model" / "model.safetensors"


@pytest.fixture
def reference_dir(tmp_path):
    target = tmp_path / "reference"
    shutil.copytree(REFERENCE / "checkpoint", target)
    return target


@pytest.fixture(scope="module")
def tiny_model():
    return randomize_(ZayaVL(tiny_vl_config(image_attention="images")), seed=3).eval()


def logits(model, prompt):
    with torch.no_grad():
        return model(**prompt).logits


def test_the_layout_is_chosen_by_the_tensor_names(tiny_model):
    native = list(tiny_model.state_dict())
    assert detect_layout(native).name == "native"  # vision blocks' `attn.` must not look like Zyphra's sub-layers
    assert detect_layout(load_file(REFERENCE / "checkpoint" / "model.safetensors")) is ZYPHRA
    assert detect_layout([TRANSFORMERS.checkpoint_name(key) for key in native]) is TRANSFORMERS
    assert detect_layout([NATIVE_V1.checkpoint_name(key) for key in native]) is NATIVE_V1


def test_each_layouts_marker_is_carried_by_its_checkpoints_only(tiny_model):
    """Real folders of every layout: exactly one marker matches some key of each (the native fallback aside)."""
    import re

    native = list(tiny_model.state_dict())
    folders = {"native": native, "native_v1": list(load_file(BUNDLED)),
               "zyphra": list(load_file(REFERENCE / "checkpoint" / "model.safetensors")),
               "transformers": list(load_file(PORT))}
    assert set(folders) == set(LAYOUTS)
    for name, keys in folders.items():
        carried = {layout.name for layout in LAYOUTS.values() if any(re.match(layout.marker, key) for key in keys)}
        assert carried == {name}, (name, carried)
        assert detect_layout(keys).name == name
    # Decoder-layer keys alone, which the port shares with ours, do not make a folder look like the port's.
    assert detect_layout([key for key in native if key.startswith("model.language_model.layers.")]) is NATIVE


def test_keys_from_two_layouts_are_an_error_naming_both(tiny_model):
    native = list(tiny_model.state_dict())
    mixed = native + ["vision_tower.merger.ln_q.weight", "model.layers.0.self_attn.o_proj.weight"]
    with pytest.raises(LayoutKeyError, match=r"mix layouts: .*\(native\), .*model\.layers\.0\.self_attn\.o_proj"
                                             r"\.weight \(native_v1\)"):
        detect_layout(mixed)


def test_saving_in_the_transformers_layout_writes_the_port_names_and_reloads_identically(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "port", layout="transformers")
    keys = set(load_file(tmp_path / "port" / "model.safetensors"))
    config = json.loads((tmp_path / "port" / "config.json").read_text())
    # The port's names (as its modeling code declares them), not ours.
    assert "model.language_model.layers.0.self_attn.qkv_proj.q_lora_a.weight" in keys
    assert "model.language_model.layers.1.mlp.experts.lora_gate_up_proj_b" in keys
    assert "model.language_model.layers.0.mlp.gate.router_mlp.rmsnorm_eda.weight" in keys
    assert "model.language_model.final_norm.weight" in keys and "model.visual.merger.ln_q.weight" in keys
    assert "lm_head.weight" not in keys  # tied, as the port ties it
    assert not any(key.startswith(("vision_tower.", "model.layers.")) or "vision_adapters" in key for key in keys)
    assert config["model_type"] == "zaya1_vl" and config["text_config"]["model_type"] == "zaya1_vl_text"
    reloaded = ZayaVL.from_pretrained(tmp_path / "port").eval()
    original = tiny_model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in reloaded.state_dict().items())
    # A port checkpoint defaults to the port's behaviour.
    assert reloaded.config.image_attention == "images"
    assert reloaded.config.text_config.vision_lora_delayed_gate == "previous_token"
    assert reloaded.config.text_config.skip_expert_output == "zero"


def name_patterns(keys) -> set[str]:
    """Tensor names with layer, expert and vision-block indices folded: models of other sizes compare."""
    return {re.sub(r"\.(layers|local_experts|blocks)\.\d+\.", r".\1.N.", key) for key in keys}


def test_a_model_written_in_the_release_layout_carries_the_releases_names_and_reads_back_identically(tmp_path):
    model = randomize_(ZayaVL(tiny_vl_config(image_attention="causal", **ZYPHRA_TEXT_SETTINGS)), seed=4).eval()
    save_zyphra_checkpoint(model, tmp_path / "release")
    # The names and config keys of Zyphra's own checkpoint (the fixture), not only what our reader accepts.
    written = load_file(tmp_path / "release" / "model.safetensors")
    assert name_patterns(written) == name_patterns(load_file(REFERENCE / "checkpoint" / "model.safetensors"))
    config = json.loads((tmp_path / "release" / "config.json").read_text())
    assert set(config) <= set(json.loads((REFERENCE / "checkpoint" / "config.json").read_text()))
    assert "text_config" not in config and config["model_type"] == "zaya1_vl"
    reloaded = ZayaVL.from_pretrained(tmp_path / "release").eval()
    assert reloaded.config.image_attention == "causal"  # the release's reference code attends causally
    original = model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in reloaded.state_dict().items())
    prompt = image_prompt([(1, 4, 4), (1, 2, 4)], seed=2)
    torch.testing.assert_close(logits(reloaded, prompt), logits(model, prompt), rtol=0, atol=0)


def test_settings_the_release_config_cannot_express_are_named_not_written(tmp_path):
    # The port's gate for the delayed value's LoRA: the release's code has only its own.
    model = ZayaVL(tiny_vl_config(image_attention="causal", vision_lora_delayed_gate="previous_token",
                                  **ZYPHRA_TEXT_SETTINGS))
    with pytest.raises(ValueError, match=r"cannot express text_config\.vision_lora_delayed_gate='previous_token' "
                                         r"\(it reads 'current_token'\)"):
        save_zyphra_checkpoint(model, tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_generation_config_survives_loading_and_saving_every_layout(reference_dir, tmp_path):
    written = {"eos_token_id": [2, 7, 11], "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    (reference_dir / "generation_config.json").write_text(json.dumps(written))
    model = ZayaVL.from_pretrained(reference_dir)
    assert model.generation_config.eos_token_id == [2, 7, 11] and model.generation_config.temperature == 0.6
    for layout in ("native", "transformers"):
        model.save_pretrained(tmp_path / layout, layout=layout)
        saved = json.loads((tmp_path / layout / "generation_config.json").read_text())
        assert saved["eos_token_id"] == [2, 7, 11] and saved["top_p"] == 0.9
        assert ZayaVL.from_pretrained(tmp_path / layout).generation_config.eos_token_id == [2, 7, 11]


def test_an_invalid_generation_config_is_an_error_naming_the_file(reference_dir):
    (reference_dir / "generation_config.json").write_text('{"eos_token_id": [2, 7')
    with pytest.raises(ValueError, match=r"generation_config\.json: invalid generation config"):
        ZayaVL.from_pretrained(reference_dir)


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_a_truncated_safetensors_file_is_named_as_truncated(reference_dir, cut):
    file = reference_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: truncated"):
        ZayaVL.from_pretrained(reference_dir)


def test_a_corrupt_safetensors_header_is_named(reference_dir):
    file = reference_dir / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:12] = b"\xff\xfe{["
    file.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: corrupt"):
        ZayaVL.from_pretrained(reference_dir)


def test_an_index_whose_shard_leaves_the_folder_is_refused(reference_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (reference_dir / "model.safetensors").rename(outside / "x.safetensors")
    keys = load_file(outside / "x.safetensors")
    index = {"metadata": {}, "weight_map": {key: "../outside/x.safetensors" for key in keys}}
    (reference_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match=r"leaves the checkpoint folder"):
        ZayaVL.from_pretrained(reference_dir)


def test_an_index_without_a_weight_map_is_named(reference_dir):
    (reference_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CorruptCheckpointError, match=r"index\.json: not a valid checkpoint index"):
        ZayaVL.from_pretrained(reference_dir)


def test_a_folder_matching_no_layout_names_the_first_unmapped_keys_per_layout(reference_dir):
    tensors = load_file(reference_dir / "model.safetensors")
    tensors["model.layers.0.attn.something_new.weight"] = torch.zeros(2)
    save_file(tensors, reference_dir / "model.safetensors")
    with pytest.raises(LayoutKeyError, match=r"zyphra: model\.layers\.0\.attn\.something_new\.weight; "
                                             r"transformers: "):
        ZayaVL.from_pretrained(reference_dir)


def test_config_and_tensors_from_different_layouts_are_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "port", layout="transformers")
    shutil.copy(REFERENCE / "checkpoint" / "config.json", tmp_path / "port" / "config.json")
    with pytest.raises(ValueError, match=r"config\.json is in the 'zyphra' layout but the tensors are in the "
                                         r"'transformers' layout"):
        ZayaVL.from_pretrained(tmp_path / "port")


def test_unknown_config_keys_are_named_once(reference_dir, caplog):
    config = json.loads((reference_dir / "config.json").read_text())
    config["zaya_future_knob"] = 3
    (reference_dir / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        ZayaVL.from_pretrained(reference_dir)
        ZayaVL.from_pretrained(reference_dir)
    named = [record for record in caplog.records if "zaya_future_knob" in record.getMessage()]
    assert len(named) == 1


def test_release_config_keys_are_read_under_their_megatron_names(reference_dir, tmp_path):
    config = json.loads((reference_dir / "config.json").read_text())
    for key in ("rope_parameters", "rope_theta", "partial_rotary_factor"):
        config.pop(key, None)
    config.update(rotary_base=300_000, rope_pct=0.25)
    (reference_dir / "config.json").write_text(json.dumps(config))
    text = ZayaVL.from_pretrained(reference_dir, strict=False).config.text_config
    assert text.rope_parameters["hybrid"]["rope_theta"] == 300_000.0
    assert text.rope_parameters["hybrid"]["partial_rotary_factor"] == 0.25
    assert text.rms_norm_eps == config["norm_epsilon"]
    assert text.router_hidden_size == config["zaya_mlp_expansion"]
    assert text.moe_intermediate_size == config["ffn_hidden_size"] // 2


def test_a_generated_image_token_gets_no_vision_lora(tiny_model):
    """The LoRA follows the pixels: a decode step whose token equals the image token is text."""
    from zaya_vl.lm.cache import ZayaCache

    prompt = image_prompt([(1, 4, 4)], seed=1)
    image_token = tiny_model.config.image_token_id
    without_lora = randomize_(ZayaVL(tiny_model.config), seed=3).eval()
    for module in without_lora.modules():
        if hasattr(module, "B") and isinstance(module.B, torch.nn.Parameter):
            module.B.data.zero_()
    steps = []
    for model in (tiny_model, without_lora):
        cache = ZayaCache(model.config.text_config, batch_size=1)
        with torch.no_grad():
            # The same prefill state for both: run the prefill with the LoRA model, then decode the image token.
            tiny_model(**prompt, cache=cache, use_cache=True)
            steps.append(model(input_ids=torch.tensor([[image_token]]), cache=cache, use_cache=True).logits)
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=0)


def test_the_default_config_is_zaya1_vl_8b_with_the_ports_tower():
    from zaya_vl import ZayaVLConfig

    config = ZayaVLConfig()  # vLLM's transformers builds one with no arguments to print it
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size == 2048
    assert config.vision_config.hidden_size == 1280 and config.text_config.num_hidden_layers == 40


def test_saving_for_the_port_names_the_settings_the_port_computes_otherwise(tiny_model, tmp_path, caplog):
    from zaya_vl.testing import tiny_vl_config

    model = randomize_(ZayaVL(tiny_vl_config(image_attention="bidirectional")), seed=3).eval()
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path / "port", layout="transformers")
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "image_attention='images'" in messages and "vision_lora_delayed_gate='previous_token'" in messages
    assert "sliding_window_masks_padding" not in messages  # the model has no sliding layer
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tiny_model.save_pretrained(tmp_path / "port2", layout="transformers")  # attends as the port does
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "image_attention" not in messages and "vision_lora_delayed_gate='previous_token'" in messages
