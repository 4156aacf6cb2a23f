"""Configuration of ZAYA1-VL: the ZAYA1 LM (``text_config``) plus the Qwen2.5-VL vision tower (``vision_config``).

``ZayaVLConfig`` (model_type ``zaya_vl``) is our native layout. ``ReferenceZayaVLConfig`` (model_type
``zaya1_vl``) only reads the flat configs of Zyphra's reference code and checkpoints (the released
ZAYA1-VL-8B); ``to_native()`` turns them into a ``ZayaVLConfig``, with the reference's behaviour made
explicit in the fields where it differs from upstream (DESIGN §2).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedConfig
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

from zaya_vl.lm.config import ZayaLMConfig

IMAGE_ATTENTION_MODES = ("bidirectional", "causal")


def _vision_config(value) -> Qwen2_5_VLVisionConfig:
    if isinstance(value, Qwen2_5_VLVisionConfig):
        return value
    fields = dict(value or {})
    fields.pop("model_type", None)  # the reference writes "qwen2_5_vl"; the vision sub-config has its own type
    return Qwen2_5_VLVisionConfig(**fields)


class ZayaVLConfig(PreTrainedConfig):
    r"""Configuration of [`ZayaVL`].

    image_attention (`str`, defaults to `"bidirectional"`):
        `"bidirectional"`: every image token attends to every token of its own image (and to everything
        before it); text stays causal. `"causal"`: plain causal attention everywhere, reproducing Zyphra's
        reference code (its eager and SDPA paths).
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
    image_attention: Literal["bidirectional", "causal"] = "bidirectional"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if not isinstance(self.text_config, ZayaLMConfig):
            self.text_config = ZayaLMConfig(**dict(self.text_config or {}))
        self.vision_config = _vision_config(self.vision_config)
        # The LM's hidden states receive the merger's output, and the head's tie follows the LM.
        self.tie_word_embeddings = self.text_config.tie_word_embeddings
        super().__post_init__(**kwargs)
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
    """The flat config of Zyphra's reference ``zaya1_vl`` code. Read-only: convert with ``to_native()``."""

    model_type = "zaya1_vl"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)

    def to_native(self, **overrides: Any) -> ZayaVLConfig:
        ref = self.to_dict()
        unsupported = {
            "cca": True, "scale_residual_merge": True, "gated_linear_unit": True, "zaya_use_eda": True,
            "normalization": "RMSNorm", "activation_func": "swiglu", "add_bias_linear": False,
            "moe_router_topk": 1, "use_lora_att": False, "fused_add_norm": False,
        }
        for key, required in unsupported.items():
            if key in ref and ref[key] != required:
                raise ValueError(f"Reference config has {key}={ref[key]!r}; zaya_vl supports only {required!r}.")
        layers = ref["num_hidden_layers"]
        swa_layers = ref.get("swa_layers")
        if swa_layers:
            layer_types = ["hybrid_sliding" if int(w) > 0 else "hybrid" for w in swa_layers]
            sliding_window = ref.get("sliding_window") or max(int(w) for w in swa_layers) + 1
        else:
            layer_types, sliding_window = ["hybrid"] * layers, ref.get("sliding_window")
        rope = dict(ref.get("rope_parameters") or {})
        theta = rope.get("rope_theta", ref.get("rope_theta", 5_000_000))
        partial = rope.get("partial_rotary_factor", ref.get("partial_rotary_factor", 0.5))
        vision_lora = bool(ref.get("vision_lora"))
        text_config = ZayaLMConfig(
            vocab_size=ref["vocab_size"],
            hidden_size=ref["hidden_size"],
            num_hidden_layers=layers,
            num_attention_heads=ref["num_attention_heads"],
            num_key_value_heads=ref.get("num_key_value_heads", ref.get("num_query_groups")),
            head_dim=ref["head_dim"],
            max_position_embeddings=ref.get("max_position_embeddings", 131072),
            initializer_range=ref.get("initializer_range", 0.02),
            rms_norm_eps=ref.get("norm_epsilon", 1e-5),
            tie_word_embeddings=ref.get("tie_word_embeddings", True),
            rope_parameters={
                "hybrid": {"rope_type": "default", "rope_theta": float(theta), "partial_rotary_factor": partial},
                "hybrid_sliding": {"rope_type": "default", "rope_theta": float(ref.get("swa_rotary_base") or 10_000),
                                   "partial_rotary_factor": partial},
            },
            layer_types=layer_types,
            sliding_window=sliding_window,
            # The reference's fc1 width counts gate and up together.
            moe_intermediate_size=ref["ffn_hidden_size"] // 2,
            num_experts=ref["num_experts"],
            attention_bias=ref.get("attention_bias", False),
            lm_head_bias=ref.get("lm_head_bias", False),
            router_hidden_size=ref["zaya_mlp_expansion"],
            cca_time0=ref.get("cca_time0", 2),
            cca_time1=ref.get("cca_time1", 2),
            pad_token_id=ref.get("pad_token_id"),
            bos_token_id=ref.get("bos_token_id"),
            eos_token_id=ref.get("eos_token_id"),
            # Where the reference differs from upstream (DESIGN §2): what skip tokens receive, the router's
            # norm epsilon (the reference reads an absent `layernorm_epsilon` and falls back to 1e-6).
            skip_expert_output="scaled_input" if ref.get("zaya_use_mod", True) else "zero",
            router_rms_norm_eps=float(ref.get("layernorm_epsilon", 1e-6)),
            vision_lora_rank_attn=int(ref.get("vision_lora_rank_attn") or 0) if vision_lora else 0,
            vision_lora_rank_mlp=int(ref.get("vision_lora_rank_mlp") or 0) if vision_lora else 0,
        )
        fields = dict(
            text_config=text_config,
            vision_config=_vision_config(ref.get("vision_config")),
            image_token_id=ref["image_token_id"],
            vision_start_token_id=ref.get("vision_start_token_id"),
            vision_end_token_id=ref.get("vision_end_token_id"),
            pad_token_id=ref.get("pad_token_id"),
            bos_token_id=ref.get("bos_token_id"),
            eos_token_id=ref.get("eos_token_id"),
        )
        fields.update(overrides)
        return ZayaVLConfig(**fields)


__all__ = ["IMAGE_ATTENTION_MODES", "ReferenceZayaVLConfig", "ZayaVLConfig"]
