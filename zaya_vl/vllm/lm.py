"""ZAYA1 (the text model) for vLLM: CCA attention over vLLM's paged K/V cache, with CCA's per-sequence state
in vLLM's hybrid-state cache; the top-1 MLP router with EDA and balancing biases; the skip expert; learned
residual scaling; an fp32 residual stream.

It computes what ``zaya_vl.lm.ZayaLM`` computes (the tests compare them token by token) on vLLM's flat batch of
tokens from many requests. Module and parameter names are ``ZayaLM``'s, so our native checkpoints (and
upstream transformers' ``zaya`` layout, which ours follows) load by name; Zyphra's reference layout is renamed
on the way in (``zaya_vl.vllm.weights``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.sequence import IntermediateTensors

from zaya_vl.vllm.config import text_config as _text_config
from zaya_vl.vllm.cca import CCA_STATE_COPY_FUNCS, CCAStateLayer, cca_state_shapes
from zaya_vl.vllm.lora import add_gated_lora
from zaya_vl.vllm.weights import native_weights


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return (normed * self.weight.float()).to(self.weight.dtype)


class ResidualScaling(nn.Module):
    """``(branch + b₁)·s₁ + (residual + b₂)·s₂`` in fp32 (the residual stream's dtype)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden_size))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden_size))
        self.residual_scale = nn.Parameter(torch.ones(hidden_size))
        self.residual_bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        branch = (branch.float() + self.hidden_states_bias.float()) * self.hidden_states_scale.float()
        return branch + (residual + self.residual_bias.float()) * self.residual_scale.float()


class PartialRotary(nn.Module):
    """RoPE on the first ``partial_rotary_factor · head_dim`` channels of each head (rotate-half style)."""

    def __init__(self, head_dim: int, params: dict) -> None:
        super().__init__()
        rope_type = params.get("rope_type", "default")
        if rope_type != "default":
            raise NotImplementedError(f"rope_type {rope_type!r}: only 'default' RoPE is implemented.")
        self.rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32) / self.rotary_dim
        self.register_buffer("inv_freq", 1.0 / (params["rope_theta"] ** exponents), persistent=False)

    def forward(self, heads: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``heads`` (tokens, n, head_dim), ``positions`` (tokens,)."""
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)
        cos = torch.cat([freqs, freqs], dim=-1).cos()[:, None].to(heads.dtype)
        sin = torch.cat([freqs, freqs], dim=-1).sin()[:, None].to(heads.dtype)
        rotary, rest = heads[..., : self.rotary_dim], heads[..., self.rotary_dim:]
        half = self.rotary_dim // 2
        rotated = torch.cat([-rotary[..., half:], rotary[..., :half]], dim=-1)
        return torch.cat([rotary * cos + rotated * sin, rest], dim=-1)


class QKNorm(nn.Module):
    """Each query and key head L2-normalised to norm √head_dim; key heads times a learned temperature."""

    def __init__(self, config) -> None:
        super().__init__()
        self.num_heads, self.scale = config.num_attention_heads, math.sqrt(config.head_dim)
        self.temp = nn.Parameter(torch.zeros(config.num_key_value_heads))

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        gains = torch.cat([self.temp.new_ones(self.num_heads), self.temp]) * self.scale
        norm = torch.linalg.vector_norm(heads, dim=-1, keepdim=True).clamp_min(torch.finfo(heads.dtype).eps)
        return heads * (gains[:, None].to(heads.dtype) / norm)


class ZayaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        dtype = vllm_config.model_config.dtype
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                            config.head_dim)
        layer_type = config.layer_types[layer_idx]
        self.qkv_proj = CCAStateLayer(config, layer_idx, dtype, prefix=f"{prefix}.qkv_proj")
        self.qk_norm = QKNorm(config)
        self.rotary = PartialRotary(config.head_dim, config.rope_parameters[layer_type])
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        rank = getattr(config, "vision_lora_rank_attn", 0) or 0
        if rank:
            from zaya_vl.vllm.cca import _LoRA

            self.vision_adapters = nn.ModuleDict({"o": _LoRA(self.o_proj.in_features, self.o_proj.out_features, rank)})
        else:
            self.vision_adapters = None
        self.attn = Attention(
            self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            per_layer_sliding_window=config.sliding_window if layer_type == "hybrid_sliding" else None,
            prefix=f"{prefix}.attn",
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor, image_token: torch.Tensor | None) -> torch.Tensor:
        heads, values = self.qkv_proj(x, image_token)
        heads = self.rotary(self.qk_norm(heads), positions)
        query = heads[:, : self.num_heads].reshape(x.shape[0], -1)
        key = heads[:, self.num_heads:].reshape(x.shape[0], -1)
        out = self.attn(query.contiguous(), key.contiguous(), values.contiguous())
        projected = self.o_proj(out)
        if self.vision_adapters is not None:
            projected = add_gated_lora(projected, out, self.vision_adapters["o"], image_token)
        return projected


class RouterMLP(nn.Module):
    def __init__(self, hidden: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden, eps)
        self.fc1 = nn.Linear(hidden, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, hidden, bias=True)
        self.out_proj = nn.Linear(hidden, num_classes, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(h, self.norm.weight.shape, self.norm.weight.float(), self.norm.eps)
        h = F.gelu(F.linear(h, self.fc1.weight.float(), self.fc1.bias.float()))
        h = F.gelu(F.linear(h, self.fc2.weight.float(), self.fc2.bias.float()))
        return F.linear(h, self.out_proj.weight.float())


class ZayaRouter(nn.Module):
    """fp32 MLP router: top-1 of ``softmax + balancing_biases`` over experts + skip; weight = unbiased prob."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.down_proj = nn.Linear(config.hidden_size, config.router_hidden_size, bias=True)
        self.use_eda = layer_idx != 0
        if self.use_eda:
            self.router_states_scale = nn.Parameter(torch.ones(config.router_hidden_size))
        eps = getattr(config, "router_rms_norm_eps", None)
        self.router_mlp = RouterMLP(config.router_hidden_size, config.num_experts + 1,
                                    config.rms_norm_eps if eps is None else eps)
        self.register_buffer("balancing_biases", torch.zeros(config.num_experts + 1, dtype=torch.float32))

    def forward(self, x: torch.Tensor, previous_state: torch.Tensor | None):
        state = F.linear(x.float(), self.down_proj.weight.float(), self.down_proj.bias.float())
        if self.use_eda and previous_state is not None:
            state = state + previous_state * self.router_states_scale.float()
        probs = torch.softmax(self.router_mlp(state), dim=-1)
        expert = torch.argmax(probs + self.balancing_biases.float(), dim=-1)
        weight = probs.gather(1, expert[:, None]).squeeze(1)
        return expert, weight, state


class ZayaExperts(nn.Module):
    """SwiGLU experts stored fused (gate_up (E, 2I, H), gate rows first; down (E, H, I)).

    Each expert's tokens run as two GEMMs; image tokens additionally get their expert's vision LoRA deltas
    (before the activation on gate_up, after it on down), computed on the image rows only.
    """

    def __init__(self, config) -> None:
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.intermediate = E, I
        self.skip_output = getattr(config, "skip_expert_output", "zero")
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        rank = getattr(config, "vision_lora_rank_mlp", 0) or 0
        if rank:
            self.vision_adapters = nn.ModuleDict({
                "gate_up": _ExpertLoRA(E, H, 2 * I, rank), "down": _ExpertLoRA(E, I, H, rank)})
        else:
            self.vision_adapters = None

    def forward(self, x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor,
                image_token: torch.Tensor | None) -> torch.Tensor:
        if self.skip_output == "zero":
            out = torch.zeros_like(x)
        else:  # the reference layout's skip expert: router probability × its input
            out = x * ((expert == self.num_experts).to(x.dtype) * weight.to(x.dtype))[:, None]
        use_adapters = self.vision_adapters is not None and image_token is not None and bool(image_token.any())
        for e in torch.unique(expert).tolist():
            if e == self.num_experts:
                continue
            rows = (expert == e).nonzero().squeeze(1)
            xs = x.index_select(0, rows)
            hidden = xs @ self.gate_up_proj[e].t().to(x.dtype)
            image = image_token.index_select(0, rows).nonzero().squeeze(1) if use_adapters else None
            if image is not None and image.numel():
                hidden = hidden.index_add(0, image, self._delta("gate_up", e, xs.index_select(0, image)))
            gate, up = hidden.split(self.intermediate, dim=-1)
            activated = F.silu(gate) * up
            y = activated @ self.down_proj[e].t().to(x.dtype)
            if image is not None and image.numel():
                y = y.index_add(0, image, self._delta("down", e, activated.index_select(0, image)))
            y = y * weight.index_select(0, rows)[:, None].to(y.dtype)
            out = out.index_copy(0, rows, y.to(out.dtype))
        return out

    def _delta(self, name: str, e: int, rows: torch.Tensor) -> torch.Tensor:
        adapter = self.vision_adapters[name]
        return (rows @ adapter.A[e].t().to(rows.dtype)) @ adapter.B[e].t().to(rows.dtype)


class _ExpertLoRA(nn.Module):
    """Per-expert vision LoRA factors, named as ``zaya_vl.lora.gated.GatedExpertLoRA`` names them."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(num_experts, rank, in_features))
        self.B = nn.Parameter(torch.zeros(num_experts, out_features, rank))


class ZayaMoE(nn.Module):
    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.gate = ZayaRouter(config, layer_idx)
        self.experts = ZayaExperts(config)

    def forward(self, x, previous_state, image_token):
        expert, weight, state = self.gate(x, previous_state)
        return self.experts(x, expert, weight, image_token), state


class ZayaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.self_attn = ZayaAttention(config, layer_idx, vllm_config, prefix=f"{prefix}.self_attn")
        self.mlp = ZayaMoE(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_residual_scale = ResidualScaling(config.hidden_size)
        self.post_mlp_residual_scale = ResidualScaling(config.hidden_size)

    def forward(self, residual, router_state, positions, image_token):
        attn_out = self.self_attn(self.input_layernorm(residual), positions, image_token)
        residual = self.post_attention_residual_scale(attn_out, residual)
        mlp_out, router_state = self.mlp(self.post_attention_layernorm(residual), router_state, image_token)
        return self.post_mlp_residual_scale(mlp_out, residual), router_state


class ZayaModel(nn.Module):
    """The decoder stack (``model.*`` in our checkpoints)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ZayaDecoderLayer(config, i, vllm_config, prefix=f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(config.hidden_size))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, input_ids, positions, inputs_embeds=None, image_token=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        residual = ((inputs_embeds + self.input_hidden_states_bias) * self.input_hidden_states_scale).float()
        router_state = None
        for layer in self.layers:
            residual, router_state = layer(residual, router_state, positions, image_token)
        return self.norm(residual)


class ZayaStateMixin(HasInnerState, IsHybrid):
    """What vLLM asks a hybrid model about its per-sequence state (shapes, dtypes, how to copy it)."""

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        return cca_state_shapes(_text_config(vllm_config.model_config.hf_config))

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        dtype = vllm_config.model_config.dtype
        return (dtype, dtype)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return CCA_STATE_COPY_FUNCS


class ZayaForCausalLM(nn.Module, ZayaStateMixin):
    """vLLM's entry class for ``ZayaLM`` / ``ZayaForCausalLM`` checkpoints."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = _text_config(vllm_config.model_config.hf_config)
        _check_supported(vllm_config, config)
        self.config = config
        self.model = ZayaModel(config, vllm_config, prefix="model")
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_by_name(self, native_weights(weights, self.config))


def load_by_name(module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copy each named tensor into the parameter or buffer of that name; every parameter must be given."""
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    loaded = set()
    for name, tensor in weights:
        if name == "lm_head.weight" and "lm_head.weight" not in params:
            continue  # tied to the embedding
        if name in params:
            param = params[name]
            if param.shape != tensor.shape and not hasattr(param, "weight_loader"):
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model {tuple(param.shape)}")
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        elif name in buffers:
            buffers[name].copy_(tensor)
        else:
            raise KeyError(f"unexpected weight {name!r} in the checkpoint")
        loaded.add(name)
    if "lm_head.weight" not in loaded and "lm_head.weight" in params and params["lm_head.weight"] is \
            params.get("model.embed_tokens.weight"):
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise KeyError(f"the checkpoint has no tensor for {missing[:8]}{' …' if len(missing) > 8 else ''}")
    return loaded


def _check_supported(vllm_config: VllmConfig, config) -> None:
    if vllm_config.cache_config.enable_prefix_caching:
        raise ValueError("ZAYA1 in vLLM needs prefix caching off (CCA's per-sequence state is not cached per "
                         "block): pass enable_prefix_caching=False / --no-enable-prefix-caching.")
    if vllm_config.parallel_config.tensor_parallel_size != 1 or vllm_config.parallel_config.pipeline_parallel_size != 1:
        raise NotImplementedError("ZAYA1 in vLLM runs on one device (tensor/pipeline parallelism is not implemented).")
    if getattr(config, "lm_head_bias", False):
        raise NotImplementedError("lm_head_bias=True is not supported by the vLLM plugin.")


__all__ = ["ZayaForCausalLM", "ZayaModel", "ZayaStateMixin", "load_by_name"]
