"""Token-gated LoRA: y = W x + mask ⊙ B(A(x)), exactly zero at text rows, and PEFT-stackable names."""

import torch
import torch.nn.functional as F

from zaya_vl.lora import GatedExpertLoRA, GatedLoRA
from zaya_vl.lm.kernels.grouped import grouped_linear


def test_linear_adapter_adds_b_a_x_at_image_rows_only():
    torch.manual_seed(0)
    adapter = GatedLoRA(8, 6, rank=3)
    torch.nn.init.normal_(adapter.B)
    x = torch.randn(2, 5, 8)
    base = torch.randn(2, 5, 6)
    image = torch.zeros(2, 5, dtype=torch.bool)
    image[0, 1:3] = image[1, 4] = True
    out = adapter.add_to(base, x, image.reshape(-1).nonzero().squeeze(1))
    expected = base + image[..., None] * (x @ adapter.A.t() @ adapter.B.t())  # no alpha scaling
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[~image], base[~image])  # text rows untouched, bit for bit


def test_expert_adapter_applies_each_experts_own_factors():
    torch.manual_seed(1)
    adapter = GatedExpertLoRA(num_experts=3, in_features=8, out_features=5, rank=2)
    torch.nn.init.normal_(adapter.B)
    rows_per_expert = [2, 0, 3]
    x = torch.randn(sum(rows_per_expert), 8)
    delta = adapter.delta(x, torch.tensor(rows_per_expert).cumsum(0))
    start = 0
    for expert, count in enumerate(rows_per_expert):
        expected = x[start:start + count] @ adapter.A[expert].t() @ adapter.B[expert].t()
        torch.testing.assert_close(delta[start:start + count], expected)
        start += count


def test_grouped_linear_matches_per_expert_matmuls_with_empty_experts():
    torch.manual_seed(2)
    weight = torch.randn(4, 7, 5)
    counts = [3, 0, 0, 4]
    x = torch.randn(sum(counts), 5)
    out = grouped_linear(x, weight, torch.tensor(counts).cumsum(0))
    expected = torch.cat([F.linear(chunk, weight[e]) for e, chunk in enumerate(torch.split(x, counts)) if len(chunk)])
    torch.testing.assert_close(out, expected)


def test_adapter_parameter_names_never_contain_lora_underscore():
    from zaya_vl import ZayaVL
    from zaya_vl.testing import tiny_vl_config

    names = [name for name, _ in ZayaVL(tiny_vl_config()).named_parameters()]
    adapters = [name for name in names if ".vision_adapters." in name]
    assert len(adapters) == 3 * (5 * 2 + 2 * 2)  # per layer: q, k, v_current, v_delayed, o + gate_up, down; A and B
    assert not [name for name in names if "lora_" in name]
