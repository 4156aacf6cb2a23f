"""Learning-rate schedules as multipliers of the peak lr, one value per optimizer step.

- ``constant``: linear warmup, then 1.
- ``cosine``: linear warmup, then cosine from 1 down to ``min_lr_ratio`` at the last step.
- ``wsd`` (warmup–stable–decay): linear warmup, 1 until the last ``decay_fraction`` of the steps, then a
  ``linear`` / ``cosine`` / ``sqrt`` (1 − √progress) decay to ``min_lr_ratio``. The stable phase makes it easy
  to continue a run or branch a decay off any checkpoint.

Warmup multiplies step ``s`` (0-based) by ``(s + 1) / warmup_steps``, so the first step already learns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from zaya_vl.training.config import ScheduleConfig


class LRMultiplier:
    """``step -> multiplier`` of the peak learning rate."""

    def __init__(self, name: str, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1,
                 decay_fraction: float = 0.2, decay_shape: str = "linear") -> None:
        if name not in ("constant", "cosine", "wsd"):
            raise ValueError(f"unknown schedule {name!r}; expected constant, cosine or wsd")
        if decay_shape not in ("linear", "cosine", "sqrt"):
            raise ValueError(f"unknown decay shape {decay_shape!r}; expected linear, cosine or sqrt")
        self.name, self.max_steps, self.warmup_steps = name, max_steps, warmup_steps
        self.min_lr_ratio, self.decay_fraction, self.decay_shape = min_lr_ratio, decay_fraction, decay_shape

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        last = max(self.max_steps - 1, 1)
        if self.name == "cosine":
            progress = _clamp((step - self.warmup_steps) / max(last - self.warmup_steps, 1))
            return self._towards_min(0.5 * (1.0 + math.cos(math.pi * progress)))
        decay_steps = round(self.decay_fraction * self.max_steps)
        decay_start = self.max_steps - decay_steps
        if decay_steps == 0 or step < decay_start:
            return 1.0
        progress = _clamp((step - decay_start + 1) / decay_steps)
        if self.decay_shape == "linear":
            remaining = 1.0 - progress
        elif self.decay_shape == "cosine":
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            remaining = 1.0 - math.sqrt(progress)
        return self._towards_min(remaining)

    def _towards_min(self, remaining: float) -> float:
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * remaining


def _clamp(x: float) -> float:
    return min(max(x, 0.0), 1.0)


class StepSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Sets each parameter group's learning rate to ``base_lr × multiplier(step)``: a pure function of the step.

    Its state is the step count and the base learning rates only, not the multiplier: the schedule follows the
    config of the run that loads it (e.g. a run extended to more steps); the step comes from the checkpoint.
    Loading a state (``load_state_dict``) sets the learning rates of that step. A checkpoint of torch's
    ``LambdaLR`` (``last_epoch``, ``base_lrs``) loads too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float],
                 last_epoch: int = -1) -> None:
        self.multiplier = multiplier
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> list[float]:
        return [base * self.multiplier(step) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def set_optimizer_lr(self) -> None:
        """Write the current step's learning rates into the optimizer (loading an optimizer's state brings back
        the rates the saved run had)."""
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch), strict=True):
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = list(state_dict["base_lrs"])
        self.set_optimizer_lr()


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, max_steps: int) -> StepSchedule:
    multiplier = LRMultiplier(config.name, max_steps, config.warmup_steps, config.min_lr_ratio,
                              config.decay_fraction, config.decay_shape)
    return StepSchedule(optimizer, multiplier)


__all__ = ["LRMultiplier", "StepSchedule", "build_scheduler"]
