"""Optional PEFT LoRA on top of the stage's trainable set."""

from __future__ import annotations

import pytest
import torch

from zaya_vl.lm import ZayaLM
from zaya_vl.training import ConfigError, config_from_dict, train

pytest.importorskip("peft")


def test_peft_lora_trains_and_merges_into_a_loadable_model(helpers, assets, tmp_path):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat", train={"max_steps": 10},
                                optim={"lr": 1e-2}, lora={"r": 4, "alpha": 8, "target_modules": ["o_proj"]})
    result = train(config_from_dict(config))
    losses = [m["loss"] for m in helpers.read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]
    # Only the LoRA matrices trained: 3 layers × (A: r×64 + B: 64×r).
    assert result.trainable_parameters == 3 * 2 * 4 * 64
    before = ZayaLM.from_pretrained(assets["model_dir"]).state_dict()
    after = ZayaLM.from_pretrained(result.final_dir).state_dict()  # merged: a plain ZayaLM checkpoint
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        if name.endswith("o_proj.weight"):
            assert not torch.equal(tensor, after[name]), name  # the merged LoRA delta
        else:
            assert torch.equal(tensor, after[name]), name  # everything else is bit-identical


def test_lora_on_a_router_projection_is_refused(helpers, assets, tmp_path):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat",
                                lora={"target_modules": ["fc1"]})
    with pytest.raises(ConfigError, match="fc1.*fp32 router"):
        train(config_from_dict(config))


def test_lora_on_the_cca_q_projection_trains_and_merges(helpers, assets, tmp_path):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat",
                                lora={"target_modules": ["q_proj"]})
    result = train(config_from_dict(config))
    before = ZayaLM.from_pretrained(assets["model_dir"]).state_dict()
    after = ZayaLM.from_pretrained(result.final_dir).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"model.layers.{i}.self_attn.qkv_proj.q_proj.weight" for i in range(3)}
