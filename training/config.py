"""Training configuration: dataclasses, read from YAML with every key checked.

    config = load_config("examples/train/text_sft.yaml", overrides=["train.max_steps=100"])

A config is one `RunConfig`; each group (`model`, `data`, `train`, `optim`, `schedule`, `balancing`,
`freeze`, `lora`) is a dataclass below, and its fields are the YAML keys. An unknown key, a value of the wrong
type or an invalid choice is an error naming the key (`data.seq_len: expected an int, got 'long'`), so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


@dataclass
class ModelConfig:
    """Where the weights come from. Exactly one of ``path`` (``from_pretrained``) or ``config`` (a new model
    with freshly initialised weights, e.g. for pretraining from scratch or tests)."""

    path: str | None = None
    config: dict | None = None                    # ZayaLMConfig / ZayaVLConfig fields for a new model
    kind: Literal["auto", "lm", "vl"] = "auto"    # auto: from the checkpoint's (or config's) model_type
    tokenizer: str | None = None                  # tokenizer (LM) or processor (VL) folder; default: path
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights as loaded; trainable ones are kept in fp32
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None         # e.g. "sdpa" or "eager"; None: the model's default
    overrides: dict = field(default_factory=dict)  # config fields passed to from_pretrained, e.g. image_attention


@dataclass
class DataConfig:
    """Training data: a JSONL file (one JSON object per line), a folder written by ``Dataset.save_to_disk``,
    or a dataset name for ``datasets.load_dataset``. Rows have ``messages`` (chat) or ``text`` (pretraining)."""

    train: str = ""
    split: str = "train"
    dataset_config: str | None = None             # the `name` argument of datasets.load_dataset
    format: Literal["auto", "chat", "sharegpt", "text"] = "auto"  # auto: by the columns a row has
    text_column: str = "text"
    messages_column: str = "messages"             # chat rows: [{"role", "content"}] (LLaMA-Factory/ms-swift too)
    conversations_column: str = "conversations"   # sharegpt rows: [{"from": "human"/"gpt"/"system", "value"}]
    system_column: str = "system"                 # a row's system prompt, if it has this column ("" : none)
    images_column: str = "images"                 # the images of `<image>` placeholders / image parts w/o source
    image_root: str | None = None                 # relative image paths resolve here; default: the JSONL's folder
    seq_len: int = 2048                           # tokens per row; a longer sample is invalid (see below)
    packing: bool = True                          # pack text-only samples into rows; image samples get a row each
    pad_to: Literal["max_length", "longest"] = "max_length"  # rows padded to seq_len, or to the batch's longest
    loss_on: Literal["assistant", "all"] = "assistant"       # chat: train on assistant turns, or on everything
    add_eos: bool = True                          # text format: end each document with the EOS token
    split_long_documents: bool = False            # text-only samples longer than seq_len: cut into pieces
    on_invalid: Literal["error", "skip"] = "error"  # missing image / over-length sample: raise, or skip and count
    shuffle: bool = True
    num_workers: int = 0                          # DataLoader workers encoding this process's rows ahead (0: inline)


@dataclass
class TrainLoopConfig:
    max_steps: int = 100                          # optimizer steps
    micro_batch_size: int = 1                     # rows per process per forward
    grad_accum_steps: int = 1                     # global batch = micro_batch_size × grad_accum_steps × processes
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    loss_chunk_size: int = 1024                   # tokens per chunk of the chunked cross-entropy
    cell_loss_weight: float = 1.0                 # images whose rows carry "cells": weight of the cell loss (0: off)
    log_every: int = 1
    save_every: int | None = None                 # steps between checkpoints; None: only at the end
    keep_checkpoints: int = 2                     # newest complete checkpoints kept (0 keeps all)
    save_final: bool = True                       # save_pretrained the model (+ tokenizer/processor) at the end
    progress: bool = True                         # tqdm bar on the main process
    tensorboard: bool = True
    cpu: bool = False                             # force CPU even where a GPU is present
    ddp_find_unused_parameters: Literal["auto", "true", "false"] = "auto"  # auto: true for VL models
    fsdp: bool = False                            # shard params/grads/optimizer per decoder layer (torch FSDP2)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0                     # applied to matrices only, never to norms, biases, scales
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0                 # max global gradient norm; None: no clipping


@dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "wsd"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1                     # the final lr as a fraction of optim.lr (cosine, wsd)
    decay_fraction: float = 0.2                   # wsd: the last fraction of steps that decays
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"  # wsd decay curve


@dataclass
class BalancingConfig:
    """The PID controller on the MoE balancing biases (see ``balancing.py``)."""

    enabled: Literal["auto", "true", "false"] = "auto"  # auto: steer each layer whose router is trained
    kp: float = 0.05
    ki: float = 0.01
    kd: float = 0.0
    include_skip: bool = False                    # also steer the skip choice toward its uniform share
    output_limit: float = 1.0                     # |bias change| the controller may apply (anti-windup)


@dataclass
class FreezeConfig:
    """Trainable parameters = the stage's preset, plus ``train`` patterns, minus ``freeze`` patterns.
    Patterns are shell globs over parameter names (``*`` crosses dots): ``*.layers.*.self_attn.*``."""

    train: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)


@dataclass
class LoraConfig:
    """Optional PEFT LoRA on top of the stage's trainable set (requires the ``peft`` package).

    ``target_modules`` names Linear layers (the attention projections); ``target_parameters`` names the experts'
    fused 3-D weights, ``mlp.experts.gate_up_proj`` and ``mlp.experts.down_proj`` (PEFT's ``target_parameters``:
    one rank-``r`` LoRA per expert), where most of a ZAYA1 model's parameters are. Either list may be empty, not
    both. The adapter is saved alone in ``final/adapter/`` besides the merged model in ``final/``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0                          # must be 0 with target_parameters (a weight delta has no dropout)
    target_modules: list[str] = field(default_factory=lambda: ["o_proj"])
    target_parameters: list[str] = field(default_factory=list)


STAGES = ("pretrain", "sft", "align")


@dataclass
class RunConfig:
    output_dir: str = ""
    stage: Literal["pretrain", "sft", "align"] = "sft"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraConfig | None = None

    def validate(self) -> "RunConfig":
        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{key}: {message}")

        if not self.output_dir:
            fail("output_dir", "required")
        if not self.data.train:
            fail("data.train", "required (a JSONL file, a saved dataset folder or a dataset name)")
        if (self.model.path is None) == (self.model.config is None):
            fail("model", "set exactly one of model.path (load a checkpoint) or model.config (a new model)")
        if len(self.optim.betas) != 2:
            fail("optim.betas", f"expected two numbers, got {self.optim.betas}")
        for key, value, low, high in self._ranges():
            _check_range(key, value, low, high)
        if self.lora is not None and not (self.lora.target_modules or self.lora.target_parameters):
            fail("lora", "target_modules and target_parameters are both empty: the adapter would train nothing")
        if self.lora is not None and self.lora.target_parameters and self.lora.dropout:
            fail("lora.dropout", f"must be 0 with lora.target_parameters (PEFT applies a parameter's LoRA as a "
                                 f"weight delta, where dropout cannot act), got {self.lora.dropout}")
        return self

    def _ranges(self) -> list[tuple[str, float | int | None, "_Bound", "_Bound"]]:
        """(key, value, lower bound, upper bound) for every numeric field; a bound is None (unbounded) or
        (limit, inclusive). A None value (an optional field left unset) passes."""
        at_least_1, non_negative, positive = (1, True), (0, True), (0, False)
        train, data, optim, schedule = self.train, self.data, self.optim, self.schedule
        ranges = [
            ("seed", self.seed, non_negative, (2**32 - 1, True)),
            ("data.seq_len", data.seq_len, at_least_1, None),
            ("train.max_steps", train.max_steps, at_least_1, None),
            ("train.micro_batch_size", train.micro_batch_size, at_least_1, None),
            ("train.grad_accum_steps", train.grad_accum_steps, at_least_1, None),
            ("train.loss_chunk_size", train.loss_chunk_size, at_least_1, None),
            ("train.cell_loss_weight", train.cell_loss_weight, non_negative, None),
            ("train.log_every", train.log_every, at_least_1, None),
            ("train.save_every", train.save_every, at_least_1, None),
            ("train.keep_checkpoints", train.keep_checkpoints, non_negative, None),
            ("optim.lr", optim.lr, positive, None),
            ("optim.weight_decay", optim.weight_decay, non_negative, None),
            ("optim.eps", optim.eps, positive, None),
            ("optim.grad_clip", optim.grad_clip, positive, None),
            ("schedule.warmup_steps", schedule.warmup_steps, non_negative, None),
            ("schedule.min_lr_ratio", schedule.min_lr_ratio, non_negative, (1, True)),
            ("schedule.decay_fraction", schedule.decay_fraction, non_negative, (1, True)),
            ("balancing.kp", self.balancing.kp, non_negative, None),
            ("balancing.ki", self.balancing.ki, non_negative, None),
            ("balancing.kd", self.balancing.kd, non_negative, None),
            ("balancing.output_limit", self.balancing.output_limit, positive, None),
        ]
        if len(optim.betas) == 2:
            ranges += [(f"optim.betas[{i}]", beta, non_negative, (1, False)) for i, beta in enumerate(optim.betas)]
        if self.lora is not None:
            ranges += [("lora.r", self.lora.r, at_least_1, None), ("lora.alpha", self.lora.alpha, positive, None),
                       ("lora.dropout", self.lora.dropout, non_negative, (1, False))]
        return ranges

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_Bound = tuple[float, bool] | None


def _check_range(key: str, value, low: _Bound, high: _Bound) -> None:
    """``value`` is finite and within the bounds, else a ConfigError naming ``key`` (NaN fails every bound)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    for bound, is_low in ((low, True), (high, False)):
        if bound is None:
            continue
        limit, inclusive = bound
        ok = (value >= limit if inclusive else value > limit) if is_low else (
            value <= limit if inclusive else value < limit)
        if not ok:
            relation = (">=" if inclusive else ">") if is_low else ("<=" if inclusive else "<")
            raise ConfigError(f"{key}: must be {relation} {limit}, got {value}")


# -- reading ------------------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config; ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    for override in overrides or []:
        apply_override(data, override)
    return config_from_dict(data)


def apply_override(data: dict, override: str) -> None:
    """``"train.max_steps=10"`` → ``data["train"]["max_steps"] = 10`` (the value is parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. train.max_steps=10")
    parts = key.strip().split(".")
    target = data
    for part in parts[:-1]:
        node = target.get(part)
        if node is None:
            node = target[part] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a group of keys")
        target = node
    target[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def config_from_dict(data: dict) -> RunConfig:
    return _build(RunConfig, data, "").validate()


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _build(cls, data: Any, prefix: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {dotted!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(hint, value: Any, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {options}")
    if origin is Literal:
        text = str(value).lower() if isinstance(value, bool) else value
        if text not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return text
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an int, got {value!r}")
    if hint is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept any number spelling.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported field type {hint}")


__all__ = [
    "BalancingConfig", "ConfigError", "DataConfig", "FreezeConfig", "LoraConfig", "ModelConfig", "OptimConfig",
    "RunConfig", "STAGES", "ScheduleConfig", "TrainLoopConfig", "apply_override", "config_from_dict",
    "load_config", "save_config",
]
