"""ZayaVL's decode step after an image prompt: it reads nothing on the host (the path a GPU takes), and with the
static cache it compiles once: every step and a second prompt of another length reuse one graph, the greedy ids
equal to the eager dynamic-cache run's."""

import pytest
import torch
from transformers import CompileConfig

import zaya_vl.lm.moe as moe_module
from zaya_vl import ZayaVL
from zaya_vl.lm import ZayaCache
from zaya_vl.lm.cache import StaticZayaCache
from zaya_vl.testing import HostReads, image_prompt, randomize_, tiny_vl_config


@pytest.mark.parametrize("cache_class", [ZayaCache, StaticZayaCache])
@torch.no_grad()
def test_a_decode_step_after_an_image_prompt_reads_nothing_on_the_host(monkeypatch, cache_class):
    monkeypatch.setattr(moe_module, "_HOST_SYNC_ON_CPU", False)  # the experts' GPU path, run on CPU
    model = randomize_(ZayaVL(tiny_vl_config(image_attention="bidirectional")), seed=6, std=0.2).eval()
    prompt = image_prompt([(1, 4, 4)], seed=6)
    cache = cache_class(model.config.text_config, 1, max_length=64, dtype=torch.float32, device="cpu")
    out = model(**prompt, cache=cache, use_cache=True)
    steps = []
    for _ in range(3):
        token = out.logits[:, -1:].argmax(-1)
        with HostReads() as watch:
            out = model(input_ids=token, cache=cache, use_cache=True)
        steps.append(watch.reads)
    assert steps == [[], [], []]


@torch.no_grad()
def test_compiled_static_generate_equals_eager_with_one_graph_across_steps_and_prompts():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = randomize_(ZayaVL(tiny_vl_config(image_attention="bidirectional")), seed=5, std=0.2).eval()
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True, dynamic=False)
    for grids, text_after in (([(1, 4, 4)], 3), ([(1, 2, 4)], 6)):
        prompt = image_prompt(grids, text_after=text_after, seed=len(grids) + text_after)
        eager = model.generate(**prompt, max_new_tokens=24, do_sample=False, eos_token_id=None)
        compiled = model.generate(**prompt, max_new_tokens=24, do_sample=False, eos_token_id=None,
                                  cache_implementation="static", compile_config=compile_config)
        assert torch.equal(compiled, eager)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1  # not one per step (a step count read on the host would)
