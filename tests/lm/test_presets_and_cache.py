"""The real ZAYA1-8B size on paper, and the cache's real allocation per token."""

import pytest
import torch

from zaya_vl.lm import ZayaCache, ZayaLM
from zaya_vl.lm.presets import count_parameters, describe, zaya1_8b_config
from zaya_vl.testing import randomize_, tiny_lm_config


def test_zaya1_8b_parameter_counts_on_meta_device():
    config = zaya1_8b_config()
    with torch.device("meta"):
        model = ZayaLM(config)
    counts = count_parameters(model, config)
    # Recount from the architecture by hand (hidden 2048, 40 layers, 16 experts of width 2048, router 256).
    H, L, E, I, R, V = 2048, 40, 16, 2048, 256, 262272
    q, kv, D = 8 * 128, 2 * 128, 128
    attention = H * q + H * kv + 2 * H * (kv // 2) + q * H + (q + kv) * 2 + (q + kv) * ((q + kv) // 10) * 2 + (q + kv) * 2 + 2
    router = H * R + R + R + 2 * (R * R + R) + R * (E + 1)
    layer_dense = attention + router + 4 * H * 2 + 2 * H
    experts = E * (2 * I * H + H * I)
    eda = (L - 1) * R
    expected_total = V * H + L * (layer_dense + experts) + eda + H + 2 * H
    assert counts.total == expected_total
    assert counts.embedding == V * H
    assert counts.active == expected_total - V * H - L * (E - 1) * (3 * I * H)
    assert 740e6 < counts.active < 770e6  # "760 M active" as published
    assert describe(config)["kv_cache_bytes_per_token"] == 40 * 1024


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kv_bytes_per_token_equals_what_the_cache_allocates(dtype):
    config = zaya1_8b_config()
    tokens, batch = 8, 1
    cache = ZayaCache(config, batch_size=batch, max_length=tokens, dtype=dtype)
    assert cache.kv_bytes() == tokens * batch * config.kv_cache_bytes_per_token(dtype)
    assert config.kv_cache_bytes_per_token(torch.bfloat16) == 40960


@torch.no_grad()
def test_generate_preallocates_the_cache_and_never_grows_it(monkeypatch):
    model = randomize_(ZayaLM(tiny_lm_config()), seed=0).eval()
    grew = []
    monkeypatch.setattr(ZayaCache, "_grow", lambda self, i, n: grew.append(n))
    captured = {}
    original = ZayaLM.forward

    def spy(self, *args, **kwargs):
        captured["cache"] = kwargs.get("cache")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ZayaLM, "forward", spy)
    input_ids = torch.randint(3, 160, (2, 9))
    model.generate(input_ids, max_new_tokens=7, do_sample=False)
    cache = captured["cache"]
    assert isinstance(cache, ZayaCache) and not grew
    assert cache.get_max_cache_shape() >= 15 and cache.get_seq_length() == 15


@torch.no_grad()
def test_an_unsized_cache_grows_and_keeps_its_contents():
    model = randomize_(ZayaLM(tiny_lm_config()), seed=1).eval()
    input_ids = torch.randint(3, 160, (1, 40))
    full = model(input_ids, use_cache=False).logits
    cache = ZayaCache(model.config, batch_size=1, max_length=3)
    steps = [model(input_ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
    assert cache.get_max_cache_shape() >= 40


@torch.no_grad()
def test_the_pre_5_24_past_key_values_argument_still_feeds_the_cache():
    # transformers 5.24 renamed `past_key_values` to `cache`; code written for the old name keeps working.
    model = randomize_(ZayaLM(tiny_lm_config()), seed=2).eval()
    input_ids = torch.randint(3, 160, (1, 12))
    full = model(input_ids, use_cache=False).logits
    cache = ZayaCache(model.config, batch_size=1)
    model(input_ids[:, :8], cache=cache, use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values"):
        tail = model(input_ids[:, 8:], past_key_values=cache, use_cache=True)
    assert tail.cache is cache and cache.get_seq_length() == 12
    torch.testing.assert_close(tail.logits, full[:, 8:], atol=1e-4, rtol=0)
