"""YAML configs: strict keys, types, overrides, and the shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from zaya_vl.training import ConfigError, config_from_dict, load_config
from zaya_vl.training.config import apply_override, save_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "train"
MINIMAL = {"output_dir": "out", "model": {"path": "m"}, "data": {"train": "d.jsonl"}}


def test_examples_load():
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {f.stem for f in files} >= {"text_pretrain", "text_sft", "vl_align", "vl_sft"}
    for file in files:
        config = load_config(file)
        assert config.output_dir and config.data.train


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        config_from_dict({**MINIMAL, "optim": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        config_from_dict({**MINIMAL, "trian": {}})


def test_types_and_choices_are_checked():
    with pytest.raises(ConfigError, match=r"data.seq_len: expected an int, got 'long'"):
        config_from_dict({**MINIMAL, "data": {"train": "d", "seq_len": "long"}})
    with pytest.raises(ConfigError, match=r"schedule.name: 'linear' is not one of"):
        config_from_dict({**MINIMAL, "schedule": {"name": "linear"}})
    with pytest.raises(ConfigError, match="model: set exactly one of"):
        config_from_dict({**MINIMAL, "model": {"path": "m", "config": {"hidden_size": 8}}})
    with pytest.raises(ConfigError, match="train.max_steps: must be >= 1"):
        config_from_dict({**MINIMAL, "train": {"max_steps": 0}})


def test_numbers_in_any_yaml_spelling(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\nmodel: {path: m}\ndata: {train: d}\noptim: {lr: 1e-4}\n"
                    "balancing: {enabled: true}\nlora: {r: 4}\n")
    config = load_config(path)
    assert config.optim.lr == 1e-4  # PyYAML reads `1e-4` as a string
    assert config.balancing.enabled == "true" and config.lora.r == 4 and config.lora.target_modules == ["o_proj"]


def test_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    save_config(config_from_dict(MINIMAL), path)
    config = load_config(path, ["train.max_steps=7", "freeze.freeze=[model.embed_tokens.*]", "optim.grad_clip=null"])
    assert config.train.max_steps == 7 and config.freeze.freeze == ["model.embed_tokens.*"]
    assert config.optim.grad_clip is None
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "train.max_steps")


@pytest.mark.parametrize("override, message", [
    ("optim.grad_clip=-1", "optim.grad_clip: must be > 0, got -1.0"),  # a negative clip would flip the gradient
    ("optim.lr=-1e-3", "optim.lr: must be > 0, got -0.001"),
    ("optim.lr=.nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=.inf", "optim.lr: must be a finite number, got inf"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0"),
    ("optim.eps=0", "optim.eps: must be > 0"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas\[1\]: must be < 1, got 1.0"),
    ("train.cell_loss_weight=.nan", "train.cell_loss_weight: must be a finite number"),
    ("train.save_every=0", "train.save_every: must be >= 1, got 0"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints: must be >= 0"),
    ("seed=-3", "seed: must be >= 0, got -3"),
    ("schedule.min_lr_ratio=1.5", "schedule.min_lr_ratio: must be <= 1, got 1.5"),
    ("schedule.warmup_steps=-2", "schedule.warmup_steps: must be >= 0"),
    ("balancing.kp=-0.1", "balancing.kp: must be >= 0"),
    ("balancing.output_limit=0", "balancing.output_limit: must be > 0"),
    ("lora.alpha=0", "lora.alpha: must be > 0"),
    ("lora.dropout=1", "lora.dropout: must be < 1"),
])
def test_numeric_ranges_are_checked_and_name_the_key(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    save_config(config_from_dict(MINIMAL), path)
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])
