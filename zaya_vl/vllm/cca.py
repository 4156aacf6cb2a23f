"""CCA's q|k|v projection as a vLLM hybrid-state layer.

CCA carries, per sequence, the last ``conv_window`` raw q|k rows (its convolution window) and the last token's
delayed value projection (plus, with vision LoRA, that token's rank-r adapter input ``A·x``, which the next
token's image mask gates). That is exactly what vLLM's "Mamba" state mechanism manages: a fixed-size state per
request slot, allocated next to the paged K/V cache, with prefill/decode metadata telling each layer which slot
a request owns and whether it resumes (chunked prefill, decode) or starts fresh.

The layer computes what ``zaya_vl.lm.cca.CCAProjection`` computes, on vLLM's flat token batch (decode tokens
first, then each prefill chunk), and returns the query then key heads after conv and residual means
(tokens, heads + kv_heads, head_dim) and the values (tokens, kv_heads · head_dim). Parameter names are those of
``CCAProjection`` so checkpoints load by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vllm.config import get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import get_conv_copy_spec, get_temporal_copy_spec
from vllm.v1.attention.backend import AttentionBackend
from vllm.v1.attention.backends.mamba_attn import BaseMambaAttentionMetadata, BaseMambaAttentionMetadataBuilder
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from zaya_vl.vllm.lora import add_gated_lora

BACKEND_NAME = "ZAYA_CCA"


@dataclass
class CCAStateMetadata(BaseMambaAttentionMetadata):
    # Whether each decode request already has a state: a one-token prompt is scheduled as a "decode" but must
    # start from the zero window and the start value, not from whatever the slot held before.
    has_initial_states_d: torch.Tensor | None = None


class CCAStateMetadataBuilder(BaseMambaAttentionMetadataBuilder[CCAStateMetadata]):
    metadata_cls = CCAStateMetadata

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False, **kwargs) -> CCAStateMetadata:
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build, **kwargs)
        if metadata.num_decodes == 0:
            return metadata
        computed = common_attn_metadata.compute_num_computed_tokens()
        return replace(metadata, has_initial_states_d=computed[: metadata.num_decodes] > 0)


class CCAStateBackend(AttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "ZAYA_CCA_STATE"

    @staticmethod
    def get_builder_cls() -> type[CCAStateMetadataBuilder]:
        return CCAStateMetadataBuilder

    @classmethod
    def is_ssm(cls) -> bool:
        return True


def cca_backend_enum() -> MambaAttentionBackendEnum:
    """Our state type among vLLM's Mamba-like backends (registered once per process)."""
    existing = MambaAttentionBackendEnum._member_map_.get(BACKEND_NAME)
    if existing is not None:
        return existing
    return MambaAttentionBackendEnum.register(BACKEND_NAME, f"{__name__}.CCAStateBackend")


def cca_state_shapes(config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv window, raw q|k channels) and (delayed value width + vision LoRA rank)."""
    window = (config.cca_time0 - 1) + (config.cca_time1 - 1)
    channels = (config.num_attention_heads + config.num_key_value_heads) * config.head_dim
    value_width = config.num_key_value_heads * config.head_dim // 2
    rank = getattr(config, "vision_lora_rank_attn", 0) or 0
    return (window, channels), (value_width + rank,)


CCA_STATE_COPY_FUNCS = (get_conv_copy_spec, get_temporal_copy_spec)


class CCAStateLayer(MambaBase, nn.Module):
    """The CCA projections of one layer, with their per-sequence state in vLLM's hybrid cache."""

    def __init__(self, config, layer_idx: int, dtype: torch.dtype, prefix: str) -> None:
        super().__init__()
        self.prefix, self.layer_idx, self.state_dtype = prefix, layer_idx, dtype
        self.hidden_size, self.head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.kv_groups = self.num_heads // self.num_kv_heads
        self.query_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.key_width, self.value_width = kv_width, kv_width // 2
        self.window = (config.cca_time0 - 1) + (config.cca_time1 - 1)
        bias = config.attention_bias
        self.q_proj = nn.Linear(self.hidden_size, self.query_width, bias=bias)
        self.k_proj = nn.Linear(self.hidden_size, kv_width, bias=bias)
        self.v_proj_current = nn.Linear(self.hidden_size, self.value_width, bias=bias)
        self.v_proj_delayed = nn.Linear(self.hidden_size, self.value_width, bias=bias)
        channels = self.query_width + kv_width
        self.channels = channels
        groups = self.num_heads + self.num_kv_heads
        self.conv_qk_depthwise = nn.Conv1d(channels, channels, config.cca_time0, groups=channels)
        self.conv_qk_grouped = nn.Conv1d(channels, channels, config.cca_time1, groups=groups)
        self.rank = getattr(config, "vision_lora_rank_attn", 0) or 0
        # Which token's image mask gates the delayed value's LoRA: the token that reads it (Zyphra's release) or the
        # token whose projection it is (the upstream port), as ZayaLMConfig.vision_lora_delayed_gate says.
        self.delayed_gate = getattr(config, "vision_lora_delayed_gate", "current_token")
        if self.rank:
            self.vision_adapters = nn.ModuleDict({
                "q": _LoRA(self.hidden_size, self.query_width, self.rank),
                "k": _LoRA(self.hidden_size, kv_width, self.rank),
                "v_current": _LoRA(self.hidden_size, self.value_width, self.rank),
                "v_delayed": _LoRA(self.hidden_size, self.value_width, self.rank),
            })
        self._shapes = cca_state_shapes(config)
        self.kv_cache = (torch.tensor([]), torch.tensor([]))
        compilation_config = get_current_vllm_config().compilation_config
        if prefix in compilation_config.static_forward_context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        compilation_config.static_forward_context[prefix] = self

    # -- vLLM's hybrid-state interface ----------------------------------------------------------------
    def get_state_shape(self):
        return self._shapes

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return (self.state_dtype, self.state_dtype)

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return cca_backend_enum()

    def get_attn_backend(self) -> type[AttentionBackend]:
        return CCAStateBackend

    # -- compute --------------------------------------------------------------------------------------
    def _conv(self, padded: torch.Tensor) -> torch.Tensor:
        """Both convolutions over (batch, window + length, channels) → (batch, length, channels).

        Written as shifted multiply-adds over the taps rather than ``nn.Conv1d`` calls: vLLM hands this layer a
        new sequence length at nearly every call, and oneDNN's per-shape setup cost more than the tiny conv."""
        depthwise, grouped = self.conv_qk_depthwise, self.conv_qk_grouped
        taps0, taps1 = depthwise.weight.shape[-1], grouped.weight.shape[-1]
        batch, length = padded.shape[0], padded.shape[1] - taps0 + 1
        weight0 = depthwise.weight[:, 0].to(padded.dtype)                          # (channels, taps0)
        mid = sum(padded[:, j:j + length] * weight0[:, j] for j in range(taps0))
        if depthwise.bias is not None:
            mid = mid + depthwise.bias.to(padded.dtype)
        groups = self.num_heads + self.num_kv_heads
        out_length = length - taps1 + 1
        weight1 = grouped.weight.to(padded.dtype).view(groups, self.head_dim, self.head_dim, taps1)  # (g, out, in, t)
        mid = mid.view(batch, length, groups, self.head_dim)
        out = sum(torch.einsum("blgi,goi->blgo", mid[:, j:j + out_length], weight1[..., j]) for j in range(taps1))
        out = out.reshape(batch, out_length, self.channels)
        if grouped.bias is not None:
            out = out + grouped.bias.to(padded.dtype)
        return out

    def _start_value(self, like: torch.Tensor) -> torch.Tensor:
        """The delayed value before a sequence's first token: the projection of a zero input (its bias)."""
        bias = self.v_proj_delayed.bias
        return bias.to(like.dtype) if bias is not None else like.new_zeros(self.value_width)

    def forward(self, x: torch.Tensor, image_token: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (tokens, hidden); ``image_token`` (tokens,) bool or None. Returns heads and values."""
        num_tokens = x.shape[0]
        q = self.q_proj(x)
        k = self.k_proj(x)
        value_current = self.v_proj_current(x)
        value_next = self.v_proj_delayed(x)
        adapter_input = None
        if self.rank:
            adapters = self.vision_adapters
            q = add_gated_lora(q, x, adapters["q"], image_token)
            k = add_gated_lora(k, x, adapters["k"], image_token)
            value_current = add_gated_lora(value_current, x, adapters["v_current"], image_token)
            if self.delayed_gate == "previous_token":  # the LoRA travels with the token's own delayed projection
                value_next = add_gated_lora(value_next, x, adapters["v_delayed"], image_token)
                adapter_input = x.new_zeros(x.shape[0], self.rank)
            else:  # the next token's mask gates B·A·x of this token: carry A·x
                adapter_input = x @ adapters["v_delayed"].A.t().to(x.dtype)      # (tokens, rank)
        qk = torch.cat([q, k], dim=-1)
        # Per-token delayed state: this token's delayed projection (and adapter input), what the next one reads.
        carried = value_next if adapter_input is None else torch.cat([value_next, adapter_input], dim=-1)
        # Zeros, not empty: vLLM may pad the step past its real tokens, and those rows must stay finite.
        mixed = torch.zeros_like(qk)
        previous = torch.zeros_like(carried)  # the delayed state each token reads (its predecessor's)

        metadata = self._metadata()
        if metadata is None:  # vLLM's profiling run: one sequence, no state
            zeros = qk.new_zeros(1, self.window, self.channels)
            mixed[:] = self._conv(torch.cat([zeros, qk[None]], dim=1))[0]
            previous[0] = self._initial_carried(carried)
            previous[1:] = carried[:-1]
        else:
            self._run_with_state(qk, carried, mixed, previous, metadata)
        mixed = mixed + self._residual_means(q, k)
        heads = mixed.view(num_tokens, self.num_heads + self.num_kv_heads, self.head_dim)

        value_delayed = previous[:, : self.value_width]
        if self.rank and image_token is not None and self.delayed_gate == "current_token":
            # The delayed value's adapter is gated by the *current* token's image mask, applied to the previous
            # token's input (as the reference does).
            delta = previous[:, self.value_width:] @ self.vision_adapters["v_delayed"].B.t().to(x.dtype)
            value_delayed = value_delayed + delta * image_token[:, None].to(x.dtype)
        values = torch.cat([value_current, value_delayed], dim=-1)
        return heads, values

    def _initial_carried(self, carried: torch.Tensor) -> torch.Tensor:
        start = carried.new_zeros(carried.shape[-1])
        start[: self.value_width] = self._start_value(carried)
        return start

    def _metadata(self) -> CCAStateMetadata | None:
        attn_metadata = get_forward_context().attn_metadata
        if attn_metadata is None:
            return None
        assert isinstance(attn_metadata, dict)
        return attn_metadata.get(self.prefix)

    def _run_with_state(self, qk, carried, mixed, previous, metadata: CCAStateMetadata) -> None:
        conv_state, delayed_state = self.kv_cache
        num_decodes = metadata.num_decode_tokens
        if num_decodes:
            slots = metadata.state_indices_tensor_d
            slots = (slots[:, 0] if slots.dim() > 1 else slots)[:num_decodes].long()
            resumes = metadata.has_initial_states_d
            history = conv_state[slots].to(qk.dtype)
            last = delayed_state[slots].to(carried.dtype)
            if resumes is not None and not bool(resumes.all()):
                history = history * resumes[:, None, None].to(qk.dtype)
                last = torch.where(resumes[:, None], last, self._initial_carried(carried)[None])
            padded = torch.cat([history, qk[:num_decodes, None]], dim=1)            # (decodes, window + 1, C)
            mixed[:num_decodes] = self._conv(padded)[:, -1]
            previous[:num_decodes] = last
            conv_state[slots] = padded[:, 1:].to(conv_state.dtype)
            delayed_state[slots] = carried[:num_decodes].to(delayed_state.dtype)
        if metadata.num_prefills:
            slots = metadata.state_indices_tensor_p
            slots = (slots[:, 0] if slots.dim() > 1 else slots).tolist()
            starts = metadata.query_start_loc_p.tolist()
            resumes = metadata.has_initial_states_p.tolist()
            for request in range(metadata.num_prefills):
                begin, end = num_decodes + starts[request], num_decodes + starts[request + 1]
                slot = slots[request]
                if resumes[request]:
                    history = conv_state[slot].to(qk.dtype)
                    first = delayed_state[slot].to(carried.dtype)
                else:
                    history = qk.new_zeros(self.window, self.channels)
                    first = self._initial_carried(carried)
                padded = torch.cat([history, qk[begin:end]], dim=0)
                mixed[begin:end] = self._conv(padded[None])[0]
                previous[begin] = first
                previous[begin + 1:end] = carried[begin:end - 1]
                if self.window:
                    conv_state[slot] = padded[-self.window:].to(conv_state.dtype)
                delayed_state[slot] = carried[end - 1].to(delayed_state.dtype)

    def _residual_means(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The mean of each query head and its key head, and its mean over the key head's query group."""
        tokens = q.shape[0]
        q5 = q.reshape(tokens, self.num_kv_heads, self.kv_groups, self.head_dim)
        k4 = k.reshape(tokens, self.num_kv_heads, self.head_dim)
        query_residual = (q5 + k4[:, :, None]) * 0.5
        key_residual = query_residual.mean(dim=2)
        return torch.cat([query_residual.reshape(tokens, -1), key_residual.reshape(tokens, -1)], dim=-1)


class _LoRA(nn.Module):
    """A vision LoRA adapter's factors, named as ``zaya_vl.lora.gated.GatedLoRA`` names them."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))


__all__ = ["CCAStateLayer", "CCAStateBackend", "CCA_STATE_COPY_FUNCS", "cca_backend_enum", "cca_state_shapes"]
