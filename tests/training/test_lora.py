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


# -- LoRA on the experts (PEFT target_parameters) -------------------------------------------------------------
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _expert_lora_run(helpers, assets, tmp_path, **lora):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat", train={"max_steps": 6},
                                optim={"lr": 1e-2}, lora={"r": 2, "alpha": 4, "target_modules": [],
                                                          "target_parameters": EXPERTS, **lora})
    return train(config_from_dict(config))


def _naive_expert_delta(adapter_weights: dict, layer: int, name: str, num_experts: int, scaling: float):
    """The merged delta of one expert tensor from the saved LoRA factors, by a plain per-expert loop: PEFT stores
    A as (E·r, in) and B as (out, r·E) with the expert index fastest in B's columns, so expert e's delta is
    B[:, e::E] @ A[e·r:(e+1)·r], laid out (out, in) like the (E, out, in) expert weight."""
    prefix = f"base_model.model.model.layers.{layer}.mlp.experts."
    # PEFT nests one ParamWrapper per targeted parameter: down_proj (first in sorted order) wraps gate_up_proj's,
    # which sits under base_layer.
    inner = "base_layer." if name == "gate_up_proj" else ""
    A = adapter_weights[f"{prefix}{inner}lora_A.weight"]
    B = adapter_weights[f"{prefix}{inner}lora_B.weight"]
    r = A.shape[0] // num_experts
    return torch.stack([B[:, e::num_experts] @ A[e * r:(e + 1) * r] for e in range(num_experts)]) * scaling


def test_expert_lora_trains_saves_the_adapter_and_merges(helpers, assets, tmp_path):
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    result = _expert_lora_run(helpers, assets, tmp_path)
    losses = [m["loss"] for m in helpers.read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]
    base = ZayaLM.from_pretrained(assets["model_dir"])
    E, H, I = base.config.num_experts, base.config.hidden_size, base.config.moe_intermediate_size
    layers = base.config.num_hidden_layers
    # Per layer and expert: gate_up A r×H + B 2I×r, down A r×I + B H×r.
    assert result.trainable_parameters == layers * E * 2 * (H + 2 * I + I + H)

    adapter_dir = result.final_dir / "adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_parameters"]) == sorted(EXPERTS)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    merged = ZayaLM.from_pretrained(result.final_dir)
    before, after = base.state_dict(), merged.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"model.layers.{i}.mlp.experts.{p}" for i in range(layers) for p in ("gate_up_proj",
                                                                                              "down_proj")}
    for layer in range(layers):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{name}"
            expected = before[key] + _naive_expert_delta(weights, layer, name, E, 4 / 2)
            torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-6)

    # base + adapter (the LoRA applied on the fly, through the experts' forward) = the merged checkpoint.
    adapted = PeftModel.from_pretrained(ZayaLM.from_pretrained(assets["model_dir"]), adapter_dir).eval()
    ids = torch.randint(4, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_the_fly, folded, plain = adapted(ids).logits, merged.eval()(ids).logits, base.eval()(ids).logits
    print(f"LM expert LoRA: base + adapter vs merged, max |logit diff| {(on_the_fly - folded).abs().max():.2e}")
    assert (on_the_fly - folded).abs().max() < 1e-5
    assert (plain - folded).abs().max() > 1e-3  # the adapter does change the model


def test_zaya_vl_merge_writes_the_merged_model(helpers, assets, tmp_path):
    from zaya_vl.cli import main

    result = _expert_lora_run(helpers, assets, tmp_path)
    out = tmp_path / "merged"
    assert main(["merge", str(assets["model_dir"]), str(result.final_dir / "adapter"), str(out)]) == 0
    assert helpers.load_weights(out).keys() == helpers.load_weights(result.final_dir).keys()
    for name, tensor in helpers.load_weights(out).items():
        torch.testing.assert_close(tensor, helpers.load_weights(result.final_dir)[name], rtol=0, atol=1e-6)
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(SystemExit, match="not empty"):
        main(["merge", str(assets["model_dir"]), str(result.final_dir / "adapter"), str(out)])


@pytest.mark.parametrize("lora, why", [
    ({"target_parameters": ["mlp.experts.nope"]}, "matches no parameter"),
    ({"target_parameters": ["gate.router_states_scale"]}, "only the experts"),
    ({"target_parameters": EXPERTS, "dropout": 0.1}, "lora.dropout: must be 0"),
    ({"target_modules": [], "target_parameters": []}, "both empty"),
])
def test_bad_expert_lora_targets_name_the_key(helpers, assets, tmp_path, lora, why):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat", lora=lora)
    with pytest.raises(ConfigError, match=why):
        train(config_from_dict(config))


def test_a_freeze_pattern_that_would_freeze_the_expert_lora_is_refused(helpers, assets, tmp_path):
    config = helpers.run_config(assets, tmp_path / "run", stage="sft", data="chat",
                                lora={"target_modules": [], "target_parameters": EXPERTS},
                                freeze={"freeze": ["model.layers.*.mlp.*"]})
    with pytest.raises(ConfigError, match=r"freeze.freeze: pattern 'model.layers.\*.mlp.\*' freezes the LoRA "
                                          r"matrix model.layers.0.mlp.experts"):
        train(config_from_dict(config))
