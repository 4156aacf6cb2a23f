"""Checkpoint tensor names → our native names, the one place the plugin knows about layouts.

The layouts and their key tables are ``zaya_vl.conversion``'s (ours, Zyphra's original release, the upstream
transformers port); this module only picks the layout from the config vLLM loaded (the checkpoint's tensor names
are a stream here, not a list to inspect) and streams the tensors through ``conversion.to_native``, which stacks
per-expert tensors as each layer's last expert arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from zaya_vl.conversion import LAYOUTS, NATIVE, Layout, to_native

REFERENCE_MODEL_TYPE = "zaya1_vl"


def checkpoint_layout(config) -> Layout:
    """The layout of the checkpoint whose config vLLM loaded: a ``zaya1_vl`` config says which release wrote it."""
    if getattr(config, "model_type", None) == REFERENCE_MODEL_TYPE:
        return LAYOUTS[config.layout]
    return NATIVE


def native_weights(weights: Iterable[tuple[str, torch.Tensor]], text_config, layout: Layout = NATIVE
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (native name, tensor) for every checkpoint tensor of ``layout``."""
    if layout is NATIVE:
        yield from weights
        return
    yield from to_native(weights, layout, text_config.num_hidden_layers, text_config.num_experts)


__all__ = ["checkpoint_layout", "native_weights"]
