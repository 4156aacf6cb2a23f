"""Checkpoints: upstream's save_pretrained loads as-is; ours loads into upstream; bad keys are named errors."""

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from zaya_vl.lm import CheckpointMismatchError, ZayaLM
from zaya_vl.testing import tiny_lm_config, tiny_upstream_zaya, randomize_


@torch.no_grad()
def test_our_checkpoint_loads_into_upstream_with_identical_logits(tmp_path):
    ours = randomize_(ZayaLM(tiny_lm_config(layer_types=["hybrid", "hybrid_sliding", "hybrid"], sliding_window=4)),
                      seed=3).eval()
    ours.save_pretrained(tmp_path)
    upstream = transformers.ZayaForCausalLM.from_pretrained(tmp_path).eval()
    assert set(load_file(tmp_path / "model.safetensors")) == set(upstream.state_dict()) - {"lm_head.weight"}
    input_ids = torch.randint(3, 160, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(upstream(input_ids).logits, ours(input_ids).logits, atol=1e-4, rtol=0)


@torch.no_grad()
def test_upstream_checkpoint_round_trips_through_ours_unchanged(tmp_path):
    upstream = tiny_upstream_zaya(seed=5)
    upstream.save_pretrained(tmp_path / "upstream")
    ZayaLM.from_pretrained(tmp_path / "upstream").save_pretrained(tmp_path / "ours")
    before, after = load_file(tmp_path / "upstream" / "model.safetensors"), load_file(tmp_path / "ours" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def _rewrite_checkpoint(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def saved_upstream(tmp_path):
    tiny_upstream_zaya(seed=1).save_pretrained(tmp_path)
    return tmp_path


def test_missing_key_is_an_error_naming_it(saved_upstream):
    key = "model.layers.1.self_attn.qkv_proj.k_proj.weight"
    _rewrite_checkpoint(saved_upstream, lambda t: t.pop(key))
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint: .*layers\.1\.self_attn\.qkv_proj\.k_proj"):
        ZayaLM.from_pretrained(saved_upstream)


def test_unexpected_key_is_an_error_naming_it(saved_upstream):
    _rewrite_checkpoint(saved_upstream, lambda t: t.update({"model.layers.0.mlp.experts.extra_bias": torch.zeros(3)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in the checkpoint: .*experts\.extra_bias"):
        ZayaLM.from_pretrained(saved_upstream)


def test_misshapen_key_is_an_error_naming_key_and_shapes(saved_upstream):
    key = "model.layers.2.mlp.experts.down_proj"
    _rewrite_checkpoint(saved_upstream, lambda t: t.update({key: torch.zeros(4, 64, 16)}))
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: .*layers\.2\.mlp\.experts\.down_proj.*\(4, 64, 16\)"):
        ZayaLM.from_pretrained(saved_upstream)


def test_strict_false_loads_anyway(saved_upstream):
    _rewrite_checkpoint(saved_upstream, lambda t: t.update({"model.unused": torch.zeros(1)}))
    model, info = ZayaLM.from_pretrained(saved_upstream, strict=False, output_loading_info=True)
    assert "model.unused" in info["unexpected_keys"]


@torch.no_grad()
def test_bf16_loading_keeps_the_router_in_fp32(saved_upstream):
    model = ZayaLM.from_pretrained(saved_upstream, dtype=torch.bfloat16).eval()
    assert model.model.layers[0].self_attn.o_proj.weight.dtype == torch.bfloat16
    gate = model.model.layers[0].mlp.gate
    assert {p.dtype for p in gate.parameters()} == {torch.float32} and gate.balancing_biases.dtype == torch.float32
    reference = ZayaLM.from_pretrained(saved_upstream).eval()
    input_ids = torch.randint(3, 160, (1, 12), generator=torch.Generator().manual_seed(4))
    close = (model(input_ids).logits.float() - reference(input_ids).logits).abs().max()
    assert close < 0.1 * reference(input_ids).logits.abs().max()
