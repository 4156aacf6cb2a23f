"""The one key-mapping table from Zyphra's reference ``zaya1_vl`` layout to ours.

Reference checkpoints (the released ZAYA1-VL-8B, and ``shared/fixtures``) store each decoder layer as an
``attn.`` and an ``mlp.`` sub-layer, each expert as its own ``local_experts.J.linear_fc1/2``, the vision LoRA as
``nn.Sequential`` pairs, and every residual scale on the sub-layer *after* the merge it belongs to. Ours is
upstream transformers' ``zaya`` layout plus ``vision_tower.*`` and ``vision_adapters``:

| reference | native |
|---|---|
| ``vision_tower.*`` | unchanged |
| ``model.embed_tokens.weight`` | unchanged |
| ``model.final_norm.weight`` | ``model.norm.weight`` |
| ``model.layers.0.attn.res_scale.hidden_states_{scale,bias}`` | ``model.input_hidden_states_{scale,bias}`` |
| ``model.layers.i.attn.res_scale.*`` (i > 0) | ``model.layers.{i-1}.post_mlp_residual_scale.*`` |
| ``model.res_scale.*`` | ``model.layers.{L-1}.post_mlp_residual_scale.*`` |
| ``model.layers.i.attn.input_norm.weight`` | ``model.layers.i.input_layernorm.weight`` |
| ``…attn.self_attn.qkv.linear_q/linear_k/val_proj1/val_proj2`` | ``…self_attn.qkv_proj.q_proj/k_proj/v_proj_current/v_proj_delayed`` |
| ``…attn.self_attn.qkv.conv_qk.0/1`` | ``…self_attn.qkv_proj.conv_qk_depthwise/conv_qk_grouped`` |
| ``…attn.self_attn.qkv.temp`` | ``…self_attn.qk_norm.temp`` |
| ``…attn.self_attn.qkv.lora_linear_q/linear_k/val_proj1/val_proj2.0/1.weight`` | ``…self_attn.qkv_proj.vision_adapters.q/k/v_current/v_delayed.A/B`` |
| ``…attn.self_attn.o_proj`` / ``lora_linear_o.0/1`` | ``…self_attn.o_proj`` / ``self_attn.vision_adapters.o.A/B`` |
| ``model.layers.i.mlp.input_norm.weight`` | ``model.layers.i.post_attention_layernorm.weight`` |
| ``model.layers.i.mlp.res_scale.*`` | ``model.layers.i.post_attention_residual_scale.*`` |
| ``…mlp.zaya_block.router.{down_proj,router_states_scale,balancing_biases}`` | ``…mlp.gate.*`` |
| ``…mlp.zaya_block.router.rmsnorm_eda / router_mlp.0 / .2 / .4`` | ``…mlp.gate.router_mlp.norm / fc1 / fc2 / out_proj`` |
| ``…zaya_block.experts.local_experts.J.linear_fc1 / linear_fc2`` (stacked over J) | ``…mlp.experts.gate_up_proj / down_proj`` |
| ``…local_experts.J.lora_fc1.0/1`` / ``lora_fc2.0/1`` (stacked over J) | ``…mlp.experts.vision_adapters.gate_up.A/B`` / ``down.A/B`` |
| ``lm_head.weight`` | unchanged (absent when tied) |
"""

from __future__ import annotations

import re

import torch

_ATTN_RENAMES = (
    ("self_attn.qkv.linear_q.", "self_attn.qkv_proj.q_proj."),
    ("self_attn.qkv.linear_k.", "self_attn.qkv_proj.k_proj."),
    ("self_attn.qkv.val_proj1.", "self_attn.qkv_proj.v_proj_current."),
    ("self_attn.qkv.val_proj2.", "self_attn.qkv_proj.v_proj_delayed."),
    ("self_attn.qkv.conv_qk.0.", "self_attn.qkv_proj.conv_qk_depthwise."),
    ("self_attn.qkv.conv_qk.1.", "self_attn.qkv_proj.conv_qk_grouped."),
    ("self_attn.qkv.temp", "self_attn.qk_norm.temp"),
    ("self_attn.o_proj.", "self_attn.o_proj."),
    ("input_norm.", "input_layernorm."),
)
_ATTN_ADAPTERS = {"linear_q": "q", "linear_k": "k", "val_proj1": "v_current", "val_proj2": "v_delayed"}
_ROUTER_RENAMES = (
    ("zaya_block.router.rmsnorm_eda.", "mlp.gate.router_mlp.norm."),
    ("zaya_block.router.router_mlp.0.", "mlp.gate.router_mlp.fc1."),
    ("zaya_block.router.router_mlp.2.", "mlp.gate.router_mlp.fc2."),
    ("zaya_block.router.router_mlp.4.", "mlp.gate.router_mlp.out_proj."),
    ("zaya_block.router.", "mlp.gate."),
    ("input_norm.", "post_attention_layernorm."),
    ("res_scale.", "post_attention_residual_scale."),
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(attn|mlp)\.(.+)$")
_EXPERT = re.compile(r"^zaya_block\.experts\.local_experts\.(\d+)\.(linear_fc1|linear_fc2|lora_fc1|lora_fc2)"
                     r"(?:\.(\d))?\.weight$")
_ADAPTER_FACTOR = {"0": "A", "1": "B"}


class ReferenceKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _rename(rest: str, renames) -> str | None:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def native_key(key: str, num_layers: int) -> str | tuple[str, int]:
    """The native name of a reference key, or (fused name, expert index) for a per-expert tensor."""
    if key.startswith("vision_tower.") or key in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
        return key
    if key.startswith("model.final_norm."):
        return "model.norm." + key[len("model.final_norm."):]
    if key.startswith("model.res_scale."):
        return f"model.layers.{num_layers - 1}.post_mlp_residual_scale." + key[len("model.res_scale."):]
    match = _LAYER.match(key)
    if match is None:
        raise ReferenceKeyError(f"unexpected key in the reference checkpoint: {key}")
    layer, part, rest = int(match.group(1)), match.group(2), match.group(3)
    prefix = f"model.layers.{layer}."
    if part == "attn":
        if rest.startswith("res_scale."):
            leaf = rest[len("res_scale."):]
            if layer == 0:
                return "model.input_" + leaf
            return f"model.layers.{layer - 1}.post_mlp_residual_scale.{leaf}"
        adapter = re.match(r"^self_attn\.(?:qkv\.)?lora_(\w+?)\.(\d)\.weight$", rest)
        if adapter:
            proj, factor = adapter.group(1), _ADAPTER_FACTOR[adapter.group(2)]
            if proj == "linear_o":
                return f"{prefix}self_attn.vision_adapters.o.{factor}"
            return f"{prefix}self_attn.qkv_proj.vision_adapters.{_ATTN_ADAPTERS[proj]}.{factor}"
        renamed = _rename(rest, _ATTN_RENAMES)
    else:
        expert = _EXPERT.match(rest)
        if expert:
            index, name, factor = int(expert.group(1)), expert.group(2), expert.group(3)
            fused = {"linear_fc1": "gate_up_proj", "linear_fc2": "down_proj",
                     "lora_fc1": "vision_adapters.gate_up", "lora_fc2": "vision_adapters.down"}[name]
            leaf = f".{_ADAPTER_FACTOR[factor]}" if name.startswith("lora_") else ""
            return f"{prefix}mlp.experts.{fused}{leaf}", index
        renamed = _rename(rest, _ROUTER_RENAMES)
    if renamed is None:
        raise ReferenceKeyError(f"unexpected key in the reference checkpoint: {key}")
    return prefix + renamed


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor], num_layers: int,
                                 num_experts: int) -> dict[str, torch.Tensor]:
    """Rename every reference key and stack per-expert tensors into the fused expert tensors."""
    converted: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        target = native_key(key, num_layers)
        if isinstance(target, tuple):
            name, index = target
            experts.setdefault(name, {})[index] = tensor
        else:
            if target in converted:
                raise ReferenceKeyError(f"two reference keys map to {target} (second: {key})")
            converted[target] = tensor
    for name, by_index in experts.items():
        missing = sorted(set(range(num_experts)) - set(by_index))
        extra = sorted(set(by_index) - set(range(num_experts)))
        if missing or extra:
            raise ReferenceKeyError(f"{name}: expected experts 0..{num_experts - 1}; "
                                    f"missing {missing}, unexpected {extra}")
        converted[name] = torch.stack([by_index[i] for i in range(num_experts)])
    return converted


__all__ = ["ReferenceKeyError", "convert_reference_state_dict", "native_key"]
