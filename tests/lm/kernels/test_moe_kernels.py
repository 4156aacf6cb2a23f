"""Triton MoE kernels (moe_triton.py) against the torch references (grouped.py), and ZayaExperts on the
Triton path against the same module on the torch path (itself tested against a per-token loop)."""

import pytest
import torch

from zaya_vl.lm.kernels.grouped import (ExpertLoRA, expert_mlp_tokens_reference, grouped_linear_reference,
                                        grouped_swiglu_reference)

E, H, I, RANK = 4, 24, 20, 4  # H, I, 2I and the rank are not multiples of the 16-wide blocks used below
COUNTS = {
    "ragged_with_empty": [5, 0, 37, 3],  # expert 2 spans three row tiles; expert 1 owns none
    "one_expert_used": [0, 17, 0, 0],
}
IMAGES = {  # image rows per expert (each expert's tail)
    "text_only": lambda counts: None,
    "no_image_rows": lambda counts: [0] * len(counts),  # adapters present, nothing to adapt
    "image_only": lambda counts: counts,
    "mixed": lambda counts: [c // 2 for c in counts],  # a tile boundary falls inside expert 2's image rows
}


def _problem(counts, images, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)  # noqa: E731
    ends = torch.tensor(counts).cumsum(0).to(device)
    x, gate_up, down = rand(sum(counts), H), rand(E, 2 * I, H) / H ** 0.5, rand(E, H, I) / I ** 0.5
    if images is None:
        return x, gate_up, down, ends, None, None
    positions = torch.cat([torch.arange(end - n, end) for end, n in zip(ends.tolist(), images)]).to(device)
    image_ends = torch.tensor(images).cumsum(0).to(device)
    lora_up = ExpertLoRA(rand(E, RANK, H), rand(E, 2 * I, RANK), positions, image_ends)
    lora_down = ExpertLoRA(rand(E, RANK, I), rand(E, H, RANK), positions, image_ends)
    return x, gate_up, down, ends, lora_up, lora_down


def _fp32(lora):
    return None if lora is None else lora._replace(A=lora.A.float(), B=lora.B.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("images", sorted(IMAGES))
@pytest.mark.parametrize("counts", sorted(COUNTS))
def test_grouped_gemm_matches_reference(counts, images, dtype, device, assert_close):
    from zaya_vl.lm.kernels.moe_triton import grouped_gemm

    counts = COUNTS[counts]
    x, gate_up, down, ends, lora_up, lora_down = _problem(counts, IMAGES[images](counts), dtype, device)
    blocks = dict(block_m=16, block_n=16, block_k=16)
    activated = grouped_gemm(x, gate_up, ends, lora_up, swiglu=True, **blocks)
    out = grouped_gemm(activated, down, ends, lora_down, **blocks)
    # The reference in fp32 from the same (rounded) inputs: bf16 results must be within bf16 rounding of it.
    expected_activated = grouped_swiglu_reference(x.float(), gate_up.float(), ends, _fp32(lora_up))
    expected = grouped_linear_reference(activated.float(), down.float(), ends, _fp32(lora_down))
    assert activated.dtype == out.dtype == dtype and out.shape == (sum(counts), H)
    assert_close(activated, expected_activated, dtype)
    assert_close(out, expected, dtype)


def test_grouped_gemm_without_rows(device):
    from zaya_vl.lm.kernels.moe_triton import grouped_gemm

    out = grouped_gemm(torch.empty(0, H, device=device), torch.randn(E, 2 * I, H, device=device),
                       torch.zeros(E, dtype=torch.long, device=device), swiglu=True)
    assert out.shape == (0, I)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("experts", [[2], [4], [0, 4, 3], [3, 1, 1, 0]])  # 4 == skip
def test_expert_mlp_tokens_matches_reference(experts, dtype, device, assert_close):
    from zaya_vl.lm.kernels.moe_triton import expert_mlp_tokens

    x, gate_up, down, *_ = _problem([len(experts)], None, dtype, device)
    expert = torch.tensor(experts, device=device)
    out = expert_mlp_tokens(x, gate_up, down, expert, block_n=16, block_k=16)
    expected = expert_mlp_tokens_reference(x.float(), gate_up.float(), down.float(), expert)
    assert_close(out, expected, dtype)
    assert bool((out[expert == E] == 0).all())


# -- through the layer: ZayaExperts on the Triton path vs the torch path --------------------------------

def _experts_layer(dtype, skip_output="scaled_input", seed=0):
    from zaya_vl.lm.moe import ZayaMoE
    from zaya_vl.testing import randomize_, tiny_lm_config

    config = tiny_lm_config(vision_lora_rank_mlp=4, skip_expert_output=skip_output)
    block = randomize_(ZayaMoE(config, layer_idx=1), seed=seed, std=0.3, skip_bias=-0.2)
    return block.to(dtype)


def _route_about_half_to_skip(block, x, prev_state):
    biases = block.gate.balancing_biases
    probs = torch.softmax(block.gate(x, prev_state).logits, dim=-1)
    margin = (probs[:, :E] + biases[:E]).max(dim=-1).values - probs[:, E]
    biases[-1] = margin.median() + 1e-4


def _spy(monkeypatch, module, names):
    calls = {name: 0 for name in names}
    for name in names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["text_only", "image_only", "mixed", "decode_1", "decode_3"])
@torch.no_grad()
def test_experts_on_triton_path_match_torch_path(case, dtype, triton_backend, monkeypatch, device, assert_close):
    moe_triton = triton_backend._triton_modules()[0]
    calls = _spy(monkeypatch, moe_triton, ["grouped_gemm", "expert_mlp_tokens"])
    block = _experts_layer(dtype).to(device)
    tokens = {"decode_1": 1, "decode_3": 3}.get(case, 29)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, 64, generator=generator).to(device=device, dtype=dtype)
    prev_state = torch.randn(1, tokens, 16, generator=generator).to(device)
    image = {"image_only": torch.ones(tokens, dtype=torch.bool), "mixed": torch.arange(tokens) % 3 == 0}.get(case)
    image = image.to(device) if image is not None else None
    _route_about_half_to_skip(block, x, prev_state)

    out, routing = block(x, prev_state, image)
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    reference = _experts_layer(torch.float32).to(device)  # fp32 weights: the bf16 run's values, rounded once
    reference.load_state_dict({k: v.float() for k, v in block.state_dict().items()})
    expected, expected_routing = reference(x.float(), prev_state, image)

    assert torch.equal(routing.expert, expected_routing.expert)
    assert_close(out, expected, dtype)
    if tokens > 1:
        skipped = routing.expert == E
        assert bool(skipped.any()) and bool((~skipped).any()), "the case must route to skip and to experts"
    if case.startswith("decode"):
        assert calls == {"grouped_gemm": 0, "expert_mlp_tokens": 1}  # no sort, no grouping
    else:
        lora_launches = 2 if case != "text_only" else 0  # the shrinks; the expands are fused
        assert calls == {"grouped_gemm": 2 + lora_launches, "expert_mlp_tokens": 0}


@torch.no_grad()
def test_all_skip_batch_launches_nothing(triton_backend, monkeypatch, device):
    moe_triton = triton_backend._triton_modules()[0]
    calls = _spy(monkeypatch, moe_triton, ["grouped_gemm", "expert_mlp_tokens"])
    block = _experts_layer(torch.float32).to(device)
    block.gate.balancing_biases[-1] = 10.0
    x = torch.randn(1, 6, 64, device=device)
    image = torch.tensor([True, False] * 3, device=device)
    for tokens in (1, 6):  # the decode path and the sorted path
        out, routing = block(x[:, :tokens], torch.randn(1, tokens, 16, device=device), image[:tokens])
        assert bool((routing.expert == E).all())
        expected = x[:, :tokens] * routing.weight.view(1, tokens, 1)  # "scaled_input": prob × input
        torch.testing.assert_close(out, expected)
    assert calls["grouped_gemm"] == 0


def test_training_takes_the_torch_path(triton_backend, monkeypatch, device):
    """The kernels have no backward: with autograd on, the dispatch must not pick them."""
    calls = _spy(monkeypatch, triton_backend._triton_modules()[0], ["grouped_gemm", "expert_mlp_tokens"])
    block = _experts_layer(torch.float32).to(device)
    out, _ = block(torch.randn(1, 12, 64, device=device), None)
    out.sum().backward()
    assert sum(calls.values()) == 0 and block.experts.gate_up_proj.grad is not None
