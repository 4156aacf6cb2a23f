"""Tiny random ZAYA1 checkpoints in the real layouts, for tests and benchmarks.

Real weights are not downloadable in CI, so the test suite builds small models whose every parameter matters:
``randomize_`` draws all weights at a chosen scale, perturbs the parts that start at identity (norms,
residual scales, temperatures, adapters' B) and draws small balancing biases, as Zyphra's reference fixtures do.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from zaya_vl.lm.presets import lm_size, vision_size

TINY_LM = lm_size("test-tiny")  # the registry's test size, as a dict for upstream and our config alike

_IDENTITY_START = ("norm", "scale", "temp")


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, std: float = 0.15, skip_bias: float = -1.0) -> nn.Module:
    """Overwrite every parameter with seeded random values; return ``model``.

    Parameters that start at 1 (norm weights, residual scales, the q/k temperature) become ``1 + N(0, std)``;
    all others ``N(0, std)``. Balancing biases become ``0.05·N(0, 1)`` with the skip choice at ``skip_bias``.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        noise = torch.randn(param.shape, generator=generator) * std
        leaf = name.rsplit(".", 1)[-1]
        starts_at_one = leaf in ("weight", "temp") and any(tag in name for tag in _IDENTITY_START) or "_scale" in leaf
        param.copy_((noise + 1.0 if starts_at_one else noise).to(param.dtype))
    for name, buffer in sorted(model.named_buffers(), key=lambda item: item[0]):
        if name.endswith("balancing_biases"):
            values = torch.randn(buffer.shape, generator=generator) * 0.05
            values[-1] = skip_bias
            buffer.copy_(values)
    return model


class HostReads(TorchDispatchMode):
    """Records every op whose result needs a device value on the host: ``.item()``/``.tolist()``/``bool(t)``
    (``aten._local_scalar_dense``) and ops whose output shape depends on the data (``nonzero``,
    ``masked_select``, ``unique``…, tagged by torch). Each is a host-device sync on a GPU::

        with HostReads() as watch:
            model(token, cache=cache, use_cache=True)
        assert watch.reads == []
    """

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tags = getattr(func, "tags", ())
        if (func is torch.ops.aten._local_scalar_dense.default or torch.Tag.dynamic_output_shape in tags
                or torch.Tag.data_dependent_output in tags):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def tiny_lm_config(**overrides):
    from zaya_vl.lm.config import ZayaLMConfig

    return ZayaLMConfig(**{**TINY_LM, **overrides})


def tiny_upstream_zaya(seed: int = 0, std: float = 0.15, skip_bias: float = -1.0, **overrides):
    """A randomly initialised upstream ``transformers.ZayaForCausalLM`` (the parity peer), in eval mode."""
    import transformers

    config = transformers.ZayaConfig(**{**TINY_LM, **overrides})
    torch.manual_seed(seed)
    model = transformers.ZayaForCausalLM(config).eval()
    return randomize_(model, seed=seed, std=std, skip_bias=skip_bias)


@torch.no_grad()
def balance_routing_(model: nn.Module, input_ids: torch.Tensor) -> nn.Module:
    """Set each layer's balancing biases so random weights spread tokens over experts like a trained model.

    Random routers send nearly every token to one expert, which makes benchmarks and tests unrepresentative.
    Layer by layer (a layer's routing changes the next layer's input), centre the router probabilities on a
    calibration batch: ``bias = -mean(probs)``. Works on our ``ZayaLM`` (and loads into upstream unchanged).
    """
    layers = model.get_decoder().layers
    for index, layer in enumerate(layers):
        out = model(input_ids, use_cache=False, output_router_logits=True)
        probs = torch.softmax(out["routings"][index].logits, dim=-1)
        layer.mlp.gate.balancing_biases.copy_(-probs.mean(0))
    return model


TINY_VISION = vision_size("test-tiny")
TINY_IMAGE_TOKENS = dict(image_token_id=150, vision_start_token_id=151, vision_end_token_id=152)


def tiny_vl_config(image_attention: str = "bidirectional", lora_ranks: tuple[int, int] = (4, 8), vision=None,
                   **text_overrides):
    """A tiny ZAYA1-VL config: the tiny LM (with vision LoRA) under a 2-block Qwen2.5-VL tower."""
    from zaya_vl.configuration import ZayaVLConfig

    text = tiny_lm_config(vision_lora_rank_attn=lora_ranks[0], vision_lora_rank_mlp=lora_ranks[1], **text_overrides)
    vision_config = {**TINY_VISION, "out_hidden_size": text.hidden_size, **(vision or {})}
    return ZayaVLConfig(text_config=text, vision_config=vision_config, image_attention=image_attention,
                        **TINY_IMAGE_TOKENS)


def image_prompt(grids: list[tuple[int, int, int]], text_before: int = 3, text_after: int = 4, seed: int = 0,
                 vocab: int = 150, merge: int = 2, tokens=TINY_IMAGE_TOKENS, patch_dim: int = 3 * 2 * 14 * 14):
    """One prompt's ``input_ids`` with an expanded span per image, and random ``pixel_values``/``image_grid_thw``."""
    generator = torch.Generator().manual_seed(seed)
    pieces = [torch.randint(3, vocab, (text_before,), generator=generator)]
    for t, h, w in grids:
        pieces.append(torch.tensor([tokens["vision_start_token_id"]]))
        pieces.append(torch.full((t * h * w // merge ** 2,), tokens["image_token_id"]))
        pieces.append(torch.tensor([tokens["vision_end_token_id"]]))
        pieces.append(torch.randint(3, vocab, (text_after,), generator=generator))
    patches = sum(t * h * w for t, h, w in grids)
    return {
        "input_ids": torch.cat(pieces)[None],
        "pixel_values": torch.randn(patches, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long),
    }


TINY_CORPUS = [
    "What is the total amount due on this invoice?",
    "The total is 42 dollars and the date is May 3.",
    "Describe the chart: sales rise from January to June.",
    "Answer the question using a single word or phrase.",
    "Which option is correct? A. water B. light C. soil",
    "The diagram shows the life cycle of a frog.",
    "Read the table and give the value in the second row.",
    "Here is a document page with a title, two columns and a figure.",
]
TINY_PIXELS = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)  # 4 to 64 soft tokens per image


def build_tiny_processor(corpus=None, vocab_size: int = 320, min_pixels: int = TINY_PIXELS["min_pixels"],
                         max_pixels: int = TINY_PIXELS["max_pixels"]):
    """A ZayaVLProcessor with a small locally trained tokenizer and a Qwen2-VL image processor (PIL backend).

    Same code path as a real checkpoint; only the vocabulary is small. Its image token ids come from the tokenizer
    (``processor.image_token_id`` etc.), so a tiny model used with it must take those ids and
    ``vocab_size >= len(processor.tokenizer)``.
    """
    from transformers import Qwen2VLImageProcessorPil

    from zaya_vl.processing import ZayaVLProcessor
    from zaya_vl.tokenization import train_tokenizer

    tokenizer = train_tokenizer(TINY_CORPUS * 4 if corpus is None else corpus, vocab_size=vocab_size)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return ZayaVLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_vl_checkpoint(path, seed: int = 0, processor=None, std: float = 0.1, **text_overrides):
    """Write a tiny random ZAYA1-VL checkpoint *with its processor* to ``path``; return (model, processor).

    The model takes the processor's image-token ids and vocabulary size, so ``ZayaVL.from_pretrained(path)`` +
    ``ZayaVLProcessor.from_pretrained(path)`` run end to end exactly as a real checkpoint does.
    """
    from zaya_vl.configuration import ZayaVLConfig
    from zaya_vl.modeling import ZayaVL

    processor = processor or build_tiny_processor()
    text = tiny_lm_config(vocab_size=len(processor.tokenizer), vision_lora_rank_attn=4, vision_lora_rank_mlp=4,
                          pad_token_id=processor.tokenizer.pad_token_id, bos_token_id=processor.tokenizer.bos_token_id,
                          eos_token_id=processor.tokenizer.eos_token_id, **text_overrides)
    config = ZayaVLConfig(text_config=text, vision_config={**TINY_VISION, "out_hidden_size": text.hidden_size},
                          image_token_id=processor.image_token_id,
                          vision_start_token_id=processor.vision_start_token_id,
                          vision_end_token_id=processor.vision_end_token_id)
    model = randomize_(ZayaVL(config), seed=seed, std=std).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


# Text settings the release's config fixes (its skip-expert output and router norm epsilon, one rotary base for
# every layer): a tiny model built with these can be written by ``save_zyphra_checkpoint``.
ZYPHRA_TEXT_SETTINGS = {"skip_expert_output": "scaled_input", "router_rms_norm_eps": 1e-6,
                        "rope_parameters": {kind: {"rope_type": "default", "rope_theta": 5_000_000.0,
                                                   "partial_rotary_factor": 0.5}
                                            for kind in ("hybrid", "hybrid_sliding")}}


def save_zyphra_checkpoint(model, path, processor=None):
    """Write ``model`` (a ``ZayaVL``) as Zyphra's original release lays a checkpoint out: a flat Megatron-style
    ``config.json`` (``model_type`` ``zaya1_vl``), ``attn.``/``mlp.`` tensor names, one tensor per expert, and
    each residual scale on the sub-layer after its merge. For tests of what reads that layout (our
    ``from_pretrained``, the vLLM plugin) at sizes the release's own fixtures do not have.

    Raises ``ValueError`` naming the settings the release's config cannot express (it reads back to other values).
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from zaya_vl.configuration import ReferenceZayaVLConfig
    from zaya_vl.conversion import ZYPHRA

    path = Path(path)
    config = _zyphra_config_dict(model.config)
    read_back = ReferenceZayaVLConfig(**config).to_native(image_attention=model.config.image_attention)
    differing = _differing_settings(read_back.to_dict(), model.config.to_dict())
    if differing:
        raise ValueError(f"The Zyphra release's config cannot express {', '.join(differing)}.")
    text = model.config.text_config
    last = text.num_hidden_layers - 1
    lm = "model.language_model."
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous()
        if name == "lm_head.weight" and text.tie_word_embeddings:
            continue
        if name.startswith(lm + "input_"):
            tensors[f"model.layers.0.attn.res_scale.{name[len(lm + 'input_'):]}"] = tensor
        elif ".post_mlp_residual_scale." in name:
            layer, scale = int(name.split(".")[3]), name.rsplit(".", 1)[1]
            tensors[f"model.layers.{layer + 1}.attn.res_scale.{scale}" if layer < last else
                    f"model.res_scale.{scale}"] = tensor
        elif ".mlp.experts." in name:  # the release keeps one tensor per expert
            for expert, per_expert in enumerate(tensor.unbind(0)):
                tensors[_zyphra_expert_name(name, expert)] = per_expert.contiguous()
        else:
            tensors[ZYPHRA.checkpoint_name(name)] = tensor
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def _zyphra_expert_name(native: str, expert: int) -> str:
    """The release's name of one expert's slice of a stacked native tensor: its expert rule, run backwards."""
    from zaya_vl.conversion import ZYPHRA, KeyRule, LayoutKeyError

    for rule in ZYPHRA.rules:
        match = KeyRule(rule.target, rule.source).pattern.match(native) if rule.stacks_experts else None
        if match is not None:
            return rule.source.format(**match.groupdict(), expert=expert)
    raise LayoutKeyError(f"{native}: no expert rule of the 'zyphra' layout writes this key")


def _zyphra_config_dict(config) -> dict:
    text = config.text_config
    rope = text.rope_parameters["hybrid"]
    ranks = (text.vision_lora_rank_attn, text.vision_lora_rank_mlp)
    return {
        "architectures": ["Zaya1VLForConditionalGeneration"], "model_type": "zaya1_vl",
        "cca": True, "scale_residual_merge": True, "gated_linear_unit": True, "zaya_use_eda": True,
        "normalization": "RMSNorm", "activation_func": "swiglu", "add_bias_linear": False, "moe_router_topk": 1,
        "vocab_size": text.vocab_size, "hidden_size": text.hidden_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_query_groups": text.num_key_value_heads,
        "head_dim": text.head_dim, "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range, "norm_epsilon": text.rms_norm_eps,
        "rope_theta": rope["rope_theta"], "partial_rotary_factor": rope["partial_rotary_factor"],
        "sliding_window": text.sliding_window,
        "attention_dropout": text.attention_dropout, "ffn_hidden_size": 2 * text.moe_intermediate_size,
        "num_experts": text.num_experts, "attention_bias": text.attention_bias, "lm_head_bias": text.lm_head_bias,
        "zaya_mlp_expansion": text.router_hidden_size, "cca_time0": text.cca_time0, "cca_time1": text.cca_time1,
        "pad_token_id": text.pad_token_id, "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id,
        "zaya_use_mod": text.skip_expert_output == "scaled_input",
        "vision_lora": any(ranks), "vision_lora_rank_attn": ranks[0], "vision_lora_rank_mlp": ranks[1],
        "vision_config": {**config.vision_config.to_dict(), "model_type": "qwen2_5_vl"},
        "image_token_id": config.image_token_id, "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        **({} if text.tie_word_embeddings else {"tie_word_embeddings": False}),  # the release's configs omit it
    }


def _differing_settings(read_back: dict, wanted: dict, where: str = "") -> list[str]:
    differing = []
    for key, value in wanted.items():
        if key in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
            continue
        other = read_back.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            differing += _differing_settings(other, value, f"{where}{key}.")
        elif other != value:
            differing.append(f"{where}{key}={value!r} (it reads {other!r})")
    return differing


__all__ = ["HostReads", "TINY_CORPUS", "TINY_LM", "TINY_PIXELS", "TINY_VISION", "ZYPHRA_TEXT_SETTINGS", "balance_routing_", "build_tiny_processor",
           "image_prompt", "randomize_", "save_zyphra_checkpoint", "tiny_lm_config", "tiny_upstream_zaya", "tiny_vl_checkpoint", "tiny_vl_config"]
