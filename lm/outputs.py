"""Output types of the ZAYA1 decoder and causal LM: transformers' outputs plus the router information.

Every field is declared, so an output rebuilds from its items: DDP and ``torch.utils._pytree`` flatten a
``ModelOutput`` into its keys and call ``cls(**items)`` again, which fails on a key the class does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from zaya_vl.lm.moe import Routing


@dataclass
class ZayaModelOutputWithPast(BaseModelOutputWithPast):
    """``routings``: one :class:`Routing` per decoder layer (chosen class, its probability, the router logits),
    in layer order, when the forward was asked for ``output_router_logits``."""

    routings: list[Routing] | None = None


@dataclass
class ZayaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``routings`` as in :class:`ZayaModelOutputWithPast`."""

    routings: list[Routing] | None = None


__all__ = ["ZayaCausalLMOutputWithPast", "ZayaModelOutputWithPast"]
