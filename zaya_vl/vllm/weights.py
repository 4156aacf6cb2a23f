"""Checkpoint tensor names → our native names, the one place the plugin knows about layouts.

Native checkpoints (``ZayaLM`` / ``ZayaVL``, and upstream transformers' ``zaya``, whose names ours follow) pass
through. Zyphra's reference ``zaya1_vl`` layout is renamed by ``zaya_vl.conversion`` (the project's key table),
and its per-expert tensors are stacked into the fused expert tensors as all of a layer's experts arrive,
so the checkpoint streams through without being held in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

REFERENCE_MODEL_TYPES = ("zaya1_vl",)


def checkpoint_layout(config) -> str:
    """'reference' for Zyphra's reference layout, else 'native'."""
    return "reference" if getattr(config, "model_type", None) in REFERENCE_MODEL_TYPES else "native"


def native_weights(weights: Iterable[tuple[str, torch.Tensor]], text_config, layout: str = "native"
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (native name, tensor) for every checkpoint tensor of the given layout."""
    if layout == "native":
        yield from weights
        return
    if layout != "reference":
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected 'native' or 'reference'.")
    from zaya_vl.conversion import native_key

    num_layers, num_experts = text_config.num_hidden_layers, text_config.num_experts
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in weights:
        target = native_key(key, num_layers)
        if not isinstance(target, tuple):
            yield target, tensor
            continue
        name, index = target
        experts = pending.setdefault(name, {})
        experts[index] = tensor
        if len(experts) == num_experts:
            del pending[name]
            if sorted(experts) != list(range(num_experts)):
                raise KeyError(f"{name}: expected experts 0..{num_experts - 1}, got {sorted(experts)}")
            yield name, torch.stack([experts[i] for i in range(num_experts)])
    if pending:
        name, experts = next(iter(pending.items()))
        missing = sorted(set(range(num_experts)) - set(experts))
        raise KeyError(f"{name}: the checkpoint lacks experts {missing}")


__all__ = ["REFERENCE_MODEL_TYPES", "checkpoint_layout", "native_weights"]
