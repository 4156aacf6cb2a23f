"""ZAYA1's mixture of experts: an MLP router with EDA and balancing biases, top-1 over experts + skip.

Router (fp32 throughout, whatever the model dtype): down-project to ``router_hidden_size``, add the
previous layer's router state × a learned scale (EDA), RMSNorm → Linear → GELU → Linear → GELU → Linear to
``num_experts + 1`` logits (the last is "skip"). Selection is ``argmax(softmax + balancing_biases)``; the
combine weight is the *unbiased* probability, so the biases steer load without changing outputs' scale.

Experts: tokens are sorted once by (expert, is_image); skip-routed tokens sort to the tail and are never
computed; each projection is one grouped GEMM over all experts; the vision LoRA deltas are computed on
the image sub-ranges only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.kernels import few_rows
from zaya_vl.lm.kernels.dispatch import (DECODE_MAX_TOKENS, ExpertLoRA, expert_mlp_tokens, grouped_linear,
                                         grouped_swiglu, kernel_backend)
from zaya_vl.lm.layers import RMSNorm
from zaya_vl.lora.gated import GatedExpertLoRA


@dataclass
class Routing:
    expert: torch.Tensor           # (tokens,) long; == num_experts means "skip"
    weight: torch.Tensor           # (tokens,) fp32 router probability of the chosen class
    router_state: torch.Tensor     # (batch, seq, router_hidden) fp32, the next layer's EDA input
    logits: torch.Tensor           # (tokens, num_experts + 1) fp32


class RouterMLP(nn.Module):
    def __init__(self, hidden: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, hidden, bias=True)
        self.out_proj = nn.Linear(hidden, num_classes, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        h = F.gelu(few_rows.linear(h, self.fc1.weight.float(), self.fc1.bias.float()))
        h = F.gelu(few_rows.linear(h, self.fc2.weight.float(), self.fc2.bias.float()))
        return few_rows.linear(h, self.out_proj.weight.float())


class ZayaRouter(nn.Module):
    def __init__(self, config: ZayaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.down_proj = nn.Linear(config.hidden_size, config.router_hidden_size, bias=True)
        self.use_eda = layer_idx != 0
        if self.use_eda:
            self.router_states_scale = nn.Parameter(torch.ones(config.router_hidden_size))
        self.router_mlp = RouterMLP(config.router_hidden_size, config.num_experts + 1, config.router_norm_eps)
        biases = torch.zeros(config.num_experts + 1, dtype=torch.float32)
        biases[-1] = -1.0  # the released models start the skip choice at -1
        self.register_buffer("balancing_biases", biases)

    def forward(self, x: torch.Tensor, prev_router_state: torch.Tensor | None) -> Routing:
        state = few_rows.linear(x.float(), self.down_proj.weight.float(), self.down_proj.bias.float())
        if self.use_eda and prev_router_state is not None:
            state = state + prev_router_state * self.router_states_scale.float()
        logits = self.router_mlp(state).reshape(-1, self.num_experts + 1)
        probs = torch.softmax(logits, dim=-1)
        expert = torch.argmax(probs.detach() + self.balancing_biases.float(), dim=-1)
        weight = probs.gather(1, expert[:, None]).squeeze(1)
        return Routing(expert=expert, weight=weight, router_state=state, logits=logits)


class ZayaExperts(nn.Module):
    """``num_experts`` SwiGLU experts stored fused as upstream does: gate_up (E, 2I, H), down (E, H, I)."""

    def __init__(self, config: ZayaLMConfig) -> None:
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts = E
        self.skip_output = config.skip_expert_output
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        rank = config.vision_lora_rank_mlp
        self.vision_adapters = nn.ModuleDict({
            "gate_up": GatedExpertLoRA(E, H, 2 * I, rank),
            "down": GatedExpertLoRA(E, I, H, rank),
        }) if rank > 0 else None

    def forward(self, x: torch.Tensor, routing: Routing, image_token: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (tokens, hidden); ``image_token``: (tokens,) bool or None. Returns (tokens, hidden)."""
        E = self.num_experts
        use_adapters = self.vision_adapters is not None and image_token is not None and bool(image_token.any())
        few_tokens = x.shape[0] == 1 or (x.shape[0] <= DECODE_MAX_TOKENS
                                         and kernel_backend(x.device, x.dtype) == "triton")
        if few_tokens and not use_adapters:
            return self._few_tokens(x, routing)

        # Sort once by (expert, is_image): skip (== E) sorts last; image rows end each expert's range.
        sort_key = routing.expert * 2 + (image_token.long() if use_adapters else 0)
        order = torch.argsort(sort_key, stable=True)
        counts = torch.bincount(routing.expert, minlength=E + 1)
        computed = int(x.shape[0] - counts[E])
        if computed == 0:
            return self._skip_rows(x, routing)
        rows = order[:computed]
        expert_ends = torch.cumsum(counts[:E], dim=0)
        x_sorted = x.index_select(0, rows)

        if use_adapters:
            image_sorted = image_token.index_select(0, rows)
            image_positions = image_sorted.nonzero().squeeze(1)
            image_ends = torch.cumsum(torch.bincount(routing.expert[rows][image_sorted], minlength=E), dim=0)

        def lora(name: str) -> ExpertLoRA | None:  # the adapter's deltas, on the image sub-ranges only
            adapter = self.vision_adapters[name] if use_adapters else None
            return ExpertLoRA(adapter.A, adapter.B, image_positions, image_ends) if adapter is not None else None

        activated = grouped_swiglu(x_sorted, self.gate_up_proj, expert_ends, lora("gate_up"))
        y = grouped_linear(activated, self.down_proj, expert_ends, lora("down"))
        y = y * routing.weight.index_select(0, rows)[:, None].to(y.dtype)

        out = self._skip_rows(x, routing)
        return out.index_copy(0, rows, y.to(out.dtype))

    def _skip_rows(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The output every token starts from: what skip-routed tokens receive."""
        if self.skip_output == "zero":
            return torch.zeros_like(x)
        skipped = (routing.expert == self.num_experts).to(x.dtype) * routing.weight.to(x.dtype)
        return x * skipped[:, None]

    def _few_tokens(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        # Decode: each token indexes its chosen expert's weights directly, no sort or grouping.
        y = expert_mlp_tokens(x, self.gate_up_proj, self.down_proj, routing.expert)
        y = (y * routing.weight[:, None].to(y.dtype)).to(x.dtype)
        if self.skip_output == "zero":
            return y  # skip-routed rows are zeros already
        skipped = (routing.expert == self.num_experts)[:, None]
        return torch.where(skipped, self._skip_rows(x, routing), y)


class ZayaMoE(nn.Module):
    def __init__(self, config: ZayaLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.gate = ZayaRouter(config, layer_idx)
        self.experts = ZayaExperts(config)

    def forward(self, x: torch.Tensor, prev_router_state: torch.Tensor | None,
                image_token: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        routing = self.gate(x, prev_router_state)
        out = self.experts(x.reshape(-1, x.shape[-1]), routing, image_token)
        return out.view_as(x), routing


__all__ = ["Routing", "ZayaRouter", "ZayaExperts", "ZayaMoE"]
