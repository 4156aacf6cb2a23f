"""Compressed Convolutional Attention (CCA) projections: q, k, v for one ZAYA1 layer.

Queries and keys are projected into a compressed latent (``heads × head_dim`` and ``kv_heads × head_dim``),
mixed over the last few tokens by a causal depthwise conv followed by a grouped conv, and added to a
residual mean of q and k; values are half a projection of the current token and half a projection of the
previous one. See https://huggingface.co/papers/2510.04476.

The four projections run as one GEMM. ``CCAProjection.mix`` is the one place that chooses how the q|k mixing
runs: the Triton kernel (conv, bias and residual means fused), the two convolutions as the checkpoint defines
them (prefill), or both folded into one grouped kernel over explicit windows of ``conv_window + 1`` tokens and
applied with one ``bmm`` (a decode step, and packed documents, whose taps in another document must be zeroed).
The per-sequence state is the last ``conv_window`` raw q|k rows and the last token's delayed value projection.
The vLLM plugin (``zaya_vl.vllm.cca``) runs this same class with its state in vLLM's cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.derived import DerivedTensors
from zaya_vl.lm.kernels.dispatch import DECODE_MAX_TOKENS, cca_conv, kernel_backend, use_triton
from zaya_vl.lora.gated import GatedLoRA


# Adapter name -> the projection it adapts. Adapter names deliberately differ from the projections' names, so
# name-based tools (PEFT's target_modules) can address the base projections without matching the adapters.
ADAPTED_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v_current": "v_proj_current", "v_delayed": "v_proj_delayed"}


def residual_means(qk: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """CCA's residual path from raw q|k rows (..., channels): for each query head the mean of it and its key
    head, for each key head the mean of those over its query group; laid out as q|k."""
    lead = qk.shape[:-1]
    head_dim = qk.shape[-1] // (num_heads + num_kv_heads)
    query_width = num_heads * head_dim
    q = qk[..., :query_width].reshape(*lead, num_kv_heads, num_heads // num_kv_heads, head_dim)
    k = qk[..., query_width:].reshape(*lead, num_kv_heads, 1, head_dim)
    query_residual = (q + k) * 0.5
    key_residual = query_residual.mean(dim=-2)
    return torch.cat([query_residual.reshape(*lead, -1), key_residual.reshape(*lead, -1)], dim=-1)


def _weights_and_biases(*modules: nn.Module) -> list[torch.Tensor]:
    """The parameters a fused tensor derives from (plain Linear/Conv1d), without walking ``parameters()``
    (a measurable cost at every decode step)."""
    return [t for m in modules for t in (m.weight, m.bias) if t is not None]


class CCAProjection(nn.Module):
    """Parameter names follow upstream ``ZayaCCAProjection`` so its checkpoints load unchanged."""

    # Whether ``project`` runs the four projections as one GEMM on a concatenated (memoised) weight.
    fuse_projections = True

    def __init__(self, config: ZayaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size, self.head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.window = config.conv_window
        query_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.query_width = query_width
        bias = config.attention_bias

        self.q_proj = nn.Linear(self.hidden_size, query_width, bias=bias)
        self.k_proj = nn.Linear(self.hidden_size, kv_width, bias=bias)
        self.v_proj_current = nn.Linear(self.hidden_size, kv_width // 2, bias=bias)
        self.v_proj_delayed = nn.Linear(self.hidden_size, kv_width // 2, bias=bias)
        channels = query_width + kv_width
        self.conv_groups = self.num_heads + self.num_kv_heads
        self.conv_qk_depthwise = nn.Conv1d(channels, channels, config.cca_time0, groups=channels)
        self.conv_qk_grouped = nn.Conv1d(channels, channels, config.cca_time1, groups=self.conv_groups)

        rank = config.vision_lora_rank_attn
        self.vision_adapters = nn.ModuleDict(
            {adapter: GatedLoRA(self.hidden_size, getattr(self, projection).out_features, rank)
             for adapter, projection in ADAPTED_PROJECTIONS.items()}
        ) if rank > 0 else None
        self.value_width = kv_width // 2
        # Which token's image mask gates the delayed value's LoRA: the token that reads it ("current_token",
        # Zyphra's release) or the token whose projection it is ("previous_token", the upstream port).
        self.delayed_gate = config.vision_lora_delayed_gate
        self._derived = DerivedTensors()

    # -- weights derived from the parameters (memoised at inference) ------------------------------------
    def fused_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q | k | v_current | v_delayed stacked: one GEMM projects a token for all four."""
        projections = [self.q_proj, self.k_proj, self.v_proj_current, self.v_proj_delayed]

        def build():
            weight = torch.cat([p.weight for p in projections])
            bias = torch.cat([p.bias for p in projections]) if projections[0].bias is not None else None
            return weight, bias

        return self._derived.get("projection", _weights_and_biases(*projections), build)

    def folded_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise ∘ grouped conv as one grouped kernel (groups, out, in, taps) and its bias."""
        depthwise, grouped = self.conv_qk_depthwise, self.conv_qk_grouped

        def build():
            groups, channels = self.conv_groups, depthwise.weight.shape[0]
            per_group = channels // groups
            w_depth = depthwise.weight.view(groups, 1, per_group, -1)               # (g, 1, in, t0)
            w_group = grouped.weight.view(groups, per_group, per_group, -1)         # (g, out, in, t1)
            t0, t1 = w_depth.shape[-1], w_group.shape[-1]
            taps = []
            for tap in range(t0 + t1 - 1):  # tap m sees the input m - (t0 + t1 - 2) steps back
                taps.append(sum(w_group[..., j] * w_depth[..., tap - j]
                                for j in range(t1) if 0 <= tap - j < t0))
            kernel = torch.stack(taps, dim=-1)                                       # (g, out, in, taps)
            bias = grouped.bias + torch.einsum("goit,gi->go", w_group,
                                               depthwise.bias.view(groups, per_group)).reshape(-1)
            return kernel, bias

        return self._derived.get("conv", _weights_and_biases(depthwise, grouped), build)

    def _bmm_kernel(self) -> torch.Tensor:
        """The folded kernel laid out for ``bmm``: (groups, in·taps, out)."""
        def build():
            kernel, _ = self.folded_conv()
            groups, out, inputs, taps = kernel.shape
            return kernel.permute(0, 2, 3, 1).reshape(groups, inputs * taps, out).contiguous()

        return self._derived.get("bmm", _weights_and_biases(self.conv_qk_depthwise, self.conv_qk_grouped), build)

    def warm_derived(self) -> None:
        """Build the decode step's derived tensors now, so that a compiled step reuses them (see ``derived``)."""
        if self.fuse_projections and self._plain(self.q_proj, self.k_proj, self.v_proj_current, self.v_proj_delayed):
            self.fused_projection()
        if self._plain(self.conv_qk_depthwise, self.conv_qk_grouped):
            self._bmm_kernel()

    @staticmethod
    def _plain(*modules: nn.Module) -> bool:
        """True when the modules are the plain layers we fuse; PEFT (or any wrapper) must run as modules."""
        return all(type(m) in (nn.Linear, nn.Conv1d) for m in modules)

    # -- the math ---------------------------------------------------------------------------------------
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw q|k, v_current, and this token's delayed-value projection (the next token's delayed value)."""
        projections = (self.q_proj, self.k_proj, self.v_proj_current, self.v_proj_delayed)
        if not (self.fuse_projections and self._plain(*projections)):
            q, k, value_current, value_next = (projection(x) for projection in projections)
            return torch.cat([q, k], dim=-1), value_current, value_next
        weight, bias = self.fused_projection()
        projected = F.linear(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)
        # q and k are adjacent in the fused output: q|k is a view, no copy.
        return projected.split([self.query_width + self.k_proj.out_features, self.value_width, self.value_width],
                               dim=-1)

    def mix(self, qk: torch.Tensor, history: torch.Tensor, window_keep: torch.Tensor | None = None, *,
            shift_in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The query then key heads, flattened (batch, seq, channels): the causal conv of raw q|k rows ``qk``
        that follow ``history`` (batch, window, channels), plus bias and the residual means; and the next conv
        state (the last ``window`` rows of history then q|k).

        ``window_keep`` (batch, seq, window + 1) zeroes conv taps in another packed document. With
        ``shift_in_place``, ``history`` is the cache's own buffer, which the decode kernel may shift where it
        lives; the state returned is then ``history`` itself.
        """
        seq = qk.shape[1]
        plain_conv = self._plain(self.conv_qk_depthwise, self.conv_qk_grouped)
        if window_keep is None and plain_conv and kernel_backend(qk.device, qk.dtype) == "triton":
            kernel, bias = self.folded_conv()
            if use_triton(qk, kernel, bias):  # not when autograd must differentiate: the kernel has no backward
                in_place = shift_in_place and seq <= DECODE_MAX_TOKENS
                mixed = cca_conv(qk, history, kernel, bias, self.num_heads, self.num_kv_heads, update_state=in_place)
                return mixed, history if in_place else torch.cat([history.to(qk.dtype), qk], dim=1)[:, seq:]
        padded = torch.cat([history.to(qk.dtype), qk], dim=1)
        if window_keep is None and (seq > 1 or not plain_conv):
            # The two convolutions as the checkpoint defines them (oneDNN on CPU), on a contiguous channels-first
            # copy. Folding them would save an op but cost more FLOPs over a long chunk: the grouped conv would
            # need all window + 1 taps. Wrapped convolutions (e.g. PEFT adapters on them) always run as modules.
            channels_first = padded.transpose(1, 2).contiguous()
            conv = self.conv_qk_grouped(self.conv_qk_depthwise(channels_first)).transpose(1, 2)
        elif plain_conv:
            conv = self._folded_windows(padded, window_keep)
        else:
            raise NotImplementedError("packed documents (segment_ids) with wrapped CCA convolutions")
        return conv + residual_means(qk, self.num_heads, self.num_kv_heads), padded[:, seq:]

    def _folded_windows(self, padded: torch.Tensor, window_keep: torch.Tensor | None) -> torch.Tensor:
        """Both convolutions as the folded kernel over explicit windows of ``padded`` (history then q|k): one
        ``bmm`` for a decode step, and taps in another document can be zeroed."""
        batch, length, channels = padded.shape
        seq = length - self.window
        windows = padded.unfold(1, self.window + 1, 1)                               # (b, seq, ch, taps)
        if window_keep is not None:
            windows = windows * window_keep[:, :, None, :].to(padded.dtype)
        windows = windows.reshape(batch * seq, self.conv_groups, -1).transpose(0, 1)  # (g, b·seq, in·taps)
        rows = windows.shape[1]
        if rows == 1 and torch.compiler.is_compiling() and windows.device.type == "cpu":
            # Inductor turns a one-row CPU bmm into a multiply-and-sum whose reduction strides across the kernel
            # (measured ~25 ms of a 40 ms medium decode step); two rows keep it a GEMM.
            windows = windows.expand(-1, 2, -1)
        mixed = torch.bmm(windows, self._bmm_kernel().to(padded.dtype))[:, :rows].transpose(0, 1)  # (b·seq, g, out)
        return mixed.reshape(batch, seq, channels) + self.folded_conv()[1].to(padded.dtype)

    def start_value(self, like: torch.Tensor) -> torch.Tensor:
        """The delayed value before a sequence's first token (value_width,): the projection of a zero input, i.e.
        its bias, as the reference pads."""
        bias = self.v_proj_delayed.bias
        return bias.to(like.dtype) if bias is not None else like.new_zeros(self.value_width)

    def add_vision_lora(self, x: torch.Tensor, qk: torch.Tensor, value_current: torch.Tensor,
                        value_next: torch.Tensor, image_rows: torch.Tensor | None):
        """The projections with the vision LoRA added at ``image_rows`` (flat row indices of ``x``); the delayed
        value's adapter here only when it is gated by the token's own mask (``previous_token``)."""
        if self.vision_adapters is None or image_rows is None:
            return qk, value_current, value_next
        adapters = self.vision_adapters
        q = adapters["q"].add_to(qk[..., : self.query_width], x, image_rows)
        k = adapters["k"].add_to(qk[..., self.query_width:], x, image_rows)
        value_current = adapters["v_current"].add_to(value_current, x, image_rows)
        if self.delayed_gate == "previous_token":  # the LoRA travels with the token's own delayed projection
            value_next = adapters["v_delayed"].add_to(value_next, x, image_rows)
        return torch.cat([q, k], dim=-1), value_current, value_next

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the query heads then the key heads (b, s, heads + kv_heads, d) and v (b, s, kv_heads, d); read
        and update the cache's CCA state.

        ``ctx.token_mask`` zeroes padding tokens before the projections so left padding equals no padding;
        ``ctx.window_keep`` / ``ctx.delayed_keep`` cut the conv window and the delayed value at packed-document
        starts; ``ctx.image_rows`` are the flat (b·s) rows of image tokens, where the vision LoRA applies.
        """
        batch, seq, _ = x.shape
        cache, image_rows = ctx.cache, ctx.image_rows
        if ctx.token_mask is not None:
            x = x * ctx.token_mask[..., None].to(x.dtype)
        qk, value_current, value_next = self.add_vision_lora(x, *self.project(x), image_rows)

        # Padding rows are the projection of a zero input: with biases, zero them too, so that they are what the
        # reference's left zero padding is to the conv window. History: the cached window, or that zero padding.
        if ctx.token_mask is not None and self.q_proj.bias is not None:
            qk = qk * ctx.token_mask[..., None].to(qk.dtype)
        history = cache.conv_states[self.layer_idx] if cache is not None else qk.new_zeros(batch, self.window,
                                                                                             qk.shape[-1])
        mixed, conv_state = self.mix(qk, history, ctx.window_keep, shift_in_place=cache is not None)
        heads = mixed.view(batch, seq, self.num_heads + self.num_kv_heads, self.head_dim)

        # Values: the current token's projection, and the previous token's delayed projection.
        start = self.start_value(value_next).expand(batch, 1, self.value_width)
        first = cache.delayed_values[self.layer_idx][:, None].to(x.dtype) if ctx.resuming else start
        value_delayed = first if seq == 1 else torch.cat([first, value_next[:, :-1]], dim=1)
        if ctx.delayed_keep is not None:  # packed documents (never resuming from a cache)
            value_delayed = torch.where(ctx.delayed_keep[..., None], value_delayed, start)
        next_adapter_input = None
        if self.vision_adapters is not None and self.delayed_gate == "current_token":
            value_delayed, next_adapter_input = self._delayed_adapter(x, value_delayed, ctx, image_rows)
        value = torch.cat([value_current, value_delayed], dim=-1).view(batch, seq, self.num_kv_heads, self.head_dim)

        if cache is not None:
            # Written into the cache's own buffers (``value_delayed`` may view them, so after the cat above):
            # storing slices instead would keep this chunk's whole projections alive as long as the cache.
            if conv_state is not history:  # else the decode kernel has shifted it in place
                history.copy_(conv_state)
            cache.delayed_values[self.layer_idx].copy_(value_next[:, -1])
            if next_adapter_input is not None:
                cache.delayed_adapter_inputs[self.layer_idx].copy_(next_adapter_input)
        return heads, value

    def _delayed_adapter(self, x, value_delayed, ctx, image_rows):
        """The gated LoRA of the delayed value: ``mask_t · B·A·x_{t-1}`` (the *current* token's mask, as the
        reference applies it). The cache carries ``A·x`` of the last token for the next step."""
        adapter = self.vision_adapters["v_delayed"]
        shrunk = x @ adapter.A.t().to(x.dtype)                                         # (b, s, rank)
        if image_rows is not None:
            cache = ctx.cache
            first = (cache.delayed_adapter_inputs[self.layer_idx][:, None].to(x.dtype) if cache is not None
                     else shrunk.new_zeros(x.shape[0], 1, adapter.rank))
            previous = torch.cat([first, shrunk[:, :-1]], dim=1)
            if ctx.delayed_keep is not None:
                previous = previous * ctx.delayed_keep[..., None].to(x.dtype)
            delta = previous.reshape(-1, adapter.rank).index_select(0, image_rows) @ adapter.B.t().to(x.dtype)
            flat = value_delayed.reshape(-1, value_delayed.shape[-1]).index_add(0, image_rows, delta)
            value_delayed = flat.view_as(value_delayed)
        return value_delayed, shrunk[:, -1]
class QKNorm(nn.Module):
    """L2-normalise each query and key head to norm √head_dim; key heads also get a learned per-KV-head
    temperature."""

    def __init__(self, config: ZayaLMConfig) -> None:
        super().__init__()
        self.scale, self.num_heads = math.sqrt(config.head_dim), config.num_attention_heads
        self.temp = nn.Parameter(torch.zeros(config.num_key_value_heads))
        self._derived = DerivedTensors()

    def head_gains(self) -> torch.Tensor:
        """√head_dim for each query head, √head_dim × temperature for each key head: (heads + kv_heads, 1)."""
        temp = self.temp
        return self._derived.get("gains", [temp], lambda: (torch.cat([temp.new_ones(self.num_heads), temp])
                                                             * self.scale)[:, None])

    def warm_derived(self) -> None:
        self.head_gains()

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        """``heads``: (b, s, heads + kv_heads, d), the query heads first. Four ops for all heads: a decode step
        pays per op, and torch's rms_norm would decompose into more here."""
        eps = torch.finfo(heads.dtype).eps
        norm = torch.linalg.vector_norm(heads, dim=-1, keepdim=True).clamp_min(eps)
        return heads * (self.head_gains().to(heads.dtype) / norm)


__all__ = ["CCAProjection", "QKNorm"]
