"""Which parameters a stage trains: presets by name pattern, plus the config's include/exclude patterns.

| stage | text-only LM (`ZayaLM`) | VL model (`ZayaVL`) |
|---|---|---|
| `pretrain` | everything | the LM (`model.language_model.*`, `lm_head.*`); the vision tower frozen |
| `align` | (error: needs a VL model) | the patch merger (`model.vision_tower.merger.*`) and the vision LoRA (`*.vision_adapters.*`) |
| `sft` | everything | merger + vision LoRA + the LM decoder layers (`model.language_model.layers.*`); embeddings, head and vision encoder frozen |

With PEFT LoRA (``lora:`` in the config) the LM parts of a preset are dropped (the LoRA matrices train
instead) and every ``lora_*`` parameter is trainable; patterns match names without PEFT's
``base_model.model.`` prefix. Then ``freeze.train`` patterns are added and ``freeze.freeze`` patterns removed.
Patterns are shell globs (``fnmatch``; ``*`` also crosses dots). A tensor shared under two names (the tied
embedding / LM head) trains if either name is selected and neither is frozen. A pattern that matches no parameter is an
error, so a typo cannot silently train (or freeze) nothing; a VL pattern in the names of before the headless model
(``model.layers.*``, ``vision_tower.*``) is such an error, and it names the pattern in today's names.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from zaya_vl.conversion import upgrade_native_v1_name
from zaya_vl.training.config import ConfigError

logger = logging.getLogger(__name__)

VISION_TRAINABLE = ["model.vision_tower.merger.*", "*.vision_adapters.*"]
LM_DECODER = ["model.language_model.layers.*"]
PEFT_PREFIX = "base_model.model."
PEFT_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def preset_patterns(stage: str, is_vl: bool, with_lora: bool) -> list[str]:
    if stage == "align":
        if not is_vl:
            raise ConfigError("stage: 'align' trains the vision merger and vision LoRA; it needs a VL model "
                              "(model.kind vl), not a text-only LM")
        return list(VISION_TRAINABLE)
    if stage == "pretrain":
        if with_lora:
            return []
        return ["model.language_model.*", "lm_head.*"] if is_vl else ["*"]
    if stage == "sft":
        if is_vl:
            return VISION_TRAINABLE + ([] if with_lora else LM_DECODER)
        return [] if with_lora else ["*"]
    raise ConfigError(f"stage: unknown stage {stage!r}; expected pretrain, sft or align")


@dataclass
class FreezeReport:
    trainable_parameters: int
    total_parameters: int
    trainable_names: list[str]

    def describe(self) -> str:
        share = 100.0 * self.trainable_parameters / max(self.total_parameters, 1)
        return (f"trainable parameters: {self.trainable_parameters:,} of {self.total_parameters:,} "
                f"({share:.2f}%) in {len(self.trainable_names)} tensors")


def _plain_name(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _matches_any(names: list[str], pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def apply_freezing(model: nn.Module, stage: str, is_vl: bool, train_patterns: list[str] | None = None,
                   freeze_patterns: list[str] | None = None, with_lora: bool = False) -> FreezeReport:
    """Set ``requires_grad`` on every parameter of ``model`` and report the trainable count."""
    preset = preset_patterns(stage, is_vl, with_lora)
    train_patterns, freeze_patterns = list(train_patterns or []), list(freeze_patterns or [])
    named = list(model.named_parameters(remove_duplicate=False))
    plain_names = [_plain_name(name) for name, _ in named]
    for key, patterns in (("freeze.train", train_patterns), ("freeze.freeze", freeze_patterns)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in plain_names):
                renamed = upgrade_native_v1_name(pattern) if is_vl else pattern
                hint = "" if renamed == pattern or not _matches_any(plain_names, renamed) else (
                    f"; VL parameter names now start with model.language_model. / model.vision_tower., so this "
                    f"pattern reads {renamed!r}")
                raise ConfigError(f"{key}: pattern {pattern!r} matches no parameter of the model "
                                  f"(names look like {plain_names[0]!r}, {plain_names[-1]!r}){hint}")

    # A tensor shared under several names (tied embeddings) trains if any name is selected and none frozen.
    selected: dict[int, bool] = {}
    frozen: dict[int, bool] = {}
    for (name, param), plain in zip(named, plain_names):
        is_lora = with_lora and any(marker in name for marker in PEFT_MARKERS)
        chosen = is_lora or _matches(plain, preset) or _matches(plain, train_patterns)
        selected[id(param)] = selected.get(id(param), False) or chosen
        frozen[id(param)] = frozen.get(id(param), False) or _matches(plain, freeze_patterns)
    decisions = {key: selected[key] and not frozen[key] for key in selected}
    if with_lora:
        # The LoRA matrices are what a LoRA run trains; a broad freeze pattern (the vl_sft example's
        # "model.language_model.layers.*.mlp.*") would silently freeze an expert LoRA.
        for (name, param), plain in zip(named, plain_names):
            if any(marker in name for marker in PEFT_MARKERS) and frozen[id(param)]:
                pattern = next(p for p in freeze_patterns if fnmatch.fnmatchcase(plain, p))
                raise ConfigError(f"freeze.freeze: pattern {pattern!r} freezes the LoRA matrix {plain}; narrow it "
                                  "to the base weights (e.g. '*.mlp.gate.*' for the routers) or drop "
                                  "that LoRA target")

    seen = set()
    trainable_count = total = 0
    trainable_names = []
    for name, param in named:
        if id(param) in seen:
            continue
        seen.add(id(param))
        trainable = decisions[id(param)]
        param.requires_grad_(trainable)
        total += param.numel()
        if trainable:
            trainable_count += param.numel()
            trainable_names.append(_plain_name(name))
    if trainable_count == 0:
        raise ConfigError(f"stage {stage!r} with freeze patterns train={train_patterns} freeze={freeze_patterns} "
                          "leaves no trainable parameter")
    return FreezeReport(trainable_count, total, trainable_names)


__all__ = ["FreezeReport", "PEFT_PREFIX", "VISION_TRAINABLE", "apply_freezing", "preset_patterns"]
