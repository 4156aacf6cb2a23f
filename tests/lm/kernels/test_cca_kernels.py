"""The CCA Triton kernel (cca_triton.py) against ``CCAProjection`` itself (torch path), for
prefill, chunked prefill and decode with the in-place state update."""

import pytest
import torch

from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.cca import CCAProjection
from zaya_vl.lm.modeling import ForwardContext
from zaya_vl.testing import randomize_, tiny_lm_config

CONFIGS = {
    "gqa2_window2": dict(),
    "gqa4_window3_bias": dict(num_key_value_heads=1, cca_time0=3, attention_bias=True),
    "mha_head24": dict(num_key_value_heads=4, head_dim=24),  # head_dim not a power of two: masked lanes
}


def _layer(name, dtype, device, seed=0):
    config = tiny_lm_config(**CONFIGS[name])
    proj = CCAProjection(config, layer_idx=0)
    randomize_(proj, seed=seed, std=0.3)
    return config, proj.to(device=device, dtype=dtype)


def _torch_step(proj, x, cache):
    """CCAProjection on the torch path: (raw q|k, query|key flattened, the cache's conv state afterwards)."""
    ctx = ForwardContext(rotary={}, attention_masks={}, attn_implementation="sdpa", cache=cache)
    qk, _, _ = proj.project(x)
    heads, _ = proj(x, ctx)
    query, key = heads[:, :, : proj.num_heads], heads[:, :, proj.num_heads:]
    if cache is not None:
        cache.advance(x.shape[1])
    batch, seq = x.shape[:2]
    return qk, query, key, torch.cat([query.reshape(batch, seq, -1), key.reshape(batch, seq, -1)], -1)


def _cca_conv():
    from zaya_vl.lm.kernels.cca_triton import cca_conv  # after conftest checked Triton

    return cca_conv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq", [1, 21])  # shorter than the window; two token tiles of 16, the last ragged
@pytest.mark.parametrize("config", sorted(CONFIGS))
@torch.no_grad()
def test_prefill_matches_cca_projection(config, seq, dtype, device, assert_close, monkeypatch):
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    cfg, proj = _layer(config, dtype, device)
    x = torch.randn(1, seq, cfg.hidden_size, device=device, dtype=dtype)
    qk, query, key, expected = _torch_step(proj, x, None)
    history = qk.new_zeros(1, cfg.conv_window, qk.shape[-1])
    kernel, bias = proj.folded_conv()
    cca_conv = _cca_conv()
    heads = (cfg.num_attention_heads, cfg.num_key_value_heads)

    assert_close(cca_conv(qk, history, kernel, bias, *heads, block_s=16), expected, dtype)
    assert torch.equal(history, torch.zeros_like(history))  # prefill leaves the history alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@torch.no_grad()
def test_decode_steps_update_the_state_in_place(config, dtype, device, assert_close, monkeypatch):
    """Prefill, then decode steps of 1-4 tokens: outputs and the shifted conv state match CCAProjection with
    a cache; the kernel writes the state where it lives (here a non-contiguous view after the prefill)."""
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    cfg, proj = _layer(config, dtype, device)
    cache = ZayaCache(cfg, batch_size=2, dtype=dtype, device=device)
    _torch_step(proj, torch.randn(2, 5, cfg.hidden_size, device=device, dtype=dtype), cache)
    state = cache.conv_states[0].clone()
    kernel, bias = proj.folded_conv()
    cca_conv = _cca_conv()
    for step in (1, 4, 2):
        x = torch.randn(2, step, cfg.hidden_size, device=device, dtype=dtype)
        qk, _, _, expected = _torch_step(proj, x, cache)
        storage = state.data_ptr()
        out = cca_conv(qk, state, kernel, bias, cfg.num_attention_heads, cfg.num_key_value_heads, update_state=True)
        assert_close(out, expected, dtype)
        assert state.data_ptr() == storage
        torch.testing.assert_close(state, cache.conv_states[0], rtol=0, atol=0)  # a copy: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_chunked_prefill_reads_the_history(dtype, device, assert_close, monkeypatch):
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    cfg, proj = _layer("gqa4_window3_bias", dtype, device)
    cache = ZayaCache(cfg, batch_size=1, dtype=dtype, device=device)
    _torch_step(proj, torch.randn(1, 6, cfg.hidden_size, device=device, dtype=dtype), cache)
    history = cache.conv_states[0].clone()
    qk, _, _, expected = _torch_step(proj, torch.randn(1, 19, cfg.hidden_size, device=device, dtype=dtype), cache)
    out = _cca_conv()(qk, history, *proj.folded_conv(), cfg.num_attention_heads, cfg.num_key_value_heads, block_s=16)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_cca_projection_on_triton_path_matches_torch_path(dtype, triton_backend, monkeypatch, device, assert_close):
    """Through the call site: a prefill (fused conv, torch state copy) and decode steps (state in place)."""
    cca_triton = triton_backend._triton_modules()[1]
    launches = []
    real = cca_triton.cca_conv
    monkeypatch.setattr(cca_triton, "cca_conv", lambda *a, **k: launches.append(k.get("update_state", False)) or real(*a, **k))
    cfg, proj = _layer("gqa2_window2", dtype, device)
    reference = _layer("gqa2_window2", torch.float32, device)[1]
    caches = [ZayaCache(cfg, batch_size=2, dtype=dtype, device=device) for _ in range(2)]
    for step in (11, 1, 3):
        x = torch.randn(2, step, cfg.hidden_size, device=device, dtype=dtype)
        monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
        out = _torch_step(proj, x, caches[0])[-1]
        monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
        caches[1].conv_states[0] = caches[1].conv_states[0].float()  # the fp32 reference keeps an fp32 state
        _, _, _, expected = _torch_step(reference, x.float(), caches[1])
        assert_close(out, expected, dtype)
        assert_close(caches[0].conv_states[0], caches[1].conv_states[0], dtype)
    assert launches == [False, True, True]  # prefill without, decode steps with the in-place update
