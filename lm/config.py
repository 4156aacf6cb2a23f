"""Configuration of the ZAYA1 language model.

Field names and defaults follow upstream `transformers.ZayaConfig` (model_type ``zaya``), so a
``config.json`` written by upstream loads here unchanged and ours loads upstream. The defaults are the
released ZAYA1-8B. The fields after ``cca_time1`` are ours: they decide, explicitly, the points where
Zyphra's reference code, the upstream port and upstream `zaya` disagree, and size the vision LoRA adapters.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from transformers import PreTrainedConfig

LAYER_TYPES = ("hybrid", "hybrid_sliding")
SKIP_EXPERT_OUTPUTS = ("zero", "scaled_input")
DELAYED_GATES = ("current_token", "previous_token")


# Every size and epsilon is checked for its type and range when a config is built, so a config.json with
# `"hidden_size": "192"` or `"num_hidden_layers": 3.0` fails naming the key, not deep inside a layer.
POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "max_position_embeddings", "moe_intermediate_size", "num_experts", "router_hidden_size",
                 "cca_time0", "cca_time1", "sliding_window")
NONNEGATIVE_INTS = ("vision_lora_rank_attn", "vision_lora_rank_mlp", "pad_token_id", "bos_token_id")
POSITIVE_FLOATS = ("rms_norm_eps", "router_rms_norm_eps", "initializer_range")


def check_config_values(owner: str, config, positive_ints=(), nonnegative_ints=(), positive_floats=()) -> None:
    """Raise naming the first field whose value has the wrong type or range (``None`` is left to the caller)."""
    for names, kind, low in ((positive_ints, "a positive integer", 1), (nonnegative_ints, "an integer >= 0", 0)):
        for name in names:
            value = getattr(config, name, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{owner}: {name} must be {kind}, got {value!r} ({type(value).__name__}).")
    for name in positive_floats:
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r} "
                             f"({type(value).__name__}).")


class ZayaLMConfig(PreTrainedConfig):
    r"""Configuration of [`ZayaLM`].

    Ours, beyond upstream `ZayaConfig`:

    skip_expert_output (`str`, defaults to `"zero"`):
        What a token routed to the skip ("MoD") expert receives from the MoE block. `"zero"` is upstream
        transformers; `"scaled_input"` (router probability × the normed block input) is Zyphra's reference
        code, which checkpoints in the reference layout load with.
    router_rms_norm_eps (`float`, *optional*):
        Epsilon of the router's RMSNorm. `None` means `rms_norm_eps` (upstream); the reference uses 1e-6.
    vision_lora_delayed_gate (`str`, defaults to `"current_token"`):
        Which token's image mask gates the vision LoRA of the delayed value, which token ``t`` takes from token
        ``t - 1``. `"current_token"`: ``mask_t · B·A·x_{t-1}`` (Zyphra's reference code). `"previous_token"`: the
        LoRA is part of token ``t - 1``'s delayed projection, ``mask_{t-1} · B·A·x_{t-1}`` (the upstream port).
    sliding_window_masks_padding (`bool`, defaults to `True`):
        Whether ``hybrid_sliding`` layers keep real tokens from attending to padding. The upstream port builds
        their masks without the padding mask (real tokens attend to padded positions inside the window); its
        checkpoints load with `False` to reproduce it.
    vision_lora_rank_attn / vision_lora_rank_mlp (`int`, defaults to 0):
        Rank of the image-token-gated LoRA adapters on the CCA projections and on every expert's fc1/fc2.
        0 builds no adapters (the text-only LM).
    """

    model_type = "zaya"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 262272
    hidden_size: int = 2048
    num_hidden_layers: int = 40
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    sliding_window: int | None = None
    attention_dropout: float = 0.0
    moe_intermediate_size: int = 2048
    num_experts_per_tok: int = 1
    num_experts: int = 16
    output_router_logits: bool = False
    layer_types: list[str] | None = None
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 106
    attention_bias: bool = False
    lm_head_bias: bool = False
    router_hidden_size: int = 256
    cca_time0: int = 2
    cca_time1: int = 2

    skip_expert_output: Literal["zero", "scaled_input"] = "zero"
    router_rms_norm_eps: float | None = None
    vision_lora_delayed_gate: Literal["current_token", "previous_token"] = "current_token"
    sliding_window_masks_padding: bool = True
    vision_lora_rank_attn: int = 0
    vision_lora_rank_mlp: int = 0

    def __post_init__(self, **kwargs: Any) -> None:
        check_config_values("ZayaLMConfig", self, POSITIVE_INTS, NONNEGATIVE_INTS, POSITIVE_FLOATS)
        if self.layer_types is None:
            self.layer_types = ["hybrid"] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        if self.rope_parameters is None:
            self.rope_parameters = {
                "hybrid": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.5},
                "hybrid_sliding": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5},
            }
        # Some hub configs carry a stray top-level `rope_type` next to the per-layer-type dicts.
        if isinstance(self.rope_parameters, dict):
            self.rope_parameters.pop("rope_type", None)
        super().__post_init__(**kwargs, ignore_keys_at_rope_validation={"hybrid", "hybrid_sliding"})
        self._validate_zaya()

    def convert_rope_params_to_dict(self, **kwargs: Any) -> dict:
        # Our rope_parameters are keyed by layer type; nothing to standardise.
        return kwargs

    def _validate_zaya(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"ZayaLMConfig: {message}")

        if self.num_experts_per_tok != 1:
            fail(f"num_experts_per_tok={self.num_experts_per_tok}; ZAYA1 routes each token to exactly one expert.")
        if self.num_attention_heads % self.num_key_value_heads:
            fail(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                 f"num_key_value_heads={self.num_key_value_heads}.")
        if (self.num_key_value_heads * self.head_dim) % 2:
            fail("num_key_value_heads * head_dim must be even (values are half current, half delayed).")
        if len(self.layer_types) != self.num_hidden_layers:
            fail(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers.")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            fail(f"unknown layer_types {unknown}; expected one of {LAYER_TYPES}.")
        if "hybrid_sliding" in self.layer_types and not self.sliding_window:
            fail("layer_types contains 'hybrid_sliding' but sliding_window is not set.")
        if self.skip_expert_output not in SKIP_EXPERT_OUTPUTS:
            fail(f"skip_expert_output={self.skip_expert_output!r}; expected one of {SKIP_EXPERT_OUTPUTS}.")
        if self.vision_lora_delayed_gate not in DELAYED_GATES:
            fail(f"vision_lora_delayed_gate={self.vision_lora_delayed_gate!r}; expected one of {DELAYED_GATES}.")
        if self.cca_time0 < 1 or self.cca_time1 < 1:
            fail("cca_time0 and cca_time1 must be >= 1.")
        for layer_type in set(self.layer_types):
            if layer_type not in self.rope_parameters:
                fail(f"rope_parameters has no entry for layer type {layer_type!r}.")

    # -- derived sizes -------------------------------------------------------------------------------
    @property
    def router_norm_eps(self) -> float:
        return self.rms_norm_eps if self.router_rms_norm_eps is None else self.router_rms_norm_eps

    @property
    def conv_window(self) -> int:
        """How many previous tokens the CCA convolution looks at (the decode conv state's length)."""
        return (self.cca_time0 - 1) + (self.cca_time1 - 1)

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of compressed K and V one token occupies in the cache, summed over layers."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim * itemsize


__all__ = ["ZayaLMConfig"]
