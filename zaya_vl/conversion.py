"""Checkpoint layouts of ZAYA1-VL, each one declarative key table, and the one converter that walks them.

Four layouts of the same weights exist:

- ``native``: ours, in transformers' multimodal shape (as ``qwen2_5_vl``): the headless model under ``model.``
  holds ``model.vision_tower.*`` and the decoder ``model.language_model.*`` (upstream transformers' text ``zaya``
  names, plus ``vision_adapters``); the head is ``lm_head.*``.
- ``native_v1``: ours before the headless model existed: ``vision_tower.*``, the decoder as ``model.*``,
  ``lm_head.*``. Folders saved then (the bundled tiny model among them) still load; the rename is per key and
  unambiguous, since the new names under ``model.`` start with ``vision_tower.`` or ``language_model.`` and no
  decoder tensor does.
- ``zyphra``: Zyphra's original release and reference code (``Zyphra/transformers`` branch ``zaya1-vl``):
  ``attn.``/``mlp.`` sub-layers, one ``local_experts.J`` per expert, LoRA as ``nn.Sequential`` pairs, and each
  residual scale stored on the sub-layer *after* the merge it belongs to.
- ``transformers``: the upstream transformers port (``model.language_model.*``, ``model.visual.*``, stacked expert
  tensors, ``*_lora_a`` / ``*_lora_b``).

A table is a tuple of :class:`KeyRule` (checkpoint pattern → native template), tried in order. Patterns use
``{layer}`` and ``{expert}`` (integers), ``{name}`` (one dotted component) and ``{rest}`` (anything). Templates can
also use ``{previous_layer}`` and ``{last_layer}``: the residual scale that the zyphra layout keeps on layer ``i``
belongs to layer ``i - 1`` (and the model's final one to the last layer). A rule with ``{expert}`` stacks the
per-expert tensors along a new first dimension. Renaming-only tables also run backwards, to save a layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

_FIELDS = {"layer": r"(?P<layer>\d+)", "expert": r"(?P<expert>\d+)", "name": r"(?P<name>[A-Za-z0-9_]+)",
           "rest": r"(?P<rest>.+)"}


class LayoutKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class KeyRule:
    source: str
    target: str

    @cached_property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"(\{\w+\})", self.source)
        return re.compile("^" + "".join(_FIELDS[p[1:-1]] if p[1:-1] in _FIELDS else re.escape(p) for p in parts)
                          + "$")

    @property
    def stacks_experts(self) -> bool:
        return "{expert}" in self.source

    @property
    def invertible(self) -> bool:
        return not any(f"{{{field}}}" in self.target for field in ("previous_layer", "last_layer")) \
            and not self.stacks_experts

    def apply(self, key: str, num_layers: int) -> tuple[str, int | None] | None:
        """(native name, expert index or None), or None when the rule does not match ``key``."""
        match = self.pattern.match(key)
        if match is None:
            return None
        fields = match.groupdict()
        layer = int(fields.get("layer") or 0)
        target = self.target.format(**fields, previous_layer=layer - 1, last_layer=num_layers - 1)
        expert = int(fields["expert"]) if "expert" in fields else None
        return target, expert


@dataclass(frozen=True)
class Layout:
    name: str
    rules: tuple[KeyRule, ...]
    # A regex that some key of every checkpoint in this layout matches and no key of any other layout does.
    marker: str | None = None

    def native_name(self, key: str, num_layers: int) -> tuple[str, int | None]:
        for rule in self.rules:
            found = rule.apply(key, num_layers)
            if found is not None:
                return found
        raise LayoutKeyError(f"{key}: no rule of the {self.name!r} layout maps this key")

    @cached_property
    def _inverse_rules(self) -> tuple[KeyRule, ...]:
        return tuple(KeyRule(rule.target, rule.source) for rule in self.rules if rule.invertible)

    def checkpoint_name(self, native: str) -> str:
        """The inverse of :meth:`native_name` through the layout's renaming rules (used to save in this layout);
        a name only a stacking or layer-shifting rule writes is an error."""
        for rule in self._inverse_rules:
            found = rule.apply(native, 0)
            if found is not None:
                return found[0]
        raise LayoutKeyError(f"{native}: no renaming rule of the {self.name!r} layout writes this key")


_LM = "model.language_model"
_VISION = "model.vision_tower"
NATIVE = Layout("native", (KeyRule("{rest}", "{rest}"),), marker=r"^model\.(vision_tower|language_model\.norm)\.")

NATIVE_V1 = Layout("native_v1", marker=r"^model\.(norm|layers\.\d+\.self_attn)\.", rules=(
    KeyRule("vision_tower.{rest}", f"{_VISION}.{{rest}}"),
    KeyRule("lm_head.{rest}", "lm_head.{rest}"),
    KeyRule("model.{rest}", f"{_LM}.{{rest}}"),
))

_Z = "model.layers.{layer}"
_N = f"{_LM}.layers.{{layer}}"
_ZYPHRA_ATTN_LORA = {"linear_q": "q", "linear_k": "k", "val_proj1": "v_current", "val_proj2": "v_delayed"}
ZYPHRA = Layout("zyphra", marker=r"^model\.layers\.\d+\.attn\.", rules=(
    KeyRule("vision_tower.{rest}", f"{_VISION}.{{rest}}"),
    KeyRule("model.embed_tokens.{rest}", f"{_LM}.embed_tokens.{{rest}}"),
    KeyRule("lm_head.{rest}", "lm_head.{rest}"),
    KeyRule("model.final_norm.{rest}", f"{_LM}.norm.{{rest}}"),
    KeyRule("model.res_scale.{name}", f"{_LM}.layers.{{last_layer}}.post_mlp_residual_scale.{{name}}"),
    KeyRule("model.layers.0.attn.res_scale.{name}", f"{_LM}.input_{{name}}"),
    KeyRule(f"{_Z}.attn.res_scale.{{name}}", f"{_LM}.layers.{{previous_layer}}.post_mlp_residual_scale.{{name}}"),
    KeyRule(f"{_Z}.attn.input_norm.{{rest}}", f"{_N}.input_layernorm.{{rest}}"),
    *(KeyRule(f"{_Z}.attn.self_attn.qkv.lora_{theirs}.{i}.weight",
              f"{_N}.self_attn.qkv_proj.vision_adapters.{ours}.{factor}")
      for theirs, ours in _ZYPHRA_ATTN_LORA.items() for i, factor in ((0, "A"), (1, "B"))),
    *(KeyRule(f"{_Z}.attn.self_attn.lora_linear_o.{i}.weight", f"{_N}.self_attn.vision_adapters.o.{factor}")
      for i, factor in ((0, "A"), (1, "B"))),
    KeyRule(f"{_Z}.attn.self_attn.qkv.linear_q.{{rest}}", f"{_N}.self_attn.qkv_proj.q_proj.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.linear_k.{{rest}}", f"{_N}.self_attn.qkv_proj.k_proj.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.val_proj1.{{rest}}", f"{_N}.self_attn.qkv_proj.v_proj_current.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.val_proj2.{{rest}}", f"{_N}.self_attn.qkv_proj.v_proj_delayed.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.conv_qk.0.{{rest}}", f"{_N}.self_attn.qkv_proj.conv_qk_depthwise.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.conv_qk.1.{{rest}}", f"{_N}.self_attn.qkv_proj.conv_qk_grouped.{{rest}}"),
    KeyRule(f"{_Z}.attn.self_attn.qkv.temp", f"{_N}.self_attn.qk_norm.temp"),
    KeyRule(f"{_Z}.attn.self_attn.o_proj.{{rest}}", f"{_N}.self_attn.o_proj.{{rest}}"),
    KeyRule(f"{_Z}.mlp.input_norm.{{rest}}", f"{_N}.post_attention_layernorm.{{rest}}"),
    KeyRule(f"{_Z}.mlp.res_scale.{{name}}", f"{_N}.post_attention_residual_scale.{{name}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.router.rmsnorm_eda.{{rest}}", f"{_N}.mlp.gate.router_mlp.norm.{{rest}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.router.router_mlp.0.{{rest}}", f"{_N}.mlp.gate.router_mlp.fc1.{{rest}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.router.router_mlp.2.{{rest}}", f"{_N}.mlp.gate.router_mlp.fc2.{{rest}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.router.router_mlp.4.{{rest}}", f"{_N}.mlp.gate.router_mlp.out_proj.{{rest}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.router.{{rest}}", f"{_N}.mlp.gate.{{rest}}"),
    KeyRule(f"{_Z}.mlp.zaya_block.experts.local_experts.{{expert}}.linear_fc1.weight", f"{_N}.mlp.experts.gate_up_proj"),
    KeyRule(f"{_Z}.mlp.zaya_block.experts.local_experts.{{expert}}.linear_fc2.weight", f"{_N}.mlp.experts.down_proj"),
    *(KeyRule(f"{_Z}.mlp.zaya_block.experts.local_experts.{{expert}}.lora_{fc}.{i}.weight",
              f"{_N}.mlp.experts.vision_adapters.{ours}.{factor}")
      for fc, ours in (("fc1", "gate_up"), ("fc2", "down")) for i, factor in ((0, "A"), (1, "B"))),
))

# The port's decoder names are ours but for the final norm, the router's norm and the LoRA factors.
TRANSFORMERS = Layout("transformers", marker=r"^model\.(visual|language_model\.final_norm)\.", rules=(
    KeyRule("model.visual.{rest}", f"{_VISION}.{{rest}}"),
    KeyRule("lm_head.{rest}", "lm_head.{rest}"),
    KeyRule(f"{_LM}.final_norm.{{rest}}", f"{_LM}.norm.{{rest}}"),
    KeyRule(f"{_N}.mlp.gate.router_mlp.rmsnorm_eda.{{rest}}", f"{_N}.mlp.gate.router_mlp.norm.{{rest}}"),
    *(KeyRule(f"{_N}.self_attn.qkv_proj.{proj}_lora_{side}.weight",
              f"{_N}.self_attn.qkv_proj.vision_adapters.{proj}.{side.upper()}")
      for proj in ("q", "k", "v_current", "v_delayed") for side in ("a", "b")),
    *(KeyRule(f"{_N}.self_attn.o_lora_{side}.weight", f"{_N}.self_attn.vision_adapters.o.{side.upper()}")
      for side in ("a", "b")),
    *(KeyRule(f"{_N}.mlp.experts.lora_{proj}_proj_{side}", f"{_N}.mlp.experts.vision_adapters.{proj}.{side.upper()}")
      for proj in ("gate_up", "down") for side in ("a", "b")),
    KeyRule(f"{_LM}.{{rest}}", f"{_LM}.{{rest}}"),
))

LAYOUTS = {layout.name: layout for layout in (NATIVE, NATIVE_V1, ZYPHRA, TRANSFORMERS)}


def detect_layout(keys: Iterable[str]) -> Layout:
    """The layout whose marker the checkpoint's keys carry; native when none does (a folder of a few tensors),
    and an error when the keys carry the markers of two layouts (a folder mixing two releases' files)."""
    found: dict[str, str] = {}
    for key in keys:
        for layout in LAYOUTS.values():
            if layout.name not in found and re.match(layout.marker, key):
                found[layout.name] = key
    if len(found) > 1:
        mixed = ", ".join(f"{key} ({name})" for name, key in found.items())
        raise LayoutKeyError(f"The checkpoint's tensor names mix layouts: {mixed}.")
    return LAYOUTS[next(iter(found))] if found else NATIVE


def upgrade_native_v1_name(key: str) -> str:
    """``key`` in today's native names: a ``native_v1`` name renamed, a native name (or a non-model key such as
    an optimizer's) unchanged. Used where v1 names can arrive key by key (state dicts, vLLM's weight stream)."""
    if key.startswith(("model.vision_tower.", "model.language_model.")):
        return key
    if key.startswith(("vision_tower.", "model.")):
        return NATIVE_V1.native_name(key, 0)[0]
    return key


def unmapped_keys(layout: Layout, keys: Iterable[str], num_layers: int, limit: int = 3) -> list[str]:
    """The first keys ``layout`` cannot map (for error messages that say why no layout fits)."""
    missed = []
    for key in keys:
        try:
            layout.native_name(key, num_layers)
        except LayoutKeyError:
            missed.append(key)
            if len(missed) == limit:
                break
    return missed


def to_native(tensors: Iterable[tuple[str, torch.Tensor]], layout: Layout, num_layers: int,
              num_experts: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Walk a checkpoint's ``(name, tensor)`` stream and yield native ``(name, tensor)`` pairs.

    Renamed tensors pass straight through; per-expert tensors wait only until their last expert arrives, are
    stacked and released, so no second copy of the checkpoint is ever held.
    """
    pending: dict[str, dict[int, torch.Tensor]] = {}
    seen: set[str] = set()
    for key, tensor in tensors:
        target, expert = layout.native_name(key, num_layers)
        if expert is None:
            if target in seen:
                raise LayoutKeyError(f"{key}: a second checkpoint key maps to {target}")
            seen.add(target)
            yield target, tensor
            continue
        if not 0 <= expert < num_experts:
            raise LayoutKeyError(f"{key}: expert {expert} does not exist (the config has {num_experts} experts)")
        group = pending.setdefault(target, {})
        if expert in group:
            raise LayoutKeyError(f"{key}: expert {expert} of {target} appears twice")
        group[expert] = tensor
        if len(group) == num_experts:
            del pending[target]
            seen.add(target)
            yield target, torch.stack([group.pop(index) for index in range(num_experts)])
    for target, group in pending.items():
        missing = sorted(set(range(num_experts)) - set(group))
        raise LayoutKeyError(f"{target}: the checkpoint has no tensors for experts {missing}")


def from_native(state_dict: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """The same tensors under ``layout``'s names (for saving)."""
    return {layout.checkpoint_name(key): tensor for key, tensor in state_dict.items()}


__all__ = ["KeyRule", "LAYOUTS", "Layout", "LayoutKeyError", "NATIVE", "NATIVE_V1", "TRANSFORMERS", "ZYPHRA",
           "detect_layout", "from_native", "to_native", "unmapped_keys", "upgrade_native_v1_name"]
