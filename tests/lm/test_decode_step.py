"""The decode step a GPU runs: no host-device sync, a static cache, and a compiled step equal to eager."""

import pytest
import torch

import zaya_vl.lm.moe as moe_module
from zaya_vl.lm import ZayaCache, ZayaLM
from zaya_vl.lm.cache import StaticZayaCache, decoder_layer_devices
from zaya_vl.lm.moe import ZayaRouter
from zaya_vl.testing import HostReads, randomize_, tiny_lm_config


@pytest.fixture
def gpu_paths(monkeypatch):
    """Run on CPU the branches a GPU takes (the eager CPU path may index experts on the host: no device there)."""
    monkeypatch.setattr(moe_module, "_HOST_SYNC_ON_CPU", False)


def _model(**overrides):
    # Skip bias 0: some tokens take the skip expert, so its handling is on the tested path too.
    return randomize_(ZayaLM(tiny_lm_config(**overrides)), seed=3, std=0.2, skip_bias=0.0).eval()


def _prompt(batch=3, length=6, padded=True):
    ids = torch.randint(3, 160, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :2] = 0  # left padding on one row
    return ids, mask


def _decode_steps(model, cache, ids, mask, steps, watch=None):
    """Prefill eagerly, then ``steps`` greedy steps (under ``watch`` if given); returns the step logits."""
    out = model(ids, attention_mask=mask, cache=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    logits = []
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        if watch is not None:
            with watch:
                out = model(token, attention_mask=mask, cache=cache, use_cache=True)
        else:
            out = model(token, attention_mask=mask, cache=cache, use_cache=True)
        logits.append(out.logits[:, -1])
        token = out.logits[:, -1:].argmax(-1)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("cache_class", [ZayaCache, StaticZayaCache])
@pytest.mark.parametrize("skip_output", ["zero", "scaled_input"])
@torch.no_grad()
def test_decode_step_reads_nothing_on_the_host(gpu_paths, cache_class, skip_output):
    model = _model(skip_expert_output=skip_output)
    ids, mask = _prompt()
    watch = HostReads()
    cache = cache_class(model.config, ids.shape[0], max_length=32, dtype=torch.float32, device="cpu")
    logits = _decode_steps(model, cache, ids, mask, steps=4, watch=watch)
    assert watch.reads == []
    # and the sync-free path computes what the host-indexed CPU path does
    moe_module._HOST_SYNC_ON_CPU = True
    reference = _decode_steps(model, ZayaCache(model.config, ids.shape[0]), ids, mask, steps=4)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cache_class", [ZayaCache, StaticZayaCache])
@torch.no_grad()
def test_decode_step_runs_on_the_meta_device(cache_class):
    """On ``meta`` any host read of a value raises, whatever the device-type branches: a GPU-like step."""
    with torch.device("meta"):
        model = ZayaLM(tiny_lm_config()).eval()
    cache = cache_class(model.config, 2, max_length=16, dtype=torch.float32, device="meta")
    cache.seq_length, cache.prompt_padded = 5, True  # as a padded prefill of 5 tokens would leave it
    if cache_class is StaticZayaCache:
        cache.filled = True
    token = torch.zeros(2, 1, dtype=torch.long, device="meta")
    mask = torch.ones(2, 6, dtype=torch.long, device="meta")
    out = model(token, attention_mask=mask, cache=cache, use_cache=True)
    assert out.logits.shape == (2, 1, model.config.vocab_size) and out.logits.device.type == "meta"


@torch.no_grad()
def test_static_cache_equals_dynamic_cache_over_padding_and_steps():
    model = _model()
    ids, mask = _prompt()
    dynamic = _decode_steps(model, ZayaCache(model.config, ids.shape[0]), ids, mask, steps=6)
    static = _decode_steps(model, StaticZayaCache(model.config, ids.shape[0], max_length=20), ids, mask, steps=6)
    torch.testing.assert_close(static, dynamic, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_compiled_static_generate_equals_eager_with_one_graph_for_two_prompt_lengths():
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    torch._dynamo.reset()
    counters.clear()
    model = _model()
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True, dynamic=False)
    for length in (5, 9):
        ids, mask = _prompt(batch=2, length=length)
        eager = model.generate(ids, attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        compiled = model.generate(ids, attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                  cache_implementation="static", compile_config=compile_config)
        assert torch.equal(compiled, eager)
    assert dict(counters["graph_break"]) == {}
    # One graph for all 2 × 31 compiled steps: no recompilation per step or per prompt length in a bucket.
    assert counters["stats"]["unique_graphs"] == 1


def test_router_is_fp32_under_bf16_autocast():
    config = tiny_lm_config()
    router = randomize_(ZayaRouter(config, layer_idx=1), seed=0).eval()
    x = torch.randn(2, 5, config.hidden_size)
    state = torch.randn(2, 5, config.router_hidden_size)
    with torch.no_grad():
        expected = router(x, state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = router(x, state)
    assert got.logits.dtype == torch.float32
    torch.testing.assert_close(got.logits, expected.logits)  # bf16 GEMMs would be off by ~1e-2
    assert torch.equal(got.expert, expected.expert)


def test_cache_for_model_puts_each_layer_state_on_that_layer_device():
    model = ZayaLM(tiny_lm_config())
    model.model.layers[1].to("meta")  # a stand-in for a second GPU of a device_map
    devices = decoder_layer_devices(model)
    assert [d.type for d in devices] == ["cpu", "meta", "cpu"]
    cache = ZayaCache.for_model(model.to(torch.bfloat16), batch_size=2, max_length=4)
    for states in (cache.keys, cache.values, cache.conv_states, cache.delayed_values):
        assert [t.device.type for t in states] == ["cpu", "meta", "cpu"]
        assert all(t.dtype == torch.bfloat16 for t in states)


@torch.no_grad()
def test_cache_without_device_takes_the_model_dtype_at_first_forward():
    model = _model().to(torch.bfloat16)
    ids, mask = _prompt(padded=False)
    cache = ZayaCache(model.config, ids.shape[0])
    model(ids, cache=cache, use_cache=True)
    assert cache.keys[0].dtype == torch.bfloat16 and cache.get_seq_length() == ids.shape[1]


@torch.no_grad()
def test_models_use_our_compiled_step_not_transformers_defaults():
    """``PreTrainedModel`` precedes the generation mixin in the models' bases and defines the compile hooks too;
    generate() must still get our whole-graph config and our step (derived weights built before tracing, the
    host token count kept)."""
    from transformers import CompileConfig

    from zaya_vl.modeling import ZayaVL
    from zaya_vl.testing import tiny_vl_config

    for model in (_model(), ZayaVL(tiny_vl_config()).eval()):
        config = model._default_compile_config()
        assert config.fullgraph and not config.dynamic
        assert config.mode is None and config.options == {"cpp_wrapper": True}  # CPU: no CUDA graphs
        assert model._is_stateful
    model = _model()
    cca = model.model.layers[0].self_attn.qkv_proj
    cca._derived._memo.clear()
    ids, mask = _prompt(batch=2, length=5)
    cache = StaticZayaCache(model.config, 2, max_length=32, dtype=torch.float32, device="cpu")
    model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, cache=cache,
                   compile_config=CompileConfig(backend="aot_eager", fullgraph=True, dynamic=False))
    assert {"conv", "bmm"} <= set(cca._derived._memo)  # built eagerly, not traced into the step
    assert cache.get_seq_length() == int(cache.length) == 5 + 3  # the last token is never fed back


@pytest.mark.parametrize("experts", [[3], [4], [0, 4, 2, 2, 1], [2, 2, 2], [4, 4], [1, 4, 1]])  # 4 = skip
def test_the_compiled_cpu_steps_expert_op_equals_the_per_token_loop(experts):
    from zaya_vl.lm.kernels.grouped import expert_mlp_tokens_reference

    generator = torch.Generator().manual_seed(len(experts))
    gate_up, down = torch.randn(4, 24, 16, generator=generator), torch.randn(4, 16, 12, generator=generator)
    x, expert = torch.randn(len(experts), 16, generator=generator), torch.tensor(experts)
    got = torch.ops.zaya_vl.cpu_expert_mlp_tokens(x, gate_up, down, expert)
    torch.testing.assert_close(got, expert_mlp_tokens_reference(x, gate_up, down, expert))


def test_static_cache_capacity_leaves_at_most_a_third_unused_with_two_capacities_per_doubling():
    from zaya_vl.lm.generation import static_cache_capacity

    capacities = [static_cache_capacity(length) for length in range(1, 8193)]
    assert all(capacity >= length for length, capacity in enumerate(capacities, start=1))
    assert capacities == sorted(capacities)
    assert all((capacity - length) / capacity < 1 / 3 for length, capacity in enumerate(capacities, start=1)
               if length > 64)
    assert sorted(set(capacities)) == [64 * 2 ** k * f for k in range(8) for f in (1, 1.5)][:15]
