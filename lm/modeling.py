"""The ZAYA1 language model: decoder layers, the decoder stack, and the causal-LM head with generation.

Module and parameter names follow upstream ``transformers.ZayaForCausalLM`` exactly, so its checkpoints load
as they are and ours load there. The residual stream is kept in fp32 (ZAYA1's ``residual_in_fp32``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg

from zaya_vl.lm.attention import ZayaAttention
from zaya_vl.lm.cache import ZayaCache, decoder_layer_devices
from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.layers import ResidualScaling, RMSNorm, RotaryEmbedding
from zaya_vl.lm.generation import ZayaGenerationMixin
from zaya_vl.lm.masks import IMAGE_ATTENTION_MODES, build_attention_mask, image_attention_spans, to_block_mask
from zaya_vl.lm.cca import QKNorm
from zaya_vl.lm.moe import Routing, ZayaExperts, ZayaMoE, ZayaRouter
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast, ZayaModelOutputWithPast
from zaya_vl.lm.strict_loading import StrictLoadingMixin
from zaya_vl.lora.gated import GatedExpertLoRA, GatedLoRA


class RoutingStore:
    """Layer index -> Routing, written by each layer during one forward. Deliberately not a dict: FSDP2 rebuilds
    the dicts, lists and dataclasses in a sharded layer's arguments that hold tensors requiring grad, so a write
    into a dict there would land in a copy and the router outputs of earlier layers would be lost."""

    def __init__(self) -> None:
        self._by_layer: dict[int, Routing] = {}

    def __setitem__(self, layer: int, routing: Routing) -> None:
        self._by_layer[layer] = routing

    def __getitem__(self, layer: int) -> Routing:
        return self._by_layer[layer]

    def __iter__(self):
        return iter(self._by_layer)

    def __len__(self) -> int:
        return len(self._by_layer)


# A static cache's (compiled) decode step records no router outputs (the forward refuses output_router_logits
# there); it shares this empty store, as constructing one inside a compiled graph is not traceable.
_STATIC_STEP_ROUTINGS = RoutingStore()


@dataclass
class ForwardContext:
    """What every layer of one forward needs, computed once."""

    rotary: dict
    attention_masks: dict
    attn_implementation: str
    cache: ZayaCache | None = None
    resuming: bool = False                        # the cache already holds tokens of these sequences
    cache_positions: torch.Tensor | None = None  # (s,) write positions in a static cache
    token_mask: torch.Tensor | None = None        # (b, s) real tokens, only when the chunk has padding
    window_keep: torch.Tensor | None = None       # (b, s, window+1) conv taps inside the same document
    delayed_keep: torch.Tensor | None = None      # (b, s) previous token is in the same document
    image_rows: torch.Tensor | None = None        # flat indices of image tokens (vision LoRA)
    image_token: torch.Tensor | None = None       # (b·s,) bool, the same as a mask (expert LoRA)
    routings: RoutingStore = field(default_factory=RoutingStore)  # when router outputs are requested
    block_masks: dict = field(default_factory=dict)  # FlexAttention's form of attention_masks, for prefill


class ZayaDecoderLayer(nn.Module):
    def __init__(self, config: ZayaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = ZayaAttention(config, layer_idx)
        self.mlp = ZayaMoE(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_residual_scale = ResidualScaling(config.hidden_size)
        self.post_mlp_residual_scale = ResidualScaling(config.hidden_size)

    def forward(self, residual: torch.Tensor, router_state: torch.Tensor | None, ctx: ForwardContext,
                keep_routing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.input_layernorm.weight.dtype
        attn_out = self.self_attn(self.input_layernorm(residual.to(dtype)), ctx)
        residual = self.post_attention_residual_scale(attn_out, residual)
        mlp_out, routing = self.mlp(self.post_attention_layernorm(residual.to(dtype)), router_state, ctx.image_token)
        if keep_routing:  # by layer index: activation checkpointing's recompute overwrites, not appends
            ctx.routings[self.self_attn.layer_idx] = routing
        return self.post_mlp_residual_scale(mlp_out, residual), routing.router_state


class ZayaPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = ZayaLMConfig
    config: ZayaLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZayaDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = False
    # The router runs in fp32 whatever the model dtype; keep its (small) weights there too.
    _keep_in_fp32_modules_strict = [r"mlp\.gate\."]  # a regex: the router, not vision mlp.gate_proj

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, ResidualScaling):
            for name in ("hidden_states_scale", "residual_scale"):
                getattr(module, name).fill_(1.0)
            for name in ("hidden_states_bias", "residual_bias"):
                getattr(module, name).zero_()
        elif isinstance(module, ZayaRouter):
            if module.use_eda:
                module.router_states_scale.fill_(1.0)
            module.balancing_biases.zero_()
            module.balancing_biases[-1] = -1.0
        elif isinstance(module, ZayaExperts):
            module.gate_up_proj.normal_(0.0, std)
            module.down_proj.normal_(0.0, std)
        elif isinstance(module, QKNorm):
            module.temp.fill_(1.0)
        elif isinstance(module, (GatedLoRA, GatedExpertLoRA)):
            module.A.normal_(0.0, std)
            module.B.zero_()  # adapters start as the identity
        elif isinstance(module, RotaryEmbedding):
            module.reset_tables()
        elif isinstance(module, ZayaLMModel):
            module.input_hidden_states_scale.fill_(1.0)
            module.input_hidden_states_bias.zero_()


class ZayaLMModel(ZayaPreTrainedModel):
    """The decoder stack (upstream ``ZayaModel``): embeddings → layers → final norm."""

    def __init__(self, config: ZayaLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(ZayaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(config.hidden_size))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def routers(self) -> list[ZayaRouter]:
        """The MoE routers, in layer order (training steers their ``balancing_biases``)."""
        return [module for module in self.layers.modules() if isinstance(module, ZayaRouter)]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ZayaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        image_mask: torch.Tensor | None = None,
        image_attention: str = "bidirectional",
        segment_ids: torch.Tensor | None = None,
        output_router_logits: bool = False,
        **kwargs,
    ) -> ZayaModelOutputWithPast:
        """``image_mask`` (b, s) marks image tokens: the vision LoRA applies there, and with
        ``image_attention="bidirectional"`` each image's tokens see the whole image. ``segment_ids`` (b, s)
        numbers packed documents: attention, the CCA state and positions never cross a document boundary."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, seq = inputs_embeds.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.training and self.gradient_checkpointing:
            use_cache = False
        if use_cache and cache is None:
            cache = ZayaCache(self.config, batch, dtype=inputs_embeds.dtype, device=decoder_layer_devices(self))
        if cache is not None and not cache.placed:
            cache.place(decoder_layer_devices(self), self.dtype)
        static = cache is not None and cache.is_static
        # Python facts only (no device value is read): whether this forward continues cached sequences.
        resuming = cache is not None and cache.holds_tokens
        if segment_ids is not None and resuming:
            raise ValueError("segment_ids (packed documents) cannot be combined with a non-empty cache.")
        if static and resuming and output_router_logits:
            raise NotImplementedError("output_router_logits in a decode step of a static cache: use the dynamic "
                                      "cache (cache_implementation='dynamic') to record router outputs.")
        past = cache.get_seq_length() if cache is not None and not static else 0
        cache_positions = cache.write_positions(seq) if static else None

        if position_ids is None:
            if static:
                position_ids = cache_positions.to(inputs_embeds.device).expand(batch, seq)
            else:
                position_ids = self._default_positions(batch, seq, past, segment_ids, inputs_embeds.device)
        ctx = self._context(attention_mask, cache, past, batch, seq, image_mask, image_attention, segment_ids,
                            position_ids, inputs_embeds, resuming, cache_positions)

        residual = ((inputs_embeds + self.input_hidden_states_bias) * self.input_hidden_states_scale).float()
        router_state = None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                residual, router_state = self._gradient_checkpointing_func(
                    layer.__call__, residual, router_state, ctx, output_router_logits)
            else:
                residual, router_state = layer(residual, router_state, ctx, output_router_logits)
        if cache is not None:
            cache.advance(seq)
            cache.last_token_image = image_mask[:, -1].bool() if image_mask is not None else None
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        routings = [ctx.routings[i] for i in sorted(ctx.routings)] if output_router_logits else None
        return ZayaModelOutputWithPast(last_hidden_state=hidden, cache=cache, routings=routings)

    @staticmethod
    def _default_positions(batch, seq, past, segment_ids, device) -> torch.Tensor:
        positions = torch.arange(past, past + seq, device=device).expand(batch, seq)
        if segment_ids is None:
            return positions
        # Restart at 0 at each document start.
        starts = torch.ones_like(segment_ids, dtype=torch.bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        index = torch.arange(seq, device=device).expand(batch, seq)
        last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
        return index - last_start

    def _context(self, attention_mask, cache, past, batch, seq, image_mask, image_attention, segment_ids,
                 position_ids, inputs_embeds, resuming=False, cache_positions=None) -> ForwardContext:
        """Masks and per-forward facts. Only a forward that starts sequences (a prefill) reads device values on
        the host (is there padding, is there an image); it records them in the cache, so a decode step reads
        none and can run under CUDA graphs."""
        config, device = self.config, inputs_embeds.device
        static = cache is not None and cache.is_static
        if static and resuming:
            return self._static_step_context(attention_mask, cache, batch, seq, image_mask, position_ids,
                                             inputs_embeds, cache_positions)
        key_length = past + seq
        padding_mask = attention_mask.bool() if attention_mask is not None else None
        if padding_mask is not None and padding_mask.shape[-1] != key_length:
            raise ValueError(f"attention_mask covers {padding_mask.shape[-1]} tokens but the cache holds {past} "
                             f"and the input {seq}: it must cover all {key_length}.")
        if padding_mask is not None:
            if not resuming:
                if bool(padding_mask.all()):
                    padding_mask = None
                if cache is not None:
                    cache.prompt_padded = padding_mask is not None
            elif not cache.prompt_padded:
                padding_mask = None  # new tokens after an unpadded prompt are real: recorded at prefill
        chunk_padding = padding_mask[:, past:] if padding_mask is not None else None
        token_mask = chunk_padding
        if static:  # prefill into an empty static cache: record which positions hold real tokens
            valid = chunk_padding if chunk_padding is not None else cache.key_valid.new_ones(batch, seq)
            cache.key_valid.index_copy_(1, cache_positions.to(cache.key_valid.device), valid.to(cache.key_valid.device))

        if image_attention not in IMAGE_ATTENTION_MODES:
            raise ValueError(f"image_attention={image_attention!r}; expected one of {IMAGE_ATTENTION_MODES}.")
        span_ids = None
        image_rows = image_token = None
        if image_mask is not None and (resuming or bool(image_mask.any())):
            image_token = image_mask.reshape(-1).bool()
            image_rows = image_token.nonzero().squeeze(1)
            if image_attention != "causal":
                span_ids = image_attention_spans(image_mask, image_attention)
                if not bool((span_ids > 0).any()):
                    span_ids = None  # no image token among the queries: causal is exact
                elif past:
                    if cache.last_token_image is not None and bool((cache.last_token_image & image_mask[:, 0]).any()):
                        raise ValueError(
                            "An image span continues from the cache into this chunk: bidirectional image attention "
                            "needs each image's tokens in one forward. Split prefill chunks between images.")
                    span_ids = torch.cat([span_ids.new_zeros(batch, past), span_ids], dim=1)

        window_keep = delayed_keep = None
        if segment_ids is not None:
            # A conv tap or delayed input from another document counts as the zero padding before a start.
            padded = torch.nn.functional.pad(segment_ids, (config.conv_window, 0), value=-1)
            window_keep = padded.unfold(1, config.conv_window + 1, 1) == segment_ids[..., None]
            previous = torch.nn.functional.pad(segment_ids, (1, 0), value=-1)[:, :-1]
            delayed_keep = previous == segment_ids

        implementation = config._attn_implementation or "sdpa"
        flex = implementation == "flex_attention" and seq > 1  # a decode step takes SDPA on the dense mask
        masks, block_masks = {}, {}
        for layer_type in set(config.layer_types):
            sliding = layer_type == "hybrid_sliding"
            rule = dict(
                batch_size=batch, query_length=seq, key_length=key_length, device=device,
                padding_mask=None if sliding and not config.sliding_window_masks_padding else padding_mask,
                sliding_window=config.sliding_window if sliding else None,
                image_span_ids=span_ids, segment_ids=segment_ids,
            )
            # FlexAttention evaluates the rules per (query, key) pair: no dense mask is built for it.
            masks[layer_type] = None if flex else build_attention_mask(**rule)
            if flex:
                block_masks[layer_type] = to_block_mask(**rule)
        return ForwardContext(
            rotary=self.rotary_emb(position_ids, inputs_embeds.dtype),
            attention_masks=masks,
            block_masks=block_masks,
            attn_implementation=implementation,
            cache=cache, resuming=resuming, cache_positions=cache_positions, token_mask=token_mask,
            window_keep=window_keep, delayed_keep=delayed_keep, image_rows=image_rows, image_token=image_token,
        )

    def _static_step_context(self, attention_mask, cache, batch, seq, image_mask, position_ids, inputs_embeds,
                             cache_positions) -> ForwardContext:
        """A step that continues a static cache: attention over the whole buffer, under a mask built on the
        device from the write positions and the recorded valid keys. Same shapes at every position."""
        if image_mask is not None:
            raise NotImplementedError("image tokens after the prefill of a static cache: put every image in the "
                                      "prompt, or use the dynamic cache.")
        config, device = self.config, cache.key_valid.device
        positions = cache_positions.to(device)
        if attention_mask is not None and cache.prompt_padded:
            new_valid = attention_mask[:, -seq:].to(device=device, dtype=torch.bool)
        else:
            new_valid = cache.key_valid.new_ones(batch, seq)
        cache.key_valid.index_copy_(1, positions, new_valid)
        key_pos = torch.arange(cache.capacity, device=device)
        query_pos = positions[:, None]
        causal = key_pos[None, :] <= query_pos                                     # (s, capacity)
        masks = {}
        for layer_type in set(config.layer_types):
            allowed, sliding = causal, layer_type == "hybrid_sliding"
            if sliding and config.sliding_window is not None:
                allowed = allowed & (query_pos - key_pos[None, :] < config.sliding_window)
            allowed = allowed[None, None]
            if not sliding or config.sliding_window_masks_padding:
                allowed = allowed & cache.key_valid[:, None, None, :]
            masks[layer_type] = allowed | (key_pos[None, :] == query_pos)[None, None]  # a padded query sees itself
        token_mask = new_valid if cache.prompt_padded else None
        return ForwardContext(
            rotary=self.rotary_emb(position_ids, inputs_embeds.dtype), attention_masks=masks,
            attn_implementation="sdpa" if (config._attn_implementation or "sdpa") == "flex_attention"
            else (config._attn_implementation or "sdpa"),
            cache=cache, resuming=True, cache_positions=cache_positions, token_mask=token_mask,
            routings=_STATIC_STEP_ROUTINGS)


class ZayaLM(ZayaGenerationMixin, ZayaPreTrainedModel):
    """ZAYA1 causal LM (upstream ``ZayaForCausalLM`` layout): ``model.*`` + tied ``lm_head``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ZayaLMConfig) -> None:
        super().__init__(config)
        self.model = ZayaLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ZayaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_mask: torch.Tensor | None = None,
        image_attention: str = "bidirectional",
        segment_ids: torch.Tensor | None = None,
        output_router_logits: bool = False,
        loss_chunk_size: int = 1024,
        return_logits: bool | None = None,
        **kwargs,
    ) -> ZayaCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            image_mask=image_mask, image_attention=image_attention, segment_ids=segment_ids,
            output_router_logits=output_router_logits,
        )
        return self.head_outputs(outputs, labels, logits_to_keep, segment_ids, loss_chunk_size, return_logits)


__all__ = ["ZayaLM", "ZayaLMModel", "ZayaPreTrainedModel", "ZayaDecoderLayer", "ForwardContext", "Routing"]
