"""Tiny random ZAYA1 checkpoints in the real layouts, for tests and benchmarks.

Real weights are not downloadable in CI, so the test suite builds small models whose every parameter matters:
``randomize_`` draws all weights at a chosen scale, perturbs the parts that start at identity (norms,
residual scales, temperatures, adapters' B) and draws small balancing biases, as Zyphra's reference fixtures do.
"""

from __future__ import annotations

import torch
from torch import nn

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


__all__ = ["TINY_CORPUS", "TINY_LM", "TINY_PIXELS", "TINY_VISION", "balance_routing_", "build_tiny_processor",
           "image_prompt", "randomize_", "tiny_lm_config", "tiny_upstream_zaya", "tiny_vl_checkpoint", "tiny_vl_config"]
