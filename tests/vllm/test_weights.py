"""Zyphra's reference layout streams into our native names: the plugin's loader yields, in any key order, exactly
the tensors ``zaya_vl.conversion.convert_reference_state_dict`` builds from the whole checkpoint at once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zaya_vl.conversion import convert_reference_state_dict
from zaya_vl.vllm.weights import checkpoint_layout, native_weights

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "zaya1_vl_reference"


class _Text:
    num_hidden_layers, num_experts = 2, 4


def _fixture_state():
    files = sorted(FIXTURES.glob("*/checkpoint/model.safetensors"))
    if not files:
        pytest.skip("no reference fixtures")
    return load_file(files[0]), files[0].parent


def test_reference_layout_streams_to_native_names_in_any_order():
    import json

    state, folder = _fixture_state()
    config = json.loads((folder / "config.json").read_text())
    text = _Text()
    text.num_hidden_layers = config["num_hidden_layers"]
    text.num_experts = config["num_experts"]
    expected = convert_reference_state_dict(state, text.num_hidden_layers, text.num_experts)
    items = list(state.items())
    random.Random(0).shuffle(items)
    streamed = dict(native_weights(iter(items), text, layout="reference"))
    assert sorted(streamed) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(streamed[name], tensor), name


def test_a_missing_expert_is_named():
    state, folder = _fixture_state()
    import json

    config = json.loads((folder / "config.json").read_text())
    text = _Text()
    text.num_hidden_layers, text.num_experts = config["num_hidden_layers"], config["num_experts"]
    dropped = next(k for k in state if ".local_experts.1.linear_fc1" in k)
    items = [(k, v) for k, v in state.items() if k != dropped]
    with pytest.raises(KeyError, match=r"lacks experts \[1\]"):
        list(native_weights(iter(items), text, layout="reference"))


def test_layout_is_read_from_the_model_type():
    class Reference:
        model_type = "zaya1_vl"

    class Native:
        model_type = "zaya_vl"

    assert checkpoint_layout(Reference()) == "reference"
    assert checkpoint_layout(Native()) == "native"
