"""CCA's q|k mixing paths against each other and a naive loop: the residual means, and convolutions wrapped by
another module (as PEFT wraps them), which run as modules instead of the folded kernel."""

import pytest
import torch
from torch import nn

from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.cca import CCAProjection, residual_means
from zaya_vl.lm.modeling import ForwardContext
from zaya_vl.testing import randomize_, tiny_lm_config


class Wrapped(nn.Module):
    """Stands in for an adapter wrapper: not a plain ``nn.Conv1d``, so the projection cannot fold it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_residual_means_match_a_loop_over_heads():
    heads, kv_heads, head_dim = 6, 2, 5
    qk = torch.randn(3, 4, (heads + kv_heads) * head_dim, dtype=torch.float64)
    q = qk[..., : heads * head_dim].unflatten(-1, (heads, head_dim))
    k = qk[..., heads * head_dim:].unflatten(-1, (kv_heads, head_dim))
    group = heads // kv_heads
    query_residual = [(q[..., h, :] + k[..., h // group, :]) / 2 for h in range(heads)]
    key_residual = [sum(query_residual[j * group:(j + 1) * group]) / group for j in range(kv_heads)]
    expected = torch.cat(query_residual + key_residual, dim=-1)
    torch.testing.assert_close(residual_means(qk, heads, kv_heads), expected)


def _steps(proj, config, steps, seed=0):
    """Heads and values of a prefill then decode steps through one cache, and the final conv state."""
    generator = torch.Generator().manual_seed(seed)
    cache = ZayaCache(config, batch_size=2)
    outputs = []
    for i, seq in enumerate(steps):
        x = torch.randn(2, seq, config.hidden_size, generator=generator)
        ctx = ForwardContext(rotary={}, attention_masks={}, attn_implementation="sdpa", cache=cache, resuming=i > 0)
        outputs.extend(proj(x, ctx))
        cache.advance(seq)
    return outputs, cache.conv_states[0]


@pytest.mark.parametrize("overrides", [dict(), dict(num_key_value_heads=1, cca_time0=3, attention_bias=True)])
@torch.no_grad()
def test_wrapped_convolutions_equal_the_folded_kernel(overrides, monkeypatch):
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    config = tiny_lm_config(**overrides)
    plain = randomize_(CCAProjection(config, layer_idx=0), seed=1, std=0.3)
    wrapped = randomize_(CCAProjection(config, layer_idx=0), seed=1, std=0.3)
    wrapped.conv_qk_depthwise, wrapped.conv_qk_grouped = Wrapped(wrapped.conv_qk_depthwise), Wrapped(
        wrapped.conv_qk_grouped)
    steps = (5, 1, 1, 3)  # decode steps of one token take the folded kernel when the convolutions are plain
    expected, expected_state = _steps(plain, config, steps)
    outputs, state = _steps(wrapped, config, steps)
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state, expected_state)


@torch.no_grad()
def test_packed_documents_with_wrapped_convolutions_are_refused():
    config = tiny_lm_config()
    proj = CCAProjection(config, layer_idx=0)
    proj.conv_qk_grouped = Wrapped(proj.conv_qk_grouped)
    x = torch.randn(1, 4, config.hidden_size)
    keep = torch.ones(1, 4, config.conv_window + 1, dtype=torch.bool)
    ctx = ForwardContext(rotary={}, attention_masks={}, attn_implementation="sdpa", window_keep=keep)
    with pytest.raises(NotImplementedError, match="packed documents"):
        proj(x, ctx)
