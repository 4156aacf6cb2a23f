"""MoE routing: grouped expert compute against a naive per-token loop; skip tokens; balancing biases."""

import pytest
import torch
import torch.nn.functional as F

import zaya_vl.lm.moe as moe_module
from zaya_vl.lm.moe import ZayaMoE
from zaya_vl.testing import randomize_, tiny_lm_config


def naive_moe(block: ZayaMoE, x: torch.Tensor, prev_state: torch.Tensor | None, skip_output: str):
    """Route and compute one token at a time, straight from the parameter definitions."""
    gate, experts = block.gate, block.experts
    E = experts.num_experts
    outputs, choices, weights = [], [], []
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            token = x[b, t].double()
            state = gate.down_proj.weight.double() @ token + gate.down_proj.bias.double()
            if prev_state is not None:
                state = state + prev_state[b, t].double() * gate.router_states_scale.double()
            mlp = gate.router_mlp
            h = state / torch.sqrt(state.pow(2).mean() + mlp.norm.eps) * mlp.norm.weight.double()
            h = F.gelu(mlp.fc1.weight.double() @ h + mlp.fc1.bias.double())
            h = F.gelu(mlp.fc2.weight.double() @ h + mlp.fc2.bias.double())
            probs = torch.softmax(mlp.out_proj.weight.double() @ h, dim=0)
            choice = int(torch.argmax(probs + gate.balancing_biases.double()))
            weight = probs[choice]
            if choice == E:
                out = token * weight if skip_output == "scaled_input" else torch.zeros_like(token)
            else:
                gate_up = experts.gate_up_proj[choice].double() @ token
                g, u = gate_up.chunk(2)
                out = weight * (experts.down_proj[choice].double() @ (F.silu(g) * u))
            outputs.append(out)
            choices.append(choice)
            weights.append(weight)
    return torch.stack(outputs).view(x.shape).float(), torch.tensor(choices), torch.stack(weights).float()


@pytest.fixture
def block_and_input():
    config = tiny_lm_config(num_experts=6)
    block = randomize_(ZayaMoE(config, layer_idx=1), seed=0, std=0.5, skip_bias=0.0)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 11, config.hidden_size, generator=generator)
    prev_state = torch.randn(3, 11, config.router_hidden_size, generator=generator)
    with torch.no_grad():  # centre the biases so the 33 tokens spread over every expert and skip
        probs = torch.softmax(block.gate(x, prev_state).logits, dim=-1)
        block.gate.balancing_biases.copy_(-probs.mean(0))
    return block, x, prev_state


@pytest.mark.parametrize("skip_output", ["zero", "scaled_input"])
@torch.no_grad()
def test_grouped_experts_equal_naive_per_token_loop(block_and_input, skip_output, monkeypatch):
    block, x, prev_state = block_and_input
    block.experts.skip_output = skip_output
    seen = []
    real_grouped_swiglu = moe_module.grouped_swiglu

    def recording_grouped_swiglu(rows, weight, offsets, lora=None):  # the first grouped GEMM: gate_up
        seen.append((rows.clone(), offsets.clone(), weight.shape))
        return real_grouped_swiglu(rows, weight, offsets, lora)

    monkeypatch.setattr(moe_module, "grouped_swiglu", recording_grouped_swiglu)
    out, routing = block(x, prev_state)
    expected, choices, weights = naive_moe(block, x, prev_state, skip_output)

    assert torch.equal(routing.expert, choices)
    torch.testing.assert_close(routing.weight, weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)

    # The rows each expert received in the first grouped GEMM are exactly its tokens, in token order.
    flat = x.reshape(-1, x.shape[-1])
    rows, offsets, _ = seen[0]
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        mine = (choices == expert).nonzero().squeeze(1)
        torch.testing.assert_close(rows[start:end], flat[mine])
        start = end
    num_skipped = int((choices == block.experts.num_experts).sum())
    assert num_skipped > 0, "the fixture must route some tokens to skip"
    assert rows.shape[0] == flat.shape[0] - num_skipped  # skip-routed tokens are never computed
    assert len(set(choices.tolist())) == block.experts.num_experts + 1  # every expert and skip are exercised


@torch.no_grad()
def test_all_skip_batch_computes_nothing(block_and_input, monkeypatch):
    block, x, prev_state = block_and_input
    block.gate.balancing_biases[-1] = 10.0  # everything prefers skip
    for name in ("grouped_swiglu", "grouped_linear", "expert_mlp_tokens"):
        monkeypatch.setattr(moe_module, name, lambda *a: pytest.fail("an expert was computed"))
    out, routing = block(x, prev_state)
    assert bool((routing.expert == block.experts.num_experts).all())
    assert torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_balancing_biases_change_selection_not_combine_weights(block_and_input):
    block, x, prev_state = block_and_input
    _, before = block(x, prev_state)
    favourite = int(torch.bincount(before.expert, minlength=7)[:6].argmin())  # the least-used expert
    block.gate.balancing_biases[favourite] = 5.0
    out, after = block(x, prev_state)
    assert bool((after.expert == favourite).all())
    # The combine weight is the unbiased router probability of the chosen expert.
    probs = torch.softmax(before.logits, dim=-1)
    torch.testing.assert_close(after.weight, probs[:, favourite])
    torch.testing.assert_close(after.logits, before.logits)
    expected, _, _ = naive_moe(block, x, prev_state, block.experts.skip_output)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_single_token_fast_path_equals_naive(block_and_input):
    block, x, prev_state = block_and_input
    for t in range(6):
        out, _ = block(x[:1, t:t + 1], prev_state[:1, t:t + 1])
        expected, _, _ = naive_moe(block, x[:1, t:t + 1], prev_state[:1, t:t + 1], block.experts.skip_output)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_router_runs_in_fp32_in_a_bf16_model(block_and_input):
    block, x, prev_state = block_and_input
    routing_fp32 = block.gate(x, prev_state)
    block_bf16 = block.to(torch.bfloat16)
    block_bf16.gate.float()
    routing = block_bf16.gate(x.bfloat16(), prev_state)
    assert routing.logits.dtype == torch.float32 and routing.weight.dtype == torch.float32
    assert (routing.expert == routing_fp32.expert).float().mean() > 0.9
