"""CCA's q|k|v projection as a vLLM hybrid-state layer.

CCA carries, per sequence, the last ``conv_window`` raw q|k rows (its convolution window) and the last token's
delayed value projection (plus, with vision LoRA, that token's rank-r adapter input ``A·x``, which the next
token's image mask gates). That is exactly what vLLM's "Mamba" state mechanism manages: a fixed-size state per
request slot, allocated next to the paged K/V cache, with prefill/decode metadata telling each layer which slot
a request owns and whether it resumes (chunked prefill, decode) or starts fresh.

The layer is a ``zaya_vl.lm.cca.CCAProjection`` (its parameters, names, projections and q|k mixing) run on
vLLM's flat token batch (decode tokens first, then each prefill chunk); this module only reads and writes the
state. It returns the query then key heads after conv and residual means (tokens, heads + kv_heads, head_dim)
and the values (tokens, kv_heads · head_dim).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from vllm.config import get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import get_conv_copy_spec, get_temporal_copy_spec
from vllm.v1.attention.backend import AttentionBackend
from vllm.v1.attention.backends.mamba_attn import BaseMambaAttentionMetadata, BaseMambaAttentionMetadataBuilder
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from zaya_vl.lm.cca import CCAProjection
from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lora.gated import GatedLoRA
from zaya_vl.vllm.lora import image_rows
from zaya_vl.vllm.parallel import AttentionShard, load_slice, local_config, tp_rank_and_size

BACKEND_NAME = "ZAYA_CCA"


@dataclass
class CCAStateMetadata(BaseMambaAttentionMetadata):
    # Whether each decode request already has a state: a one-token prompt is scheduled as a "decode" but must
    # start from the zero window and the start value, not from whatever the slot held before.
    has_initial_states_d: torch.Tensor | None = None

    def prefill_chunks(self) -> list[PrefillChunk]:
        """This step's prefill requests, in order; in vLLM's flat batch they follow the decode tokens."""
        if not self.num_prefills:
            return []
        offset = self.num_decode_tokens
        slots = _first_column(self.state_indices_tensor_p).tolist()
        starts = self.query_start_loc_p.tolist()
        resumes = self.has_initial_states_p.tolist()
        return [PrefillChunk(offset + starts[i], offset + starts[i + 1], slots[i], bool(resumes[i]))
                for i in range(self.num_prefills)]


class PrefillChunk(NamedTuple):
    begin: int     # rows begin:end of the step's flat batch
    end: int
    slot: int      # the request's state slot
    resumes: bool  # a later chunk of its prompt: the slot's state carries over


def _first_column(slots: torch.Tensor) -> torch.Tensor:
    """A request's state slot (vLLM gives a 2-D block table when it tracks several blocks per request)."""
    return slots[:, 0] if slots.dim() > 1 else slots


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


def _lm_config(config) -> ZayaLMConfig:
    """Ours for transformers' own ``zaya`` config too (how vLLM loads a text-only checkpoint): its fields are the
    first of ours, and it has no vision LoRA."""
    return config if isinstance(config, ZayaLMConfig) else ZayaLMConfig(**config.to_dict())


def cca_state_shapes(config, tp_size: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv window, this rank's raw q|k channels) and (delayed value width + vision LoRA rank): every rank
    carries the whole delayed value (see ``zaya_vl.vllm.parallel``)."""
    config = _lm_config(config)
    channels = (config.num_attention_heads + config.num_key_value_heads) * config.head_dim // tp_size
    value_width = config.num_key_value_heads * config.head_dim // 2
    return (config.conv_window, channels), (value_width + config.vision_lora_rank_attn,)


CCA_STATE_COPY_FUNCS = (get_conv_copy_spec, get_temporal_copy_spec)


class CCAStateLayer(MambaBase, CCAProjection):
    """``CCAProjection`` (its parameters, projections and q|k mixing) with its per-sequence state in vLLM's
    hybrid cache."""

    # vLLM compiles its step before any eager call, so a memoised fused weight would be rebuilt inside the graph
    # at every step: the four projections run as they are.
    fuse_projections = False

    def __init__(self, config, layer_idx: int, dtype: torch.dtype, prefix: str) -> None:
        config = _lm_config(config)
        rank, tp_size = tp_rank_and_size()
        super().__init__(local_config(config, tp_size), layer_idx)
        self.prefix, self.state_dtype = prefix, dtype
        self._shapes = cca_state_shapes(config, tp_size)
        self.value_heads = slice(None)
        if tp_size > 1:
            self._shard(config, AttentionShard(config, rank, tp_size))
        self.kv_cache = (torch.tensor([]), torch.tensor([]))
        compilation_config = get_current_vllm_config().compilation_config
        if prefix in compilation_config.static_forward_context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        compilation_config.static_forward_context[prefix] = self

    def _shard(self, config, shard: AttentionShard) -> None:
        """This rank's query and key heads (projections, convolutions, their LoRA); both value halves whole."""
        self.value_width = config.num_key_value_heads * config.head_dim // 2
        bias = config.attention_bias
        self.v_proj_current = nn.Linear(self.hidden_size, self.value_width, bias=bias)
        self.v_proj_delayed = nn.Linear(self.hidden_size, self.value_width, bias=bias)
        self.value_heads = shard.values
        projections = [(self.q_proj, shard.query), (self.k_proj, shard.key), (self.conv_qk_depthwise, shard.qk),
                       (self.conv_qk_grouped, shard.qk)]
        for module, rows in projections:
            for param in (module.weight, module.bias):
                if param is not None:
                    load_slice(param, 0, rows)
        if self.vision_adapters is not None:
            rank = config.vision_lora_rank_attn
            for name in ("v_current", "v_delayed"):
                self.vision_adapters[name] = GatedLoRA(self.hidden_size, self.value_width, rank)
            load_slice(self.vision_adapters["q"].B, 0, shard.query)
            load_slice(self.vision_adapters["k"].B, 0, shard.key)

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
    def forward(self, x: torch.Tensor, image_token: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (tokens, hidden); ``image_token`` (tokens,) bool or None. Returns heads and values."""
        num_tokens = x.shape[0]
        qk, value_current, value_next = self.add_vision_lora(x, *self.project(x), image_rows(image_token))
        adapter_input = None
        if self.vision_adapters is not None:
            delayed = self.vision_adapters["v_delayed"]
            if self.delayed_gate == "previous_token":  # added above, with the token's own delayed projection
                adapter_input = x.new_zeros(x.shape[0], delayed.rank)
            else:  # the next token's mask gates B·A·x of this token: carry A·x
                adapter_input = x @ delayed.A.t().to(x.dtype)                    # (tokens, rank)
        # Per-token delayed state: this token's delayed projection (and adapter input), what the next one reads.
        carried = value_next if adapter_input is None else torch.cat([value_next, adapter_input], dim=-1)
        # Zeros, not empty: vLLM may pad the step past its real tokens, and those rows must stay finite.
        mixed = torch.zeros_like(qk)
        previous = torch.zeros_like(carried)  # the delayed state each token reads (its predecessor's)

        metadata = self.step_metadata()
        if metadata is None:  # vLLM's profiling run: one sequence, no state
            mixed[:] = self.mix(qk[None], qk.new_zeros(1, self.window, qk.shape[-1]))[0][0]
            previous[0] = self._initial_carried(carried)
            previous[1:] = carried[:-1]
        else:
            self._run_with_state(qk, carried, mixed, previous, metadata)
        heads = mixed.view(num_tokens, self.num_heads + self.num_kv_heads, self.head_dim)

        value_delayed = previous[:, : self.value_width]
        if adapter_input is not None and image_token is not None and self.delayed_gate == "current_token":
            # The delayed value's adapter is gated by the *current* token's image mask, applied to the previous
            # token's input (as the reference does).
            delta = previous[:, self.value_width:] @ self.vision_adapters["v_delayed"].B.t().to(x.dtype)
            value_delayed = value_delayed + delta * image_token[:, None].to(x.dtype)
        values = torch.cat([value_current, value_delayed], dim=-1)[:, self.value_heads]
        return heads, values

    def _initial_carried(self, carried: torch.Tensor) -> torch.Tensor:
        """The delayed state before a sequence's first token: the start value, and no adapter input."""
        start = carried.new_zeros(carried.shape[-1])
        start[: self.value_width] = self.start_value(carried)
        return start

    def step_metadata(self) -> CCAStateMetadata | None:
        """This layer's state metadata for the running step (None in vLLM's profiling run)."""
        attn_metadata = get_forward_context().attn_metadata
        if attn_metadata is None:
            return None
        assert isinstance(attn_metadata, dict)
        return attn_metadata.get(self.prefix)

    def _run_with_state(self, qk, carried, mixed, previous, metadata: CCAStateMetadata) -> None:
        """Decode tokens as one batch of one-token sequences, then each prefill chunk; each reads its slot's
        state (or starts fresh) and writes the state after it back."""
        conv_state, delayed_state = self.kv_cache
        num_decodes = metadata.num_decode_tokens
        if num_decodes:
            slots = _first_column(metadata.state_indices_tensor_d)[:num_decodes].long()
            resumes = metadata.has_initial_states_d
            history = conv_state[slots].to(qk.dtype)
            last = delayed_state[slots].to(carried.dtype)
            if resumes is not None and not bool(resumes.all()):
                history = history * resumes[:, None, None].to(qk.dtype)
                last = torch.where(resumes[:, None], last, self._initial_carried(carried)[None])
            decoded, next_state = self.mix(qk[:num_decodes, None], history)
            mixed[:num_decodes] = decoded[:, 0]
            previous[:num_decodes] = last
            conv_state[slots] = next_state.to(conv_state.dtype)
            delayed_state[slots] = carried[:num_decodes].to(delayed_state.dtype)
        for begin, end, slot, resumes in metadata.prefill_chunks():
            if resumes:
                history = conv_state[slot].to(qk.dtype)
                first = delayed_state[slot].to(carried.dtype)
            else:
                history = qk.new_zeros(self.window, qk.shape[-1])
                first = self._initial_carried(carried)
            chunk, next_state = self.mix(qk[None, begin:end], history[None])
            mixed[begin:end] = chunk[0]
            previous[begin] = first
            previous[begin + 1:end] = carried[begin:end - 1]
            conv_state[slot] = next_state[0].to(conv_state.dtype)
            delayed_state[slot] = carried[end - 1].to(delayed_state.dtype)


__all__ = ["CCAStateLayer", "CCAStateBackend", "CCA_STATE_COPY_FUNCS", "cca_backend_enum", "cca_state_shapes"]
