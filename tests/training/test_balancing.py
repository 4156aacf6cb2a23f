"""The PID controller on the MoE balancing biases."""

from __future__ import annotations

import pytest
import torch

from zaya_vl.lm import ZayaLM
from zaya_vl.testing import randomize_, tiny_lm_config
from zaya_vl.training import BalancingController, config_from_dict, expert_loads, load_metrics, train
from zaya_vl.training.balancing import current_biases, find_routers, set_biases
from zaya_vl.training.config import BalancingConfig


@torch.no_grad()
def _model_loads(model, seed: int) -> torch.Tensor:
    ids = torch.randint(3, 160, (8, 64), generator=torch.Generator().manual_seed(seed))
    out = model(ids, use_cache=False, output_router_logits=True)
    return expert_loads(out["routings"], torch.ones_like(ids), len(find_routers(model)))


SKEW = torch.tensor([2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, -8.0])  # 8 experts + skip; expert 0 favoured


def _router_loads(biases: torch.Tensor, step: int) -> torch.Tensor:
    """A router's selection on a fresh batch of 2048 tokens: argmax(probs + biases), per-token noisy logits."""
    logits = SKEW + torch.randn(2048, 9, generator=torch.Generator().manual_seed(step))
    expert = torch.argmax(torch.softmax(logits, -1) + biases, -1)
    return torch.bincount(expert, minlength=9).double()[None]


@pytest.mark.parametrize("gains", [BalancingConfig(), BalancingConfig(kp=0.1, ki=0.02, kd=0.05)],
                         ids=["default_gains", "pid"])
def test_controller_drives_a_skewed_load_to_uniform(gains):
    controller = BalancingController(torch.zeros(1, 9), kp=gains.kp, ki=gains.ki, kd=gains.kd)
    biases = torch.zeros(1, 9)
    start = load_metrics(_router_loads(biases, 0))
    for step in range(400):
        biases = controller.update(_router_loads(biases, step))
    end = load_metrics(_router_loads(biases, 10_000))  # a batch the controller never saw
    print(f"load entropy {start['moe/load_entropy']:.3f} -> {end['moe/load_entropy']:.4f}, "
          f"max load {start['moe/max_load']:.2f} -> {end['moe/max_load']:.3f} (1 = uniform)")
    assert start["moe/load_entropy"] < 0.7 and start["moe/max_load"] > 4
    assert end["moe/load_entropy"] > 0.995
    assert end["moe/max_load"] < 1.25  # sampling noise of 2048 tokens over 8 experts is ~±6% per expert


def test_controller_balances_the_tiny_lm():
    """On a real (1-layer, random) router. Random tiny routers give some experts almost no per-token spread,
    so no bias can share tokens with them finely; the load still moves far toward uniform."""
    model = randomize_(ZayaLM(tiny_lm_config(num_hidden_layers=1)), seed=0, std=0.3, skip_bias=-5.0).eval()
    with torch.no_grad():
        model.model.layers[0].mlp.gate.router_mlp.out_proj.weight.mul_(3.0)  # more per-token spread
    start = load_metrics(_model_loads(model, 0))
    controller = BalancingController(current_biases(model), kp=0.05, ki=0.01)
    for step in range(100):
        set_biases(model, controller.update(_model_loads(model, step)))
    end = load_metrics(_model_loads(model, 10_000))
    print(f"tiny LM: load entropy {start['moe/load_entropy']:.3f} -> {end['moe/load_entropy']:.3f}, "
          f"max load {start['moe/max_load']:.2f} -> {end['moe/max_load']:.2f}")
    assert start["moe/load_entropy"] < 0.2 and start["moe/max_load"] > 3.5
    assert end["moe/load_entropy"] > 0.6 and end["moe/max_load"] < 2.8


def test_pid_terms():
    base = torch.tensor([[0.1, 0.0, -0.1, 0.0, -1.0]])  # 4 experts + skip
    loads = torch.tensor([[70.0, 10.0, 10.0, 10.0, 25.0]])  # expert 0 overloaded; 25 tokens skipped
    error = torch.tensor([[0.25 - 0.7, 0.15, 0.15, 0.15]])

    proportional = BalancingController(base, kp=1.0, ki=0.0, kd=0.0)
    biases = proportional.update(loads)
    torch.testing.assert_close(biases[:, :4], base[:, :4] + error)
    assert biases[0, 4] == base[0, 4]  # the skip choice is left alone by default
    torch.testing.assert_close(proportional.update(loads)[:, :4], base[:, :4] + error)  # P has no memory

    integral = BalancingController(base, kp=0.0, ki=0.1, kd=0.0)
    for k in range(1, 4):
        biases = integral.update(loads)
    torch.testing.assert_close(biases[:, :4], base[:, :4] + 0.1 * 3 * error)

    derivative = BalancingController(base, kp=0.0, ki=0.0, kd=1.0)
    torch.testing.assert_close(derivative.update(loads), base)  # no previous error yet
    uniform = torch.tensor([[25.0, 25.0, 25.0, 25.0, 0.0]])
    torch.testing.assert_close(derivative.update(uniform)[:, :4], base[:, :4] - error)

    limited = BalancingController(base, kp=100.0, ki=0.0, kd=0.0, output_limit=0.5)
    assert (limited.update(loads) - base).abs().max() <= 0.5 + 1e-7

    frozen_layer = BalancingController(torch.zeros(2, 5), kp=1.0, active_layers=[False, True])
    biases = frozen_layer.update(loads.repeat(2, 1))
    assert torch.equal(biases[0], torch.zeros(5)) and not torch.equal(biases[1], torch.zeros(5))


def test_include_skip_steers_the_skip_share():
    base = torch.zeros(1, 5)
    loads = torch.tensor([[10.0, 10.0, 10.0, 10.0, 60.0]])
    controller = BalancingController(base, kp=1.0, ki=0.0, include_skip=True)
    biases = controller.update(loads)
    assert biases[0, 4] < 0 and (biases[0, :4] > 0).all()  # too many skips: skip bias goes down


def test_state_dict_round_trip():
    controller = BalancingController(torch.zeros(3, 5), kp=0.1, ki=0.1, kd=0.1)
    loads = torch.tensor([[5.0, 1, 1, 1, 0]] * 3)
    controller.update(loads)
    copy = BalancingController(torch.zeros(3, 5), kp=0.1, ki=0.1, kd=0.1)
    copy.load_state_dict(controller.state_dict())
    torch.testing.assert_close(copy.update(loads), controller.update(loads))


def test_biases_are_buffers_and_only_the_controller_moves_them(helpers, assets, tmp_path):
    """No gradient reaches the biases: they are buffers, not parameters; with the controller off they stay."""
    model = ZayaLM.from_pretrained(assets["model_dir"])
    assert not any("balancing_biases" in name for name, _ in model.named_parameters())
    before = current_biases(model)
    runs = {}
    for enabled in ("false", "true"):
        config = helpers.run_config(assets, tmp_path / enabled, train={"max_steps": 3},
                                    balancing={"enabled": enabled, "kp": 0.5, "ki": 0.1})
        runs[enabled] = current_biases(ZayaLM.from_pretrained(train(config_from_dict(config)).final_dir))
    assert torch.equal(runs["false"], before)
    assert not torch.equal(runs["true"], before)


def test_find_routers_gives_each_layers_router_in_layer_order():
    """Eleven layers: numeric layer order (10 after 9), for the LM, the VL model and a PEFT-wrapped LM."""
    from zaya_vl import ZayaVL
    from zaya_vl.testing import tiny_vl_config

    lm = ZayaLM(tiny_lm_config(num_hidden_layers=11))
    expected = [layer.mlp.gate for layer in lm.model.layers]
    assert [id(r) for r in find_routers(lm)] == [id(r) for r in expected]
    vl = ZayaVL(tiny_vl_config(num_hidden_layers=3))
    assert [id(r) for r in find_routers(vl)] == [id(layer.mlp.gate) for layer in vl.language_model.layers]
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(lm, peft.LoraConfig(r=2, target_modules=["o_proj"]))
    assert [id(r) for r in find_routers(wrapped)] == [id(r) for r in expected]
    biases = torch.randn(11, lm.config.num_experts + 1)
    set_biases(wrapped, biases)
    assert torch.equal(torch.stack([r.balancing_biases.float() for r in expected]), biases)
    assert torch.equal(current_biases(lm), biases)
