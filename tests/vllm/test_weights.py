"""The plugin reads the checkpoint's layout from the config vLLM loaded (it sees the tensors only as a stream)."""

from __future__ import annotations

from zaya_vl.conversion import NATIVE, TRANSFORMERS, ZYPHRA
from zaya_vl.vllm.weights import checkpoint_layout


def test_layout_is_read_from_the_config():
    from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig  # noqa: F401  (registers the types)

    class Release:
        model_type, layout = "zaya1_vl", "zyphra"

    class Port:
        model_type, layout = "zaya1_vl", "transformers"

    class Native:
        model_type = "zaya_vl"

    assert checkpoint_layout(Release()) is ZYPHRA
    assert checkpoint_layout(Port()) is TRANSFORMERS
    assert checkpoint_layout(Native()) is NATIVE


def test_every_layout_streams_to_the_plugins_module_names():
    """The plugin's tree is flat (``model.*`` decoder, ``vision_tower.*``, ``lm_head.*``): today's native names, the
    older ones and the port's all arrive there, and a text-only ZAYA1 checkpoint passes unchanged."""
    import torch

    from zaya_vl import ZayaVL
    from zaya_vl.testing import tiny_lm_config, tiny_vl_config
    from zaya_vl.vllm.weights import native_weights

    model = ZayaVL(tiny_vl_config())
    state = model.state_dict()
    state.pop("lm_head.weight")  # tied, as a saved folder holds it
    by_hand = {name.replace("model.language_model.", "model.", 1).replace("model.vision_tower.", "vision_tower.", 1):
               tensor for name, tensor in state.items()}
    text = model.config.text_config
    assert dict(native_weights(state.items(), text)).keys() == by_hand.keys()
    assert dict(native_weights(by_hand.items(), text)).keys() == by_hand.keys()
    port = {TRANSFORMERS.checkpoint_name(name): tensor for name, tensor in state.items()}
    streamed = dict(native_weights(port.items(), text, TRANSFORMERS))
    assert streamed.keys() == by_hand.keys() and all(torch.equal(streamed[k], by_hand[k]) for k in by_hand)
    lm_names = ["model.layers.0.self_attn.o_proj.weight", "model.norm.weight", "model.embed_tokens.weight",
                "lm_head.weight"]
    assert [name for name, _ in native_weights(((n, torch.zeros(1)) for n in lm_names), tiny_lm_config())] == lm_names
