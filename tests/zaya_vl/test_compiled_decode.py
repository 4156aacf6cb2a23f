"""ZayaVL's static-cache decode step compiles once: after an image prompt's eager prefill, every step and a second
prompt of another length reuse one graph, and the greedy ids equal the eager dynamic-cache run's."""

import torch
from transformers import CompileConfig

from zaya_vl import ZayaVL
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config


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
