"""A careless or hostile checkpoint folder fails naming the file and key, or loads exactly; never loads wrong."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zaya_vl import ZayaVL, ZayaVLProcessor
from zaya_vl.weights import CorruptCheckpointError

BUNDLED = Path(__file__).parents[2] / "examples" / "tiny_docvqa" / "model"


@pytest.fixture
def folder(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(BUNDLED, target)
    return target


def edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", "192", r"hidden_size must be a positive integer, got '192' \(str\)"),
    ("num_hidden_layers", 4.0, r"num_hidden_layers must be a positive integer, got 4\.0 \(float\)"),
    ("rms_norm_eps", "1e-5", r"rms_norm_eps must be a positive finite number, got '1e-5'"),
    ("rms_norm_eps", -1, r"rms_norm_eps must be a positive finite number, got -1"),
    ("num_experts", 0, r"num_experts must be a positive integer, got 0"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_named(folder, key, value, message):
    edit_config(folder, lambda config: config["text_config"].update({key: value}))
    with pytest.raises(ValueError, match=message):
        ZayaVL.from_pretrained(folder)


def test_an_image_token_outside_the_vocabulary_is_named(folder):
    edit_config(folder, lambda config: config.update(image_token_id=10 ** 6))
    with pytest.raises(ValueError, match=r"image_token_id=1000000 is not a token id of the vocabulary"):
        ZayaVL.from_pretrained(folder)


def test_a_folder_without_config_json_says_so(folder):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        ZayaVL.from_pretrained(folder)


def test_nan_weights_are_refused(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].clone()
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"model\.norm\.weight holds NaN or infinite values"):
        ZayaVL.from_pretrained(folder)


def test_integer_data_for_a_float_parameter_is_refused(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].round().to(torch.int64)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"model\.norm\.weight holds integer data"):
        ZayaVL.from_pretrained(folder)


@torch.no_grad()
def test_an_index_without_metadata_loads_the_same_weights(folder):
    original = ZayaVL.from_pretrained(folder).state_dict()
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    index = {"weight_map": {key: "model-00001-of-00001.safetensors" for key in tensors}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    reloaded = ZayaVL.from_pretrained(folder).state_dict()
    assert reloaded.keys() == original.keys()
    assert all(torch.equal(reloaded[key], original[key]) for key in original)


def test_a_truncated_tokenizer_is_named(folder):
    data = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid JSON"):
        ZayaVLProcessor.from_pretrained(folder)


def test_a_non_numeric_pixel_budget_is_named(folder):
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = folder / name
        if file.exists():
            config = json.loads(file.read_text())
            target = config.get("image_processor", config)
            target.setdefault("size", {})["longest_edge"] = "lots"
            file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"size\.longest_edge .* must be a positive integer, got 'lots'"):
        ZayaVLProcessor.from_pretrained(folder)
