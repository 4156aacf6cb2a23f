"""ZAYA1 (the text model) for vLLM: CCA attention over vLLM's paged K/V cache, with CCA's per-sequence state
in vLLM's hybrid-state cache; the top-1 MLP router with EDA and balancing biases; the skip expert; learned
residual scaling; an fp32 residual stream.

It computes what ``zaya_vl.lm.ZayaLM`` computes (the tests compare them token by token) on vLLM's flat batch of
tokens from many requests. Module and parameter names are ``ZayaLM``'s, so our native checkpoints (and
upstream transformers' ``zaya`` layout, which ours follows) load by name; Zyphra's reference layout is renamed
on the way in (``zaya_vl.vllm.weights``).
"""

from __future__ import annotations

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

from zaya_vl.lm.cca import QKNorm
from zaya_vl.lm.layers import ResidualScaling, RMSNorm
from zaya_vl.lm.moe import Routing, ZayaExperts, ZayaRouter
from zaya_vl.lora.gated import GatedLoRA
from zaya_vl.vllm.config import text_config as _text_config
from zaya_vl.vllm.cca import CCA_STATE_COPY_FUNCS, CCAStateLayer, cca_state_shapes
from zaya_vl.vllm.image_attention import ImageAttentionPlan, ImageSequence, attend_image_rows
from zaya_vl.vllm.lora import image_rows
from zaya_vl.vllm.parallel import (AttentionShard, all_reduce, check_divisible, load_slice, local_config,
                                   shard_experts, tp_rank_and_size)
from zaya_vl.vllm.weights import native_weights


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


class ZayaAttention(nn.Module):
    """CCA attention; under tensor parallelism this rank's heads, their outputs summed across ranks."""

    def __init__(self, config, layer_idx: int, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        dtype = vllm_config.model_config.dtype
        rank, self.tp_size = tp_rank_and_size()
        shard = AttentionShard(config, rank, self.tp_size) if self.tp_size > 1 else None
        self.qkv_proj = CCAStateLayer(config, layer_idx, dtype, prefix=f"{prefix}.qkv_proj")
        config = local_config(config, self.tp_size)
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                            config.head_dim)
        layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if layer_type == "hybrid_sliding" else None
        self.qk_norm = QKNorm(config)
        self.rotary = PartialRotary(config.head_dim, config.rope_parameters[layer_type])
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)
        lora_rank = getattr(config, "vision_lora_rank_attn", 0) or 0
        if lora_rank:
            self.vision_adapters = nn.ModuleDict({"o": GatedLoRA(self.o_proj.in_features, self.o_proj.out_features,
                                                                 lora_rank)})
        else:
            self.vision_adapters = None
        if shard is not None:
            load_slice(self.qk_norm.temp, 0, shard.kv_heads)
            load_slice(self.o_proj.weight, 1, shard.query)
            if self.vision_adapters is not None:
                load_slice(self.vision_adapters["o"].A, 1, shard.query)
        self.attn = Attention(
            self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            per_layer_sliding_window=self.sliding_window,
            prefix=f"{prefix}.attn",
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor, image_token: torch.Tensor | None,
                image_sequences: list[ImageSequence] = ()) -> torch.Tensor:
        heads, values = self.qkv_proj(x, image_token)
        heads = self.rotary(self.qk_norm(heads), positions)
        query = heads[:, : self.num_heads].reshape(x.shape[0], -1).contiguous()
        key = heads[:, self.num_heads:].reshape(x.shape[0], -1).contiguous()
        values = values.contiguous()
        out = self.attn(query, key, values)
        # vLLM's attention is causal; image rows that see later image tokens are attended again under our mask.
        out = attend_image_rows(out, query, key, values, image_sequences, num_heads=self.num_heads,
                                num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                                sliding_window=self.sliding_window)
        projected = F.linear(out, self.o_proj.weight)
        if self.vision_adapters is not None:
            projected = self.vision_adapters["o"].add_to(projected, out, image_rows(image_token))
        projected = all_reduce(projected, self.tp_size)
        # The bias after the sum, so that it is added once, not once per rank.
        return projected if self.o_proj.bias is None else projected + self.o_proj.bias


class ZayaMoE(nn.Module):
    """Our router and experts (``zaya_vl.lm.moe``: the same modules, names and code as ``ZayaLM``'s). Where vLLM's
    CPU fused-MoE kernel applies (``pack_fused_experts``, after loading), text tokens' experts run through it;
    image tokens, which need their expert's vision LoRA inside the SwiGLU, keep our experts' path. Under tensor
    parallelism each rank holds a slice of every expert's intermediate size; the router is replicated."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.gate = ZayaRouter(config, layer_idx).float()  # fp32 whatever the model dtype, as in our model
        self.rank, self.tp_size = tp_rank_and_size()
        self.experts = ZayaExperts(local_config(config, self.tp_size))
        if self.tp_size > 1:
            shard_experts(self.experts, config, self.rank)
        self.fused: FusedExperts | None = None

    def forward(self, x, previous_state, image_token):
        routing = self.gate(x, previous_state)
        if self.fused is None:
            out = self.experts(x, routing, image_token)
        elif image_token is None:
            out = self.fused(x, routing, self.experts)
        else:  # text rows through the fused kernel, image rows through our experts with their LoRA
            image_rows, text_rows = image_token.nonzero().squeeze(1), (~image_token).nonzero().squeeze(1)
            out = torch.empty_like(x)
            if text_rows.numel():
                out[text_rows] = self.fused(x[text_rows], _select(routing, text_rows), self.experts)
            out[image_rows] = self.experts(x[image_rows], _select(routing, image_rows),
                                           image_token.new_ones(image_rows.numel()))
        if self.tp_size > 1:
            # Every rank's output carries the skip expert's (the token itself, scaled); it is kept on rank 0 only
            # so that the sum adds it once. Subtracting is exact: it is zero on rows routed to an expert.
            if self.rank:
                out = out - self.experts.skip_rows(x, routing)
            out = all_reduce(out, self.tp_size)
        return out, routing.router_state


def _select(routing: Routing, rows: torch.Tensor) -> Routing:
    return Routing(expert=routing.expert[rows], weight=routing.weight[rows], router_state=None, logits=None)


class FusedExperts:
    """vLLM's CPU fused MoE (``cpu_fused_moe``, its portable vector kernel) over one layer's experts, routed by
    our router: top-1, a skip-routed token goes to expert 0 with weight 0 and then gets the skip expert's output
    (as upstream transformers' MoE integration routes skip). The experts' weights are prepacked once into the
    kernel's layout (the intermediate size zero-padded to its alignment)."""

    ISA = "vec"
    ALIGNMENT = 32

    def __init__(self, experts: ZayaExperts) -> None:
        from vllm._custom_ops import cpu_prepack_moe_weight

        gate_up, down = experts.gate_up_proj.data, experts.down_proj.data
        E, two_i, H = gate_up.shape
        inter = two_i // 2
        padded = -(-inter // self.ALIGNMENT) * self.ALIGNMENT
        if padded != inter:  # gate rows then up rows, each zero-padded; down's extra input columns zero
            gate_up = torch.cat([F.pad(gate_up[:, :inter], (0, 0, 0, padded - inter)),
                                 F.pad(gate_up[:, inter:], (0, 0, 0, padded - inter))], dim=1)
            down = F.pad(down, (0, padded - inter))
        self.gate_up = cpu_prepack_moe_weight(gate_up.contiguous(), self.ISA)
        self.down = cpu_prepack_moe_weight(down.contiguous(), self.ISA)

    @classmethod
    def applies(cls, experts: ZayaExperts) -> bool:
        weight = experts.gate_up_proj
        return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
                and weight.shape[-1] % cls.ALIGNMENT == 0 and hasattr(torch.ops._C, "cpu_fused_moe"))

    def __call__(self, x: torch.Tensor, routing: Routing, experts: ZayaExperts) -> torch.Tensor:
        from vllm._custom_ops import cpu_fused_moe

        skipped = routing.expert == experts.num_experts
        ids = torch.where(skipped, 0, routing.expert).to(torch.int32)[:, None]
        weights = torch.where(skipped, 0.0, routing.weight.float())[:, None]
        x = x.contiguous()
        out = torch.empty_like(x)
        cpu_fused_moe(out, x, self.gate_up, self.down, None, None, weights, ids, "silu", self.ISA, False)
        return torch.where(skipped[:, None], experts.skip_rows(x, routing), out)


def pack_fused_experts(model: nn.Module) -> None:
    """After loading: give each MoE layer vLLM's fused kernel where it applies. Without vision LoRA nothing reads
    the experts' unpacked weights any more, so they are released (the packed copy replaces them)."""
    for module in model.modules():
        if isinstance(module, ZayaMoE) and FusedExperts.applies(module.experts):
            module.fused = FusedExperts(module.experts)
            if module.experts.vision_adapters is None:
                module.experts.gate_up_proj.data = module.experts.gate_up_proj.data.new_empty(0)
                module.experts.down_proj.data = module.experts.down_proj.data.new_empty(0)


class ZayaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.self_attn = ZayaAttention(config, layer_idx, vllm_config, prefix=f"{prefix}.self_attn")
        self.mlp = ZayaMoE(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_residual_scale = ResidualScaling(config.hidden_size)
        self.post_mlp_residual_scale = ResidualScaling(config.hidden_size)

    def forward(self, residual, router_state, positions, image_token, image_sequences=()):
        dtype = self.input_layernorm.weight.dtype  # the residual stream is fp32; each branch runs in the model's
        attn_out = self.self_attn(self.input_layernorm(residual.to(dtype)), positions, image_token, image_sequences)
        residual = self.post_attention_residual_scale(attn_out, residual)
        mlp_out, router_state = self.mlp(self.post_attention_layernorm(residual.to(dtype)), router_state,
                                         image_token)
        return self.post_mlp_residual_scale(mlp_out, residual), router_state


class ZayaModel(nn.Module):
    """The decoder stack (``model.*`` in our checkpoints)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str = "model", image_attention: str = "causal"
                 ) -> None:
        super().__init__()
        self.config = config
        self.image_attention = ImageAttentionPlan(image_attention) if image_attention != "causal" else None
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
        image_sequences = self._image_sequences(image_token)
        for layer in self.layers:
            residual, router_state = layer(residual, router_state, positions, image_token, image_sequences)
        return self.norm(residual.to(self.norm.weight.dtype))

    def _image_sequences(self, image_token: torch.Tensor | None) -> list[ImageSequence]:
        """This step's prefill sequences whose image rows attend beyond causal (one plan for all layers)."""
        if self.image_attention is None:
            return []
        return self.image_attention(image_token, self.layers[0].self_attn.qkv_proj.step_metadata())


class ZayaStateMixin(HasInnerState, IsHybrid):
    """What vLLM asks a hybrid model about its per-sequence state (shapes, dtypes, how to copy it)."""

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        return cca_state_shapes(_text_config(vllm_config.model_config.hf_config),
                                vllm_config.parallel_config.tensor_parallel_size)

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
        loaded = load_by_name(self, native_weights(weights, self.config))
        pack_fused_experts(self)
        return loaded


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
    if vllm_config.parallel_config.pipeline_parallel_size != 1:
        raise NotImplementedError("ZAYA1 in vLLM: pipeline parallelism is not implemented.")
    check_divisible(config, vllm_config.parallel_config.tensor_parallel_size)
    if getattr(config, "lm_head_bias", False):
        raise NotImplementedError("lm_head_bias=True is not supported by the vLLM plugin.")


__all__ = ["ZayaForCausalLM", "ZayaModel", "ZayaStateMixin", "load_by_name", "pack_fused_experts"]
