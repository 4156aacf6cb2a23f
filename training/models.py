"""Building the model, its tokenizer / processor, optional PEFT LoRA, and the final ``save_pretrained``.

The trainer uses only the public model API: ``from_pretrained`` / ``save_pretrained``, ``forward`` with
``labels``, ``segment_ids`` and ``output_router_logits``, ``activation_checkpointing_enable`` and the decoder's
``routers()`` (their ``balancing_biases`` buffers).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zaya_vl.lm.moe import RouterMLP, ZayaExperts, ZayaRouter
from zaya_vl.training.config import ConfigError, LoraConfig, ModelConfig

logger = logging.getLogger(__name__)

VL_MODEL_TYPES = ("zaya_vl", "zaya1_vl")
LM_MODEL_TYPES = ("zaya",)
# The router reads the weights of its Linear layers directly (in fp32), so a PEFT adapter on them would never
# run. The CCA projections do take adapters: CCAProjection runs wrapped projections as modules, not fused.
_NOT_PEFT_ADAPTABLE_PARENTS = (ZayaRouter, RouterMLP)


@dataclass
class ModelBundle:
    model: nn.Module
    tokenizer: object
    processor: object | None
    is_vl: bool


def model_kind(config: ModelConfig) -> str:
    if config.kind != "auto":
        return config.kind
    if config.config is not None:
        fields = config.config
        model_type = fields.get("model_type")
        if model_type in VL_MODEL_TYPES or "vision_config" in fields or "text_config" in fields:
            return "vl"
        return "lm"
    config_file = Path(config.path).expanduser() / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.path: {config.path} has no config.json; set model.kind to 'lm' or 'vl' "
                          "for a hub id")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type in VL_MODEL_TYPES:
        return "vl"
    if model_type in LM_MODEL_TYPES:
        return "lm"
    raise ConfigError(f"model.path: model_type {model_type!r} is neither a ZAYA1 LM {LM_MODEL_TYPES} nor "
                      f"ZAYA1-VL {VL_MODEL_TYPES}")


def build_model(config: ModelConfig, seed: int, tokenizer=None, processor=None) -> ModelBundle:
    """The model from ``config``; ``tokenizer`` / ``processor`` objects, when given, replace loading them from
    ``model.tokenizer`` (or ``model.path``)."""
    kind = model_kind(config)
    dtype = getattr(torch, config.dtype)
    model_class, config_class = _model_classes(kind)
    kwargs = dict(config.overrides)
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.path is not None:
        model = model_class.from_pretrained(config.path, dtype=dtype, **kwargs)
    else:
        torch.manual_seed(seed)
        fields = {k: v for k, v in config.config.items() if k != "model_type"}
        model_config = config_class(**fields, **kwargs)
        model = model_class(model_config).to(dtype)
    tokenizer_path = config.tokenizer or config.path
    if kind == "vl" and processor is None or kind == "lm" and tokenizer is None and processor is None:
        if tokenizer_path is None:
            raise ConfigError("model.tokenizer: a new model (model.config) needs a tokenizer/processor folder")
        if kind == "vl":
            processor = _load_preprocessor(tokenizer_path, kind)
        else:
            tokenizer = _load_preprocessor(tokenizer_path, kind)
    if kind == "lm":
        processor = None  # a text-only LM trains on text only; image samples are invalid
    if processor is not None:
        tokenizer = processor.tokenizer
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ConfigError(f"model.tokenizer: the tokenizer has {len(tokenizer)} tokens but the model's "
                          f"embedding only {vocab}")
    if tokenizer.pad_token_id is None:
        raise ConfigError("model.tokenizer: the tokenizer has no pad token")
    if config.gradient_checkpointing:
        # Non-reentrant: frozen inputs (a frozen embedding) need no requires_grad hack, and any argument type passes.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return ModelBundle(model, tokenizer, processor, kind == "vl")


def _model_classes(kind: str) -> tuple[type, type]:
    """``(model class, config class)`` of a ``"vl"`` or ``"lm"`` model."""
    if kind == "vl":
        from zaya_vl import ZayaVL, ZayaVLConfig

        return ZayaVL, ZayaVLConfig
    from zaya_vl.lm import ZayaLM, ZayaLMConfig

    return ZayaLM, ZayaLMConfig


def _load_preprocessor(path: str, kind: str):
    """The processor (``"vl"``) or the tokenizer (``"lm"``) saved at ``path``."""
    if kind == "vl":
        from zaya_vl.processing import ZayaVLProcessor

        return ZayaVLProcessor.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@contextmanager
def _folder_replaced_atomically(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out`` to write into; when the block succeeds it replaces ``out`` by a
    rename, so ``out`` is either complete or absent (a failed block leaves the temporary folder, which the next
    write clears)."""
    temporary = out.with_name(f".tmp-{out.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    yield temporary
    if out.exists():
        shutil.rmtree(out)
    os.rename(temporary, out)


def upcast_trainable_(model: nn.Module) -> None:
    """Keep trainable parameters (and so the optimizer's state) in fp32 when the frozen weights are bf16."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


# The only parameters PEFT's ``target_parameters`` may adapt: the fused 3-D expert weights, which ``ZayaExperts``
# reads as module attributes inside its forward (so the ParamWrapper's parametrization is seen by every kernel
# path). Any other parameter is either a Linear weight (use ``target_modules``) or one the model reads directly.
_PEFT_PARAMETER_OWNERS = (ZayaExperts,)


def add_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model: ``target_modules`` name Linear layers, ``target_parameters`` the 3-D
    expert weights (``mlp.experts.gate_up_proj`` / ``mlp.experts.down_proj``, PEFT's ``ParamWrapper``)."""
    try:
        import peft
    except ImportError:
        raise ConfigError("lora: PEFT LoRA needs the `peft` package (pip install peft)") from None
    modules = dict(model.named_modules())
    for name, module in modules.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in config.target_modules and isinstance(module, nn.Linear):
            parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
            if isinstance(parent, _NOT_PEFT_ADAPTABLE_PARENTS):
                raise ConfigError(
                    f"lora.target_modules: {leaf!r} ({name}) cannot take a PEFT adapter: the model reads its "
                    "weight directly (the fp32 router), so the adapter would never run. Target the attention "
                    "projections (q_proj, k_proj, v_proj_current, v_proj_delayed, o_proj), the experts with "
                    "lora.target_parameters (mlp.experts.gate_up_proj, mlp.experts.down_proj), or train these "
                    "weights by name pattern (freeze.train)")
    _check_target_parameters(model, config)
    lora_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                  target_modules=list(config.target_modules),
                                  target_parameters=list(config.target_parameters) or None, bias="none")
    try:
        return peft.get_peft_model(model, lora_config)
    except ValueError as error:
        raise ConfigError(f"lora.target_modules {config.target_modules} / lora.target_parameters "
                          f"{config.target_parameters}: {error}") from None


def _check_target_parameters(model: nn.Module, config: LoraConfig) -> None:
    """Every ``lora.target_parameters`` entry matches (as PEFT matches: the full name or a dotted suffix of
    ``module.parameter``) at least one parameter, and only parameters of the experts."""
    if not config.target_parameters:
        return
    if config.dropout:
        raise ConfigError(f"lora.dropout: must be 0 with lora.target_parameters (PEFT applies a parameter's LoRA "
                          f"as a weight delta, where dropout cannot act), got {config.dropout}")
    owners = dict(model.named_modules())
    for target in config.target_parameters:
        matched = []
        for name, _ in model.named_parameters():
            if name == target or name.endswith("." + target):
                owner = owners.get(name.rpartition(".")[0], model)
                if not isinstance(owner, _PEFT_PARAMETER_OWNERS):
                    raise ConfigError(
                        f"lora.target_parameters: {target!r} matches {name}, a parameter of "
                        f"{type(owner).__name__}; only the experts' 3-D weights (mlp.experts.gate_up_proj, "
                        "mlp.experts.down_proj) are adapted by parameter. Use lora.target_modules for Linear layers")
                matched.append(name)
        if not matched:
            raise ConfigError(f"lora.target_parameters: {target!r} matches no parameter of the model (the expert "
                              "weights end in mlp.experts.gate_up_proj and mlp.experts.down_proj)")


def save_final(accelerator, model: nn.Module, bundle: ModelBundle, out_dir: str | Path,
               with_lora: bool, full_state_dict: dict | None = None) -> Path | None:
    """Collective. ``save_pretrained`` the trained model + tokenizer/processor, atomically: written to
    ``.tmp-final`` and renamed, so ``final/`` is either absent or complete. With PEFT LoRA, ``final/`` holds the
    merged model and ``final/adapter/`` the adapter alone (``PeftModel.from_pretrained(base, final/adapter)``).
    ``full_state_dict``: the gathered weights of a model the trainer sharded itself (``train.fsdp``)."""
    out_dir = Path(out_dir)
    unwrapped = accelerator.unwrap_model(model)
    if with_lora:
        state_dict = None
    elif full_state_dict is not None:
        state_dict = full_state_dict
    else:
        state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with _folder_replaced_atomically(out_dir) as temporary:
            if with_lora:
                # The adapter first: merging folds the LoRA matrices into the base weights and removes them.
                save_adapter(unwrapped, temporary / ADAPTER_DIR)
                unwrapped = unwrapped.merge_and_unload()
            unwrapped.save_pretrained(temporary, state_dict=state_dict, safe_serialization=True)
            (bundle.processor or bundle.tokenizer).save_pretrained(temporary)
    accelerator.wait_for_everyone()
    return out_dir


ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(peft_model: nn.Module, folder: Path) -> None:
    """``peft_model.save_pretrained(folder)``, plus what else the run changed, so that base + adapter = the merged
    model: the trainable parameters that are not LoRA matrices (a VL stage's merger and vision LoRA, patterns in
    ``freeze.train``) and the routers' balancing biases (buffers the balancing controller steers). They are stored
    in the adapter's safetensors under their PEFT names, which ``PeftModel.from_pretrained`` loads with the LoRA
    weights (its ``load_state_dict`` takes every key that names a model tensor)."""
    from safetensors.torch import load_file, save_file

    from zaya_vl.training.freezing import PEFT_MARKERS

    peft_model.save_pretrained(folder, safe_serialization=True)
    extra = {name: param.detach() for name, param in peft_model.named_parameters()
             if param.requires_grad and not any(marker in name for marker in PEFT_MARKERS)}
    extra.update({name: buffer for name, buffer in peft_model.named_buffers() if name.endswith("balancing_biases")})
    if extra:
        path = folder / ADAPTER_WEIGHTS
        weights = load_file(path)
        weights.update({name: tensor.contiguous().cpu() for name, tensor in extra.items()})
        save_file(weights, path, metadata={"format": "pt"})


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, *, dtype: str = "float32",
                  overwrite: bool = False) -> Path:
    """Load ``base`` (a ZAYA1 or ZAYA1-VL checkpoint), apply the PEFT ``adapter`` folder, fold it in and
    ``save_pretrained`` the merged model with ``base``'s tokenizer / processor to ``out`` (written to a temporary
    folder and renamed, so ``out`` is complete or absent)."""
    try:
        import peft
    except ImportError:
        raise ConfigError("merging a LoRA adapter needs the `peft` package (pip install peft)") from None
    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    kind = model_kind(ModelConfig(path=str(base)))
    model_class, _ = _model_classes(kind)
    model = model_class.from_pretrained(str(base), dtype=getattr(torch, dtype))
    try:
        merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as error:
        raise ConfigError(f"{adapter}: the adapter does not fit the base model {base}: {error}") from None
    with _folder_replaced_atomically(out) as temporary:
        merged.save_pretrained(temporary, safe_serialization=True)
        try:
            preprocessor = _load_preprocessor(str(base), kind)
        except (OSError, ValueError):
            preprocessor = None
        if preprocessor is not None:
            preprocessor.save_pretrained(temporary)
        else:
            logger.warning("%s has no %s to copy; %s holds the weights only", base,
                           "processor" if kind == "vl" else "tokenizer", out)
    return out


__all__ = ["ADAPTER_DIR", "ModelBundle", "add_lora", "build_model", "merge_adapter", "model_kind", "save_adapter",
           "save_final", "upcast_trainable_"]
