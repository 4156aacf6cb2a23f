"""Outputs declare every field they carry, so DDP / torch's pytree can take them apart and rebuild them."""

import torch
from torch.utils import _pytree as pytree

from zaya_vl import ZayaVL
from zaya_vl.lm import ZayaLM
from zaya_vl.testing import image_prompt, randomize_, tiny_lm_config, tiny_vl_config


def _round_trip(out):
    leaves, spec = pytree.tree_flatten(out)
    rebuilt = pytree.tree_unflatten(leaves, spec)  # what DDP does with a forward's output
    assert type(rebuilt) is type(out) and list(rebuilt.keys()) == list(out.keys())
    return rebuilt


def test_lm_output_with_router_information_rebuilds():
    model = randomize_(ZayaLM(tiny_lm_config()), seed=0)
    ids = torch.randint(3, 100, (2, 7))
    out = model(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
    assert len(out.routings) == model.config.num_hidden_layers
    rebuilt = _round_trip(out)
    assert torch.equal(rebuilt.routings[0].expert, out.routings[0].expert) and torch.equal(rebuilt.loss, out.loss)


def test_vl_output_with_image_features_rebuilds():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0)
    prompt = image_prompt([(1, 4, 4)], text_before=2, text_after=2)
    out = model(**prompt, labels=prompt["input_ids"], output_router_logits=True, use_cache=False)
    rebuilt = _round_trip(out)
    assert torch.equal(rebuilt.image_hidden_states, out.image_hidden_states)
