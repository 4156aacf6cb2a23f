"""The small blocks against naive formulas written out here: RMSNorm (both of its CPU forms), QKNorm, and the
three-op partial RoPE against rotate-half on the rotary channels only."""

import math

import pytest
import torch

from zaya_vl.lm.cca import QKNorm
from zaya_vl.lm.layers import RMSNorm, RotaryEmbedding, apply_rotary
from zaya_vl.testing import tiny_lm_config


def naive_rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("rows", [1, 8, 9, 40])  # ≤ 8 rows without autograd take the layer-norm form
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("scale", [3.0, 1e-3])  # at 1e-3, mean(x²) ≈ ε: where ε goes shows
def test_rms_norm(rows, grad, scale):
    norm = RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(rows, 1, 24) * scale
    with torch.set_grad_enabled(grad):
        out = norm(x)
    torch.testing.assert_close(out, naive_rms_norm(x, norm.weight, 1e-6), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_qk_norm_gives_each_head_norm_sqrt_d_and_keys_their_temperature():
    config = tiny_lm_config()
    norm = QKNorm(config)
    norm.temp.copy_(torch.linspace(0.5, 2.0, config.num_key_value_heads))
    heads = torch.randn(2, 3, config.num_attention_heads + config.num_key_value_heads, config.head_dim)
    out = norm(heads)
    gains = torch.cat([torch.ones(config.num_attention_heads), norm.temp])
    expected = heads / heads.norm(dim=-1, keepdim=True) * math.sqrt(config.head_dim) * gains[:, None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_partial_rope_rotates_pairs_of_the_rotary_channels_and_passes_the_rest():
    config = tiny_lm_config()
    rope = RotaryEmbedding(config)
    positions = torch.tensor([[0, 3, 17]])
    x = torch.randn(1, 3, 5, config.head_dim)
    for layer_type in rope.layer_types:
        params = config.rope_parameters[layer_type]
        rotary = int(config.head_dim * params.get("partial_rotary_factor", 1.0))
        half = rotary // 2
        inv_freq = 1.0 / params["rope_theta"] ** (torch.arange(0, rotary, 2).float() / rotary)
        angle = positions[0, :, None, None].float() * inv_freq                   # (seq, 1, half)
        first, second = x[..., :half], x[..., half:rotary]
        expected = torch.cat([first * angle.cos() - second * angle.sin(),
                              second * angle.cos() + first * angle.sin(), x[..., rotary:]], dim=-1)
        out = apply_rotary(x, rope(positions, torch.float32)[layer_type])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert rotary < config.head_dim  # the config exercises pass-through channels
