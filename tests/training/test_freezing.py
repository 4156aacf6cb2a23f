"""Stage presets and name patterns decide what trains."""

from __future__ import annotations

import pytest

from zaya_vl import ZayaVL
from zaya_vl.lm import ZayaLM
from zaya_vl.testing import tiny_lm_config, tiny_vl_config
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
    merger = "model.vision_tower.merger.*"
    assert preset_patterns("align", True, False) == [merger, "*.vision_adapters.*"]
    assert preset_patterns("sft", True, False) == [merger, "*.vision_adapters.*", "model.language_model.layers.*"]
    assert preset_patterns("sft", True, True) == [merger, "*.vision_adapters.*"]
    assert preset_patterns("pretrain", True, False) == ["model.language_model.*", "lm_head.*"]


def test_vl_presets_select_the_parts_they_name():
    model = ZayaVL(tiny_vl_config())
    apply_freezing(model, "pretrain", is_vl=True)
    assert _trainable(model) == {n for n, _ in model.named_parameters() if not n.startswith("model.vision_tower.")}
    apply_freezing(model, "align", is_vl=True)
    assert _trainable(model) == {n for n, _ in model.named_parameters()
                                 if n.startswith("model.vision_tower.merger.") or ".vision_adapters." in n}


def test_a_vl_pattern_in_the_older_names_names_its_new_spelling():
    model = ZayaVL(tiny_vl_config())
    with pytest.raises(ConfigError, match=r"pattern 'model.layers.\*.mlp.\*' matches no parameter .* this pattern "
                                          r"reads 'model.language_model.layers.\*.mlp.\*'"):
        apply_freezing(model, "sft", is_vl=True, freeze_patterns=["model.layers.*.mlp.*"])
    with pytest.raises(ConfigError, match=r"reads 'model.vision_tower.merger.\*'"):
        apply_freezing(model, "sft", is_vl=True, train_patterns=["vision_tower.merger.*"])
