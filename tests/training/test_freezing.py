"""Stage presets and name patterns decide what trains."""

from __future__ import annotations

import pytest

from zaya_vl.lm import ZayaLM
from zaya_vl.testing import tiny_lm_config
from zaya_vl.training import ConfigError, apply_freezing
from zaya_vl.training.freezing import preset_patterns


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lm_presets_and_patterns():
    model = ZayaLM(tiny_lm_config())
    names = {n for n, _ in model.named_parameters()}
    report = apply_freezing(model, "pretrain", is_vl=False)
    assert _trainable(model) == names and report.trainable_parameters == report.total_parameters

    report = apply_freezing(model, "sft", is_vl=False, freeze_patterns=["model.layers.*.mlp.*"])
    assert _trainable(model) == {n for n in names if ".mlp." not in n}
    assert report.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "trainable parameters:" in report.describe()


def test_tied_head_follows_the_embedding():
    model = ZayaLM(tiny_lm_config())
    apply_freezing(model, "sft", is_vl=False, freeze_patterns=["lm_head.*"])  # the head is the embedding
    assert not model.model.embed_tokens.weight.requires_grad


def test_bad_patterns_and_stages_are_errors():
    model = ZayaLM(tiny_lm_config())
    with pytest.raises(ConfigError, match=r"freeze.freeze: pattern 'model.layer.\*' matches no parameter"):
        apply_freezing(model, "sft", is_vl=False, freeze_patterns=["model.layer.*"])
    with pytest.raises(ConfigError, match="needs a VL model"):
        apply_freezing(model, "align", is_vl=False)
    with pytest.raises(ConfigError, match="leaves no trainable parameter"):
        apply_freezing(model, "sft", is_vl=False, freeze_patterns=["*"])


def test_vl_presets():
    assert preset_patterns("align", True, False) == ["vision_tower.merger.*", "*.vision_adapters.*"]
    assert preset_patterns("sft", True, False) == ["vision_tower.merger.*", "*.vision_adapters.*", "model.layers.*"]
    assert preset_patterns("sft", True, True) == ["vision_tower.merger.*", "*.vision_adapters.*"]
    assert preset_patterns("pretrain", True, False) == ["model.*", "lm_head.*"]
