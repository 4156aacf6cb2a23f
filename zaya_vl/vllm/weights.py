"""Checkpoint tensor names → the plugin's module names, the one place the plugin knows about layouts.

The layouts and their key tables are ``zaya_vl.conversion``'s (ours, ours before the headless model, Zyphra's
original release, the upstream transformers port); this module only picks the layout from the config vLLM loaded
(the checkpoint's tensor names are a stream here, not a list to inspect) and streams the tensors through
``conversion.to_native``, which stacks per-expert tensors as each layer's last expert arrives.

The plugin's modules keep the flat tree vLLM models have (``model.*`` the decoder, ``vision_tower.*``,
``lm_head.*``): the ``native_v1`` names. A native checkpoint may be in either generation of our names (the config
does not say which), so each name is brought to today's names and then written in the plugin's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from zaya_vl.conversion import LAYOUTS, NATIVE, NATIVE_V1, Layout, to_native, upgrade_native_v1_name

REFERENCE_MODEL_TYPE = "zaya1_vl"


def checkpoint_layout(config) -> Layout:
    """The layout of the checkpoint whose config vLLM loaded: a ``zaya1_vl`` config says which release wrote it."""
    if getattr(config, "model_type", None) == REFERENCE_MODEL_TYPE:
        return LAYOUTS[config.layout]
    return NATIVE


def native_weights(weights: Iterable[tuple[str, torch.Tensor]], text_config, layout: Layout = NATIVE
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (plugin name, tensor) for every checkpoint tensor of ``layout``. A text-only ZAYA1 checkpoint's
    names (``model.*``, ``lm_head.*``) are already the plugin's and pass unchanged."""
    if layout is not NATIVE:
        weights = to_native(weights, layout, text_config.num_hidden_layers, text_config.num_experts)
    for name, tensor in weights:
        yield _plugin_name(name), tensor


def _plugin_name(name: str) -> str:
    name = upgrade_native_v1_name(name)
    # A name outside the model's tree passes as it is, for the loader to name as unexpected.
    return NATIVE_V1.checkpoint_name(name) if name.startswith(("model.", "lm_head.")) else name


__all__ = ["checkpoint_layout", "native_weights"]
