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
from zaya_vl.lm.kernels.dispatch import (DECODE_MAX_TOKENS, ExpertLoRA, expert_mlp_tokens, grouped_linear,
                                         grouped_mm_supported, grouped_swiglu, kernel_backend)
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
        h = F.gelu(F.linear(h, self.fc1.weight.float(), self.fc1.bias.float()))
        h = F.gelu(F.linear(h, self.fc2.weight.float(), self.fc2.bias.float()))
        return F.linear(h, self.out_proj.weight.float())


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
        # Autocast would run these linears in bf16/fp16: the router is fp32 by design, so switch it off here.
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._route(x, prev_router_state)
        return self._route(x, prev_router_state)

    def _route(self, x: torch.Tensor, prev_router_state: torch.Tensor | None) -> Routing:
        state = F.linear(x.float(), self.down_proj.weight.float(), self.down_proj.bias.float())
        if self.use_eda and prev_router_state is not None:
            state = state + prev_router_state.float() * self.router_states_scale.float()
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
        """``x``: (tokens, hidden); ``image_token``: (tokens,) bool or None (no image token in this forward).
        Returns (tokens, hidden)."""
        E = self.num_experts
        use_adapters = self.vision_adapters is not None and image_token is not None
        x_in = x
        x = x.to(self.gate_up_proj.dtype)  # an autocast or mixed-precision caller may hand us another dtype
        few_tokens = x.shape[0] <= DECODE_MAX_TOKENS
        if few_tokens and not use_adapters:
            return self._few_tokens(x, routing).to(x_in.dtype)
        if not use_adapters and (torch.compiler.is_compiling()
                                 or (not host_sync_allowed(x) and _grouped_mm_fits(x, self))):
            return self._grouped_on_device(x, routing).to(x_in.dtype)

        # Prefill: sort once by (expert, is_image): skip (== E) sorts last; image rows end each expert's range.
        # Counting the computed rows on the host (one sync per layer) lets skip-routed rows cost nothing.
        sort_key = routing.expert * 2 + (image_token.long() if use_adapters else 0)
        order = torch.argsort(sort_key, stable=True)
        counts = torch.bincount(routing.expert, minlength=E + 1)
        computed = int(x.shape[0] - counts[E])
        if computed == 0:
            return self.skip_rows(x, routing).to(x_in.dtype)
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

        out = self.skip_rows(x, routing)
        return out.index_copy(0, rows, y.to(out.dtype)).to(x_in.dtype)

    def _grouped_on_device(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The grouped path with no host sync (as upstream's ``grouped_mm`` experts): skip-routed rows sort to the
        tail, ``histc`` counts the experts' rows without them, and the grouped GEMM stops at the last expert's
        end, so neither the row count nor the offsets ever leave the device. Rows past that end are left
        unwritten by the kernel and masked out here."""
        E = self.num_experts
        skipped = routing.expert == E
        if not _grouped_mm_fits(x, self) and kernel_backend(x.device, x.dtype) != "triton":
            # No grouped kernel here (the torch loop would read the offsets on the host): each token gathers.
            y = self._gathered_tokens(x, routing.expert) * routing.weight[:, None].to(x.dtype)
            return torch.where(skipped[:, None], self.skip_rows(x, routing), y.to(x.dtype))
        order = torch.argsort(routing.expert, stable=True)
        counts = torch.histc(routing.expert.float(), bins=E, min=0, max=E - 1)  # drops skip (== E)
        expert_ends = torch.cumsum(counts, dim=0).to(torch.int32)
        activated = grouped_swiglu(x.index_select(0, order), self.gate_up_proj, expert_ends)
        y = grouped_linear(activated, self.down_proj, expert_ends)
        y = y * routing.weight.index_select(0, order)[:, None].to(y.dtype)
        y = torch.where(skipped.index_select(0, order)[:, None], 0.0, y)  # also clears the unwritten rows
        out = self.skip_rows(x, routing)
        return out.index_add(0, order, y.to(out.dtype))

    def skip_rows(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The output every token starts from: what skip-routed tokens receive."""
        if self.skip_output == "zero":
            return torch.zeros_like(x)
        skipped = (routing.expert == self.num_experts).to(x.dtype) * routing.weight.to(x.dtype)
        return x * skipped[:, None]

    def _few_tokens(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        # Decode: each token reads its chosen expert's weights directly, no sort.
        if x.device.type != "cpu" and _grouped_mm_fits(x, self):
            return self._grouped_on_device(x, routing)
        if kernel_backend(x.device, x.dtype) == "triton":
            y = expert_mlp_tokens(x, self.gate_up_proj, self.down_proj, routing.expert)  # skip rows: zeros
        elif host_sync_allowed(x):  # eager on CPU: the chosen experts are read on the host
            y = chosen_experts_mlp(x, self.gate_up_proj, self.down_proj, routing.expert)
        elif _HOST_SYNC_ON_CPU and x.device.type == "cpu":  # compiled on CPU: the same, as one opaque op
            y = torch.ops.zaya_vl.cpu_expert_mlp_tokens(x, self.gate_up_proj, self.down_proj, routing.expert)
        else:
            y = self._gathered_tokens(x, routing.expert)  # skip rows: expert 0's output, replaced below
        y = (y * routing.weight[:, None].to(y.dtype)).to(x.dtype)
        skipped = (routing.expert == self.num_experts)[:, None]
        return torch.where(skipped, self.skip_rows(x, routing), y)

    def _gathered_tokens(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Each token through its expert, the expert chosen on the device (skip-routed tokens through expert 0;
        the caller zeroes them): a gathered batched GEMV."""
        chosen = expert.clamp(max=self.num_experts - 1)
        gate_up, down = self.gate_up_proj.index_select(0, chosen), self.down_proj.index_select(0, chosen)
        gate, up = torch.bmm(gate_up, x[:, :, None]).squeeze(-1).chunk(2, dim=-1)
        return torch.bmm(down, (F.silu(gate) * up)[:, :, None]).squeeze(-1)


def chosen_experts_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                       expert: torch.Tensor) -> torch.Tensor:
    """A few tokens through their experts on CPU (skip-routed rows: zeros). Reading the chosen experts on the
    host costs nothing on a CPU, and each chosen expert then runs once on its tokens, reading its weights in
    place. A plain loop: for the one or two experts a few tokens usually pick, sorting and ``torch._grouped_mm``
    cost ~2.5 ms more of a ~22 ms batch-8 medium step (measured)."""
    chosen_per_token = expert.tolist()
    out = None
    for chosen in sorted(set(chosen_per_token) - {gate_up.shape[0]}):  # the skip expert's rows stay zero
        rows = [token for token, e in enumerate(chosen_per_token) if e == chosen]
        every = len(rows) == x.shape[0]
        index = None if every else torch.tensor(rows, device=x.device)
        gate, up = F.linear(x if every else x.index_select(0, index), gate_up[chosen]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, down[chosen])
        if every:
            return y
        out = x.new_zeros(x.shape[0], down.shape[1]) if out is None else out
        out.index_copy_(0, index, y.to(out.dtype))
    return x.new_zeros(x.shape[0], down.shape[1]) if out is None else out


@torch.library.custom_op("zaya_vl::cpu_expert_mlp_tokens", mutates_args=(), device_types="cpu")
def _cpu_expert_mlp_tokens(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                           expert: torch.Tensor) -> torch.Tensor:
    """``chosen_experts_mlp`` inside a compiled CPU step, where the host read must sit in an opaque op
    (inductor's fused gather-and-reduce over the same weights ran at ~1 GB/s, several times slower)."""
    return chosen_experts_mlp(x, gate_up, down, expert)


@_cpu_expert_mlp_tokens.register_fake
def _(x, gate_up, down, expert):
    return x.new_empty(x.shape[0], down.shape[1])


def host_sync_allowed(x: torch.Tensor) -> bool:
    """Whether this call may read device values on the host (``.tolist()``, ``int(tensor)``): only eagerly on
    CPU, where that costs no device sync. A GPU, and any compiled graph, takes the paths that never do."""
    return _HOST_SYNC_ON_CPU and x.device.type == "cpu" and not torch.compiler.is_compiling()


def _grouped_mm_fits(x: torch.Tensor, experts: "ZayaExperts") -> bool:
    return (grouped_mm_supported(x, experts.gate_up_proj) and grouped_mm_supported(x, experts.down_proj)
            and not (torch.is_grad_enabled() and experts.gate_up_proj.requires_grad and x.device.type == "cpu"))


_HOST_SYNC_ON_CPU = True  # tests switch it off to run the GPU's sync-free paths on CPU


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


__all__ = ["Routing", "ZayaRouter", "ZayaExperts", "ZayaMoE", "host_sync_allowed"]
