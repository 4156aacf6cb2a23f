"""MoE load balancing without an auxiliary loss: a PID controller on each router's balancing biases.

ZAYA1's router selects ``argmax(softmax(logits) + balancing_biases)`` and combines with the unbiased
probability, so the biases steer which expert a token goes to without entering the output or the gradient.
After each optimizer step the trainer counts, per layer, how many (non-padding) tokens each expert received
over the whole global batch (summed across micro-batches and processes, so every process computes the same
update), and the controller moves the biases toward a uniform load:

    error      = 1/E − load_fraction            (per layer, per expert; > 0 means under-loaded)
    integral  += error                          (clamped so that |ki · integral| ≤ output_limit)
    bias       = bias₀ + clamp(kp · error + ki · integral + kd · (error − previous error), ±output_limit)

``bias₀`` is the bias the run started from (a released checkpoint's trained biases are kept as the offset).
By default the skip choice is left alone and the load is measured among tokens routed to real experts;
``include_skip`` balances the skip choice as one more class. Layers whose router is frozen are left alone.
The gains are in ``BalancingConfig``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zaya_vl.lm.modeling import ZayaLMModel


def find_routers(model: nn.Module) -> list[nn.Module]:
    """The MoE routers of ``model`` (a ZAYA1 LM or ZAYA1-VL, bare or wrapped by PEFT / DDP), in layer order."""
    return [router for module in model.modules() if isinstance(module, ZayaLMModel) for router in module.routers()]


@torch.no_grad()
def expert_loads(routings: list, token_mask: torch.Tensor | None, num_layers: int) -> torch.Tensor:
    """Tokens per class (``num_experts`` experts + skip), per layer: (layers, num_experts + 1) float64.

    ``routings`` is the model's ``out["routings"]`` (one per layer; read it before ``backward``: activation
    checkpointing re-runs layers and appends again). ``token_mask`` (b, s) excludes padding.
    """
    rows = []
    for routing in routings[:num_layers]:
        classes = routing.logits.shape[-1]
        expert = routing.expert.reshape(-1)
        if token_mask is not None:
            expert = expert[token_mask.reshape(-1).to(expert.device).bool()]
        rows.append(torch.bincount(expert, minlength=classes).double())
    return torch.stack(rows)


def load_metrics(loads: torch.Tensor) -> dict[str, float]:
    """Load entropy (normalised: 1 = uniform over experts), max load (max share × E: 1 = uniform), skip share."""
    num_experts = loads.shape[1] - 1
    routed = loads[:, :num_experts]
    fractions = routed / routed.sum(1, keepdim=True).clamp_min(1)
    entropy = -(fractions * fractions.clamp_min(1e-30).log()).sum(1) / math.log(num_experts)
    max_load = fractions.max(1).values * num_experts
    skip = loads[:, num_experts] / loads.sum(1).clamp_min(1)
    return {
        "moe/load_entropy": float(entropy.mean()),
        "moe/load_entropy_min": float(entropy.min()),
        "moe/max_load": float(max_load.mean()),
        "moe/max_load_worst": float(max_load.max()),
        "moe/skip_fraction": float(skip.mean()),
    }


class BalancingController:
    """PID controller over ``(layers, num_experts + 1)`` balancing biases. Holds no model reference: the
    trainer passes loads in and writes the returned biases back with :func:`set_biases`."""

    def __init__(self, initial_biases: torch.Tensor, kp: float = 0.05, ki: float = 0.01, kd: float = 0.0,
                 include_skip: bool = False, output_limit: float = 1.0,
                 active_layers: list[bool] | None = None) -> None:
        self.base = initial_biases.detach().float().cpu().clone()
        # Layers whose router is frozen keep their biases (and so their routing) exactly.
        self.active = torch.tensor(active_layers if active_layers is not None else [True] * self.base.shape[0])
        self.kp, self.ki, self.kd = kp, ki, kd
        self.include_skip, self.output_limit = include_skip, output_limit
        self.num_experts = self.base.shape[1] - 1
        classes = self.base.shape[1] if include_skip else self.num_experts
        self.integral = torch.zeros(self.base.shape[0], classes)
        self.previous_error: torch.Tensor | None = None
        self.updates = 0

    def error(self, loads: torch.Tensor) -> torch.Tensor:
        loads = loads.detach().double().cpu()
        counted = loads if self.include_skip else loads[:, :self.num_experts]
        total = counted.sum(1, keepdim=True)
        fractions = counted / total.clamp_min(1)
        error = 1.0 / counted.shape[1] - fractions
        keep = (total > 0) & self.active[:, None]  # a layer with no tokens gives no signal
        return torch.where(keep, error, torch.zeros_like(error)).float()

    def update(self, loads: torch.Tensor) -> torch.Tensor:
        """Take one step from this step's token counts; return the new biases (layers, num_experts + 1)."""
        error = self.error(loads)
        self.integral += error
        if self.ki > 0:
            limit = self.output_limit / self.ki
            self.integral.clamp_(-limit, limit)
        derivative = error - self.previous_error if self.previous_error is not None else torch.zeros_like(error)
        control = (self.kp * error + self.ki * self.integral + self.kd * derivative)
        control = control.clamp(-self.output_limit, self.output_limit)
        self.previous_error = error
        self.updates += 1
        return self.biases_for(control)

    def biases_for(self, control: torch.Tensor) -> torch.Tensor:
        biases = self.base.clone()
        biases[:, :control.shape[1]] += control
        return biases

    def state_dict(self) -> dict:
        return {"base": self.base, "integral": self.integral, "previous_error": self.previous_error,
                "updates": self.updates, "gains": (self.kp, self.ki, self.kd), "active": self.active}

    def load_state_dict(self, state: dict) -> None:
        if state["base"].shape != self.base.shape:
            raise ValueError(f"balancing state is for biases of shape {tuple(state['base'].shape)}, "
                             f"the model has {tuple(self.base.shape)}")
        self.base = state["base"].clone()
        self.integral = state["integral"].clone()
        self.previous_error = None if state["previous_error"] is None else state["previous_error"].clone()
        self.updates = int(state["updates"])


def current_biases(model: nn.Module) -> torch.Tensor:
    return torch.stack([router.balancing_biases.detach().float().cpu() for router in find_routers(model)])


@torch.no_grad()
def set_biases(model: nn.Module, biases: torch.Tensor) -> None:
    for router, row in zip(find_routers(model), biases):
        router.balancing_biases.copy_(row.to(router.balancing_biases.device, router.balancing_biases.dtype))


__all__ = ["BalancingController", "current_biases", "expert_loads", "find_routers", "load_metrics", "set_biases"]
