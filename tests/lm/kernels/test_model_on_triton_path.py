"""The whole LM with every kernel on the Triton path (the interpreter on CPU) against the torch path: image
prefill (MoE LoRA on image sub-ranges, fused CCA conv), then batched greedy decoding (few-token MoE, CCA
state updated in place)."""

import torch

from zaya_vl.lm import ZayaLM
from zaya_vl.testing import balance_routing_, randomize_, tiny_lm_config


@torch.no_grad()
def test_generate_on_triton_path_matches_torch_path(triton_backend, monkeypatch, device):
    config = tiny_lm_config(vision_lora_rank_attn=4, vision_lora_rank_mlp=4, num_hidden_layers=2)
    model = randomize_(ZayaLM(config), seed=3, std=0.3, skip_bias=-0.5).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.vocab_size, (2, 13), generator=generator).to(device)
    balance_routing_(model, input_ids)
    image_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    image_mask[:, 2:9] = True

    def run(backend):
        monkeypatch.setenv("ZAYA_VL_KERNELS", backend)
        out = model(input_ids, image_mask=image_mask, use_cache=True)
        cache, logits = out.cache, [out.logits[:, -1]]
        for _ in range(3):  # greedy steps of one token per sequence
            next_ids = logits[-1].argmax(-1, keepdim=True)
            out = model(next_ids, cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
        return torch.stack(logits, 1), out.logits

    calls = {"moe": 0, "cca": 0}
    moe_triton, cca_triton = triton_backend._triton_modules()
    for module, name, key in ((moe_triton, "grouped_gemm", "moe"), (moe_triton, "expert_mlp_tokens", "moe"),
                              (cca_triton, "cca_conv", "cca")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _key=key, **k: calls.__setitem__(
            _key, calls[_key] + 1) or _real(*a, **k))
    actual, _ = run("triton")
    assert calls["moe"] > 0 and calls["cca"] == 2 * 4  # every layer, prefill and each decode step
    expected, _ = run("torch")
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))
