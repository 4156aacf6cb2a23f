"""The one registry of named sizes: every name builds valid configs, and the CLIs offer exactly those names."""

import importlib
import json
from pathlib import Path

import pytest
import torch
import transformers

from zaya_vl.lm.presets import LM_SIZES, PRESETS, VISION_SIZES, lm_config, lm_size, vision_size

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(LM_SIZES))
def test_every_lm_size_builds_our_config_and_upstreams_alike(name):
    ours = lm_config(name)
    upstream = transformers.ZayaConfig(**lm_size(name))
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "moe_intermediate_size", "num_experts", "router_hidden_size"):
        assert getattr(ours, key) == getattr(upstream, key), key


@pytest.mark.parametrize("name", sorted(VISION_SIZES))
def test_every_vision_size_pairs_with_its_lm_and_builds_a_vl_config(name):
    from zaya_vl import ZayaVLConfig

    text = lm_config(name, vision_lora_rank_attn=4, vision_lora_rank_mlp=4)
    vision = vision_size(name)
    assert vision["out_hidden_size"] == text.hidden_size  # the projector's output is the LM's input width
    assert all(0 <= block < vision["depth"] for block in vision["fullatt_block_indexes"])
    config = ZayaVLConfig(text_config=text, vision_config=vision, image_token_id=5, vision_start_token_id=6,
                          vision_end_token_id=7)
    assert config.vision_config.depth == vision["depth"]
    assert config.text_config.hidden_size == text.hidden_size


def test_sizes_are_handed_out_as_copies_and_unknown_names_are_named():
    lm_size("medium")["hidden_size"] = 1
    vision_size("tiny")["fullatt_block_indexes"].append(9)
    assert LM_SIZES["medium"]["hidden_size"] == 512 and VISION_SIZES["tiny"]["fullatt_block_indexes"] == [1]
    with pytest.raises(KeyError, match="'huge'.*medium"):
        lm_size("huge")


def test_medium_kv_bytes_match_the_recorded_bench_run():
    # Recorded by `python -m bench.lm --preset medium` before the sizes moved into the registry.
    recorded = json.loads((ROOT / "bench" / "results_lm_medium_cpu.json").read_text())
    assert lm_config("medium").kv_cache_bytes_per_token(torch.float32) == recorded["kv_cache_bytes_per_token"]


def _help(module: str, monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module, names, default", [
    ("bench.lm", ["medium", "tiny", "zaya1-8b"], "medium"),
    ("bench.vl", ["medium", "tiny"], "medium"),
    ("bench.vllm_lm", ["medium", "zaya1-8b"], "medium"),
])
def test_bench_scripts_offer_registry_names(module, names, default, monkeypatch, capsys):
    assert set(names) <= set(LM_SIZES)
    assert "{" + ",".join(names) + "}" in _help(module, monkeypatch, capsys)
    bench = importlib.import_module(module)
    if module == "bench.lm":
        assert bench.PRESETS == {name: LM_SIZES[name] for name in names}
    if module == "bench.vl":
        assert bench.VISION == {name: VISION_SIZES[name] for name in names}


def test_describe_cli_offers_the_real_model_and_builds_it(capsys):
    from zaya_vl.cli import build_parser

    args = build_parser().parse_args(["describe"])
    assert args.preset == "zaya1-8b" and sorted(PRESETS) == ["zaya1-8b"]
    assert PRESETS["zaya1-8b"]().to_dict() == lm_config("zaya1-8b").to_dict()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["describe", "--preset", "medium"])
    assert "zaya1-8b" in capsys.readouterr().err
