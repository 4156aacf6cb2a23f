"""Small building blocks of the ZAYA1 LM: RMSNorm, learned residual scaling, partial RoPE."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.derived import DerivedTensors
from zaya_vl.lm.kernels.dispatch import DECODE_MAX_TOKENS


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (the residual stream is fp32), weight applied in the input's dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            few_rows = x.numel() <= DECODE_MAX_TOKENS * x.shape[-1]
            if few_rows and x.device.type == "cpu" and not torch.is_grad_enabled():
                return self._few_rows(x)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        normed = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * normed.to(x.dtype)

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm of a decode step's few rows as LayerNorm of ``[x, -x]``: that has mean 0 and variance
        mean(x²), so its first half is x / √(mean(x²) + ε). On CPU torch decomposes rms_norm into five ops
        but runs layer_norm as one kernel: measured 7 % off a whole decode step of the medium bench model."""
        hidden = x.shape[-1]
        normed = F.layer_norm(torch.cat([x, -x], dim=-1), (2 * hidden,), None, None, self.eps)
        return normed[..., :hidden] * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ResidualScaling(nn.Module):
    """ZAYA1's learned merge of a branch into the residual: ``(branch + b₁)·s₁ + (residual + b₂)·s₂``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden_size))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden_size))
        self.residual_scale = nn.Parameter(torch.ones(hidden_size))
        self.residual_bias = nn.Parameter(torch.zeros(hidden_size))
        self._derived = DerivedTensors()

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # (branch + b₁)·s₁ + (residual + b₂)·s₂ with the constant b₁s₁ + b₂s₂ folded (and memoised at
        # inference): two passes over the activations instead of five.
        constant = self._constant()
        merged = torch.addcmul(constant.to(residual.dtype), branch.to(residual.dtype), self.hidden_states_scale)
        return torch.addcmul(merged, residual, self.residual_scale)


    def _constant(self) -> torch.Tensor:
        sources = [self.hidden_states_bias, self.hidden_states_scale, self.residual_bias, self.residual_scale]
        return self._derived.get("constant", sources, lambda: torch.addcmul(
            self.hidden_states_bias * self.hidden_states_scale, self.residual_bias, self.residual_scale))

    def warm_derived(self) -> None:
        self._constant()


class RotaryEmbedding(nn.Module):
    """Partial RoPE: the first ``partial_rotary_factor · head_dim`` channels of each head rotate.

    One inverse-frequency table per layer type (full and sliding layers use different thetas).
    """

    def __init__(self, config: ZayaLMConfig) -> None:
        super().__init__()
        self.config = config
        self.layer_types = sorted(set(config.layer_types))
        for layer_type in self.layer_types:
            rope_type = config.rope_parameters[layer_type].get("rope_type", "default")
            if rope_type != "default":
                raise NotImplementedError(
                    f"rope_type {rope_type!r} for layer type {layer_type!r}: only 'default' RoPE is implemented "
                    "(ZAYA1 checkpoints use it)."
                )
            self.register_buffer(f"{layer_type}_inv_freq", torch.empty(0), persistent=False)
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        """(Re)compute the frequency tables; loading on the meta device leaves non-persistent buffers empty."""
        for layer_type in self.layer_types:
            inv_freq = self.inverse_frequencies(self.config, self.config.rope_parameters[layer_type])
            setattr(self, f"{layer_type}_inv_freq", inv_freq.to(getattr(self, f"{layer_type}_inv_freq").device))

    @staticmethod
    def inverse_frequencies(config: ZayaLMConfig, params: dict) -> torch.Tensor:
        rotary_dim = int(config.head_dim * params.get("partial_rotary_factor", 1.0))
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim
        return 1.0 / (params["rope_theta"] ** exponents)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> dict[str, "RotaryTables"]:
        """Per layer type, tables over the full head width (batch, seq, 1, head_dim) so that a rotation is three
        ops on all heads at once (``apply_rotary``): channels past the rotary part get cos 1 and sin 0."""
        tables = {}
        head_dim = self.config.head_dim
        for layer_type in self.layer_types:
            inv_freq = getattr(self, f"{layer_type}_inv_freq").to(position_ids.device)
            rotary_dim = 2 * inv_freq.shape[0]
            freqs = position_ids[..., None].float() * inv_freq
            angles = torch.cat((freqs, freqs), dim=-1)
            cos = F.pad(angles.cos(), (0, head_dim - rotary_dim), value=1.0)
            # rotate_half(x) = (-x[half:], x[:half]) inside the rotary part: the sign lives in sin, the swap is
            # ``apply_rotary``'s exchange of the two halves (the pass-through channels stay in place).
            sin = F.pad(torch.cat((-freqs.sin(), freqs.sin()), dim=-1), (0, head_dim - rotary_dim), value=0.0)
            tables[layer_type] = RotaryTables(cos[:, :, None].to(dtype), sin[:, :, None].to(dtype), rotary_dim)
        return tables


class RotaryTables(NamedTuple):
    cos: torch.Tensor    # (batch, seq, 1, head_dim)
    sin: torch.Tensor    # (batch, seq, 1, head_dim), rotate-half's signs folded in
    rotary_dim: int      # the leading channels that rotate; the rest pass through (cos 1, sin 0)


def apply_rotary(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Partial RoPE of ``x`` (batch, seq, heads, head_dim): ``x·cos + rotate_half(x)·sin``."""
    # The halves are exchanged by slicing: a gather along the last dim (``index_select``) is a per-element
    # loop on CPU, ~6 ms a layer for an 8 × 128-token prefill of the medium config.
    rotary, half = tables.rotary_dim, tables.rotary_dim // 2
    swapped = torch.cat((x[..., half:rotary], x[..., :half], x[..., rotary:]), dim=-1)
    return torch.addcmul(x * tables.cos, swapped, tables.sin)


__all__ = ["RMSNorm", "ResidualScaling", "RotaryEmbedding", "RotaryTables", "apply_rotary"]
