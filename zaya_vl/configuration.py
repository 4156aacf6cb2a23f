"""Configuration of ZAYA1-VL: the ZAYA1 LM (``text_config``) plus the Qwen2.5-VL vision tower (``vision_config``).

``ZayaVLConfig`` (model_type ``zaya_vl``) is our native layout. ``ReferenceZayaVLConfig`` (model_type
``zaya1_vl``) reads the configs of Zyphra's original release and of the upstream transformers port;
``to_native()`` turns either into a ``ZayaVLConfig``, with that reference's behaviour set explicitly in the fields
where the two references disagree (skip-expert output, router norm epsilon, image attention).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedConfig
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.utils import logging

from zaya_vl.lm.config import ZayaLMConfig, check_config_values
from zaya_vl.lm.masks import IMAGE_ATTENTION_MODES

logger = logging.get_logger(__name__)




def _vision_config(value, where: str = "vision_config") -> Qwen2_5_VLVisionConfig:
    if isinstance(value, Qwen2_5_VLVisionConfig):
        return value
    fields = dict(value or {})
    fields.pop("model_type", None)  # each reference writes its own; the vision sub-config has its own type
    known = set(Qwen2_5_VLVisionConfig.__dataclass_fields__) | _CONFIG_BOOKKEEPING
    warn_unknown_keys(where, set(fields) - known)
    config = Qwen2_5_VLVisionConfig(**{key: value for key, value in fields.items() if key in known})
    check_config_values(where, config, ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels",
                                        "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size",
                                        "out_hidden_size"))
    return config


class ZayaVLConfig(PreTrainedConfig):
    r"""Configuration of [`ZayaVL`].

    image_attention (`str`, defaults to `"images"`):
        How image tokens attend; text is always causal. `"images"`: every image token sees every image token of
        its sample (the upstream transformers port). `"bidirectional"`: every image token sees every token of its
        own image. `"prefix"`: every token up to two past the last image token sees that whole prefix (Zyphra's
        reference code with flash attention). `"causal"`: plain causal attention (Zyphra's reference code, eager
        and SDPA).
    image_token_id / vision_start_token_id / vision_end_token_id (`int`):
        Ids of the image token (N per image) and of the tokens around each image's span.
    """

    model_type = "zaya_vl"
    sub_configs = {"text_config": ZayaLMConfig, "vision_config": Qwen2_5_VLVisionConfig}
    keys_to_ignore_at_inference = ["cache"]

    text_config: Any = None
    vision_config: Any = None
    image_token_id: int = 262144
    vision_start_token_id: int | None = 255999
    vision_end_token_id: int | None = 256000
    image_attention: Literal["images", "bidirectional", "prefix", "causal"] = "images"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if not isinstance(self.text_config, ZayaLMConfig):
            self.text_config = ZayaLMConfig(**dict(self.text_config or {}))
        if self.vision_config is None:  # ZAYA1-VL-8B's tower, as the upstream port defines it
            self.vision_config = {**_PORT_VISION_DEFAULTS, "out_hidden_size": self.text_config.hidden_size}
        self.vision_config = _vision_config(self.vision_config)
        # The LM's hidden states receive the merger's output, and the head's tie follows the LM.
        self.tie_word_embeddings = self.text_config.tie_word_embeddings
        super().__post_init__(**kwargs)
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
            value = getattr(self, name)
            if value is None and name != "image_token_id":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
                raise ValueError(f"ZayaVLConfig: {name}={value!r} is not a token id of the vocabulary "
                                 f"(0 .. {vocab - 1}).")
        if self.image_attention not in IMAGE_ATTENTION_MODES:
            raise ValueError(f"ZayaVLConfig: image_attention={self.image_attention!r}; "
                             f"expected one of {IMAGE_ATTENTION_MODES}.")
        if self.vision_config.out_hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"ZayaVLConfig: the vision merger outputs {self.vision_config.out_hidden_size} features but the "
                f"LM's hidden size is {self.text_config.hidden_size}; they must be equal.")

    def get_text_config(self, *args, **kwargs) -> ZayaLMConfig:
        return self.text_config


class ReferenceZayaVLConfig(PreTrainedConfig):
    """A ``zaya1_vl`` config as Zyphra's release or the upstream transformers port writes it. Read-only: convert with
    ``to_native()``.

    Both use ``model_type`` ``zaya1_vl``; ``layout`` tells them apart by their keys: the port nests
    ``text_config``, the original release is flat (Megatron-style keys such as ``rotary_base`` included).
    """

    model_type = "zaya1_vl"

    @property
    def layout(self) -> str:
        return "transformers" if isinstance(getattr(self, "text_config", None), dict) else "zyphra"

    def to_native(self, **overrides: Any) -> ZayaVLConfig:
        ref = {key: value for key, value in self.to_dict().items() if key not in _CONFIG_BOOKKEEPING}
        fields = (port_config_fields if self.layout == "transformers" else zyphra_config_fields)(ref)
        fields.update(overrides)
        return ZayaVLConfig(**fields)


# Keys every transformers config carries; none of them describes the model.
_CONFIG_BOOKKEEPING = set(PreTrainedConfig().to_dict()) | {"_attn_implementation", "_attn_implementation_autoset",
                                                          "torch_dtype", "use_cache", "output_router_logits"}
_warned: set[tuple[str, ...]] = set()


def warn_unknown_keys(where: str, keys) -> None:
    """Name, once per set, the config keys that nothing reads: they are not silently reinterpreted."""
    keys = tuple(sorted(keys))
    if keys and (where, *keys) not in _warned:
        _warned.add((where, *keys))
        logger.warning(f"{where}: ignoring config keys that ZAYA1-VL does not use: {', '.join(keys)}.")


class _Keys:
    """Reads a config dict and remembers which keys were read, so the rest can be reported."""

    def __init__(self, values: dict, where: str) -> None:
        self.values, self.where, self.read = dict(values), where, set()

    def get(self, *names: str, default=None):
        """The first of ``names`` present (aliases, most specific first), else ``default``."""
        self.read.update(names)
        for name in names:
            if name in self.values and self.values[name] is not None:
                return self.values[name]
        return default

    def ignore(self, *names: str) -> None:
        self.read.update(names)

    def warn_rest(self) -> None:
        warn_unknown_keys(self.where, set(self.values) - self.read - _CONFIG_BOOKKEEPING)


# The original release's switches for parts of the architecture we implement one way only: the value each must
# have, checked rather than assumed.
_FIXED_ARCHITECTURE = {
    "cca": True, "scale_residual_merge": True, "gated_linear_unit": True, "zaya_use_eda": True,
    "normalization": "RMSNorm", "activation_func": "swiglu", "add_bias_linear": False, "moe_router_topk": 1,
    "num_experts_per_tok": 1, "use_lora_att": False, "fused_add_norm": False, "clamp_temp": False,
}
# Read by the original code for kernels or precision only; they do not change what the model computes.
_PRECISION_ONLY = ("zaya_high_prec", "residual_in_fp32", "apply_rope_fusion", "bias_activation_fusion",
                   "activation_func_fp8_input_store", "projector_hidden_act", "lora_rank", "use_rope_scaling",
                   "ar_threshold", "num_query_groups", "architectures")


def _check_fixed(keys: _Keys) -> None:
    for key, required in _FIXED_ARCHITECTURE.items():
        value = keys.get(key)
        if value is not None and value != required:
            raise ValueError(f"{keys.where}: {key}={value!r}; zaya_vl implements only {key}={required!r}.")


def _rope(theta: float, sliding_theta: float, partial: float) -> dict:
    return {
        "hybrid": {"rope_type": "default", "rope_theta": float(theta), "partial_rotary_factor": float(partial)},
        "hybrid_sliding": {"rope_type": "default", "rope_theta": float(sliding_theta),
                           "partial_rotary_factor": float(partial)},
    }


def zyphra_config_fields(ref: dict) -> dict:
    """ZayaVLConfig fields for a flat config of the original release, read as Zyphra's reference code reads it.

    Aliases are the ones Zyphra's code and the upstream port's converter accept (the Megatron-style name second);
    a key absent takes the reference code's default. Where the reference code does not read a Megatron key
    (``rope_pct``, ``spatial_patch_size``, ``in_chans``, a top-level ``temporal_patch_size``) it is read as the
    port's converter reads it.
    """
    keys = _Keys(ref, "zyphra (original ZAYA1-VL) config")
    _check_fixed(keys)
    keys.ignore(*_PRECISION_ONLY)
    layers = int(keys.get("num_hidden_layers", default=80))
    # Neither reference reads `swa_layers` (the port's converter drops it), and Zyphra's code applies a set
    # `sliding_window` to every layer, with the one rotary base of all layers (so `swa_rotary_base` is unused too).
    swa_layers = keys.get("swa_layers")
    keys.ignore("swa_rotary_base")
    if swa_layers and any(int(w) > 0 for w in swa_layers):
        logger.warning(f"{keys.where}: swa_layers={swa_layers} is ignored, as both reference implementations "
                       "ignore it; set sliding_window to use a sliding window.")
    sliding_window = keys.get("sliding_window")
    layer_types = ["hybrid_sliding" if sliding_window else "hybrid"] * layers
    rope = dict(keys.get("rope_parameters", "rope_scaling", default={}) or {})
    theta = rope.get("rope_theta", keys.get("rope_theta", "rotary_base", default=5_000_000))
    partial = rope.get("partial_rotary_factor", keys.get("partial_rotary_factor", "rope_pct", default=0.5))
    vision_lora = bool(keys.get("vision_lora", default=False))
    ffn = keys.get("intermediate_size", "ffn_hidden_size", default=4096)
    text_config = dict(
        vocab_size=keys.get("vocab_size", default=262272),
        hidden_size=keys.get("hidden_size", default=2048),
        num_hidden_layers=layers,
        num_attention_heads=keys.get("num_attention_heads", default=8),
        num_key_value_heads=keys.get("num_key_value_heads", "num_query_groups", default=2),
        head_dim=keys.get("head_dim", default=128),
        max_position_embeddings=keys.get("max_position_embeddings", default=131072),
        initializer_range=keys.get("initializer_range", default=0.02),
        rms_norm_eps=keys.get("rms_norm_eps", "norm_epsilon", default=1e-5),
        tie_word_embeddings=keys.get("tie_word_embeddings", default=True),
        rope_parameters=_rope(theta, theta, partial),
        layer_types=layer_types,
        sliding_window=sliding_window,
        attention_dropout=keys.get("attention_dropout", default=0.0),
        # The original fc1 width counts gate and up together.
        moe_intermediate_size=int(ffn) // 2,
        num_experts=keys.get("num_experts", default=16),
        attention_bias=keys.get("attention_bias", default=False),
        lm_head_bias=keys.get("lm_head_bias", default=False),
        router_hidden_size=keys.get("router_hidden_size", "zaya_mlp_expansion", default=256),
        cca_time0=keys.get("cca_time0", default=2),
        cca_time1=keys.get("cca_time1", default=2),
        pad_token_id=keys.get("pad_token_id"),
        bos_token_id=keys.get("bos_token_id", default=1),
        eos_token_id=keys.get("eos_token_id", default=2),
        # Zyphra's code gives a skip-routed token router probability x its normed input ("MoD"), and its router
        # norm reads a `layernorm_epsilon` the config never has, falling back to 1e-6.
        skip_expert_output="scaled_input" if keys.get("zaya_use_mod", default=True) else "zero",
        router_rms_norm_eps=float(keys.get("layernorm_epsilon", default=1e-6)),
        vision_lora_rank_attn=int(keys.get("vision_lora_rank_attn", default=0) or 0) if vision_lora else 0,
        vision_lora_rank_mlp=int(keys.get("vision_lora_rank_mlp", default=0) or 0) if vision_lora else 0,
    )
    vision = dict(keys.get("vision_config", default={}) or {})
    for megatron, field in (("in_chans", "in_channels"), ("spatial_patch_size", "patch_size")):
        if megatron in vision:
            vision.setdefault(field, vision.pop(megatron))
    if keys.get("temporal_patch_size") is not None:
        vision.setdefault("temporal_patch_size", keys.get("temporal_patch_size"))
    fields = dict(
        text_config=text_config,
        vision_config=_vision_config(vision, where="zyphra config's vision_config"),
        image_token_id=keys.get("image_token_id", default=151646),
        vision_start_token_id=keys.get("vision_start_token_id"),
        vision_end_token_id=keys.get("vision_end_token_id"),
        pad_token_id=text_config["pad_token_id"],
        bos_token_id=text_config["bos_token_id"],
        eos_token_id=text_config["eos_token_id"],
        image_attention="causal",
    )
    keys.warn_rest()
    return fields


# The upstream port's defaults (Zaya1VLVisionConfig) where Qwen2.5-VL's differ.
_PORT_VISION_DEFAULTS = {"hidden_size": 1280, "temporal_patch_size": 1, "tokens_per_second": 2,
                         "out_hidden_size": 2048, "depth": 32, "intermediate_size": 3420, "num_heads": 16,
                         "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
                         "fullatt_block_indexes": [7, 15, 23, 31]}


def port_config_fields(ref: dict) -> dict:
    """ZayaVLConfig fields for a config of the upstream transformers port (``text_config`` / ``vision_config``)."""
    keys = _Keys(ref, "transformers zaya1_vl config")
    text = _Keys(keys.get("text_config"), "transformers zaya1_vl config's text_config")
    _check_fixed(text)
    text.ignore("model_type", "base_config_key")
    lm_fields = {name: text.get(name) for name in _LM_FIELDS if text.get(name) is not None}
    vision_lora = bool(text.get("vision_lora", default=True))
    lm_fields["vision_lora_rank_attn"] = int(text.get("vision_lora_rank_attn", default=8)) if vision_lora else 0
    lm_fields["vision_lora_rank_mlp"] = int(text.get("vision_lora_rank_mlp", default=32)) if vision_lora else 0
    # The port gives skip-routed tokens nothing and normalises the router with rms_norm_eps, as text `zaya` does.
    lm_fields.update(skip_expert_output="zero", router_rms_norm_eps=None, vision_lora_delayed_gate="previous_token",
                     sliding_window_masks_padding=False)
    text.warn_rest()
    vision = {**_PORT_VISION_DEFAULTS, **dict(keys.get("vision_config", default={}) or {})}
    fields = dict(
        text_config=lm_fields,
        vision_config=_vision_config(vision, where="transformers zaya1_vl config's vision_config"),
        image_token_id=keys.get("image_token_id", default=262147),
        vision_start_token_id=keys.get("vision_start_token_id", default=255999),
        vision_end_token_id=keys.get("vision_end_token_id", default=256000),
        tie_word_embeddings=keys.get("tie_word_embeddings", default=True),
        image_attention="images",
    )
    keys.warn_rest()
    return fields


# Ours beyond upstream's fields: the settings where the references disagree, and the adapters' ranks.
_BEHAVIOUR_FIELDS = ("skip_expert_output", "router_rms_norm_eps", "vision_lora_delayed_gate",
                     "sliding_window_masks_padding", "vision_lora_rank_attn", "vision_lora_rank_mlp")
# ZayaLMConfig's fields that the port's text config shares by name (ours beyond them are set explicitly).
_LM_FIELDS = tuple(name for name in ZayaLMConfig.__dataclass_fields__
                   if name not in _BEHAVIOUR_FIELDS and not name.startswith("_"))


def port_behaviour_differences(config: "ZayaVLConfig") -> list[str]:
    """The port's fixed behaviour (``setting=value``) wherever ``config`` is set otherwise."""
    port = port_config_fields({"text_config": {}, "vision_config": {}})
    text = port["text_config"]
    wanted = {"image_attention": port["image_attention"],
              **{name: text[name] for name in _BEHAVIOUR_FIELDS[:4]}}
    actual = {"image_attention": config.image_attention,
              **{name: getattr(config.text_config, name) for name in _BEHAVIOUR_FIELDS[:4]}}
    # A setting matters only where the model has what it acts on.
    if "hybrid_sliding" not in config.text_config.layer_types:
        wanted.pop("sliding_window_masks_padding")
    if not config.text_config.vision_lora_rank_attn:
        wanted.pop("vision_lora_delayed_gate")
    return [f"{name}={value!r}" for name, value in wanted.items() if actual[name] != value]


def port_config_dict(config: "ZayaVLConfig") -> dict:
    """The ``config.json`` the upstream transformers port reads, for a model saved in its layout."""
    text = {name: getattr(config.text_config, name) for name in _LM_FIELDS
            if name in ZayaLMConfig.__dataclass_fields__ and name not in _CONFIG_BOOKKEEPING}
    ranks = (config.text_config.vision_lora_rank_attn, config.text_config.vision_lora_rank_mlp)
    text.update(model_type="zaya1_vl_text", vision_lora=all(ranks), vision_lora_rank_attn=ranks[0] or 8,
                vision_lora_rank_mlp=ranks[1] or 32)
    vision = {name: value for name, value in config.vision_config.to_dict().items()
              if name in _PORT_VISION_DEFAULTS or name in ("in_channels", "hidden_act", "initializer_range")}
    vision["model_type"] = "zaya1_vl_vision"
    return {
        "architectures": ["Zaya1VLForConditionalGeneration"], "model_type": "zaya1_vl",
        "text_config": text, "vision_config": vision, "image_token_id": config.image_token_id,
        "vision_start_token_id": config.vision_start_token_id, "vision_end_token_id": config.vision_end_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


__all__ = ["IMAGE_ATTENTION_MODES", "ReferenceZayaVLConfig", "ZayaVLConfig", "port_behaviour_differences",
           "port_config_dict"]
