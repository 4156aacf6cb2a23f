"""The vision LoRA acts only on image tokens: text-only input gives exactly the text-only LM."""

import pytest
import torch

from zaya_vl import ZayaLM, ZayaVL
from zaya_vl.lora.gated import GatedLoRA
from zaya_vl.testing import image_prompt, randomize_, tiny_lm_config, tiny_vl_config


@pytest.fixture
def vl_model():
    return randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2).eval()


@torch.no_grad()
def test_text_only_input_equals_the_lm_alone_bit_for_bit(vl_model):
    lm = ZayaLM(tiny_lm_config()).eval()  # no adapters at all
    missing, unexpected = lm.model.load_state_dict(vl_model.language_model.state_dict(), strict=False)
    assert not missing and all(".vision_adapters." in key for key in unexpected)
    lm.lm_head.load_state_dict(vl_model.lm_head.state_dict())
    input_ids = torch.randint(3, 150, (2, 17), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    assert torch.equal(vl_model(input_ids=input_ids, attention_mask=attention_mask).logits,
                       lm(input_ids=input_ids, attention_mask=attention_mask).logits)
    assert torch.equal(vl_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False),
                       lm.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False))


@torch.no_grad()
def test_every_attention_adapter_leaves_text_rows_exactly_unchanged(vl_model, monkeypatch):
    calls = []
    real_add_to = GatedLoRA.add_to

    def checking_add_to(self, output, x, image_rows):
        result = real_add_to(self, output, x, image_rows)
        text = torch.ones(output.reshape(-1, output.shape[-1]).shape[0], dtype=torch.bool)
        text[image_rows] = False
        flat_in, flat_out = output.reshape(-1, output.shape[-1]), result.reshape(-1, result.shape[-1])
        calls.append((torch.equal(flat_in[text], flat_out[text]), bool((flat_in[~text] != flat_out[~text]).any())))
        return result

    monkeypatch.setattr(GatedLoRA, "add_to", checking_add_to)
    vl_model(**image_prompt([(1, 4, 4)], seed=1))
    assert len(calls) == 3 * 4  # q, k, v_current and o in each of the 3 layers (v_delayed is gated separately)
    assert all(text_unchanged and image_changed for text_unchanged, image_changed in calls)


@torch.no_grad()
def test_expert_adapters_leave_text_rows_exactly_unchanged(vl_model):
    experts = vl_model.language_model.layers[1].mlp.experts
    gate = vl_model.language_model.layers[1].mlp.gate
    x = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(3))
    image_token = torch.zeros(20, dtype=torch.bool)
    image_token[5:13] = True
    routing = gate(x, None)
    with_adapters = experts(x[0], routing, image_token)
    for adapter in experts.vision_adapters.values():  # same computation, adapters contributing nothing
        adapter.B.zero_()
    without = experts(x[0], routing, image_token)
    computed = routing.expert < experts.num_experts
    assert torch.equal(with_adapters[~image_token], without[~image_token])
    assert bool((with_adapters[image_token & computed] != without[image_token & computed]).any(-1).all())


def test_peft_lora_stacks_on_top_and_trains_only_its_own_adapters(vl_model):
    peft = pytest.importorskip("peft")
    prompt = image_prompt([(1, 4, 4)], seed=2)
    with torch.no_grad():
        before = vl_model(**prompt).logits
    model = peft.get_peft_model(vl_model, peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "o_proj"]))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert any("qkv_proj.q_proj.lora_A" in n for n in trainable)  # the fused projection honours PEFT wrappers
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        after = model(**prompt).logits
    assert (after - before).abs().max() > 1e-3  # PEFT's adapters are really in the forward pass
