"""ZAYA1-VL for vLLM: the Qwen2.5-VL vision tower, the ZAYA1 LM with image-token-gated vision LoRA, and the
image attention modes.

Multimodal processing follows ``ZayaVLProcessor``: the prompt writes each image as the placeholder ``<image>``;
images become Qwen2.5-VL patches (the checkpoint's image processor); vLLM replaces the i-th placeholder with
``<start_of_image>`` + N × ``<image_soft_token>`` + ``<end_of_image>`` (N = t·h·w / merge²) and fills the N soft
tokens with the tower's output. The positions that receive image features switch the vision LoRA on; text tokens
never see it.

Image attention (``ZayaVLConfig.image_attention``): every mode is served on every vLLM attention backend. vLLM's
attention gives the causal rows; the rows of image tokens that see later tokens are attended again under our
model's own mask (``zaya_vl.vllm.image_attention``), which needs each prompt with images prefilled in one step:
the plugin configures vLLM's scheduler so, and refuses a step that splits such a prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo
from vllm.multimodal.processing.processor import PromptReplacement, PromptUpdateDetails
from vllm.sequence import IntermediateTensors

from zaya_vl.vllm.config import native_vl_config
from zaya_vl.vllm.lm import ZayaModel, ZayaStateMixin, _check_supported, load_by_name, pack_fused_experts
from zaya_vl.vllm.weights import checkpoint_layout, native_weights

IMAGE_PLACEHOLDER = "<image>"


class ZayaVLProcessingInfo(BaseProcessingInfo):
    """Our config and processor; image sizes by the checkpoint's Qwen2-VL image processor (``smart_resize``
    within its pixel budget), as ``ZayaVLProcessor.num_image_tokens`` computes them."""

    def get_hf_config(self):
        return native_vl_config(self.ctx.get_hf_config())

    def get_hf_processor(self, **kwargs: object):
        return self.ctx.get_hf_processor(**kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def placeholder(self) -> str:
        return getattr(self.get_hf_processor(), "image_placeholder", IMAGE_PLACEHOLDER)

    def _sizing(self) -> tuple[int, int, int, int]:
        """(patch size, merge size, min pixels, max pixels) of the image processor."""
        image_processor = self.get_hf_processor().image_processor
        size = image_processor.size
        min_pixels = getattr(image_processor, "min_pixels", None) or size["shortest_edge"]
        max_pixels = getattr(image_processor, "max_pixels", None) or size["longest_edge"]
        return image_processor.patch_size, image_processor.merge_size, min_pixels, max_pixels

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        patch, merge, min_pixels, max_pixels = self._sizing()
        height, width = smart_resize(image_height, image_width, factor=patch * merge, min_pixels=min_pixels,
                                     max_pixels=max_pixels)
        return (height // patch) * (width // patch) // merge ** 2

    def get_image_size_with_most_features(self) -> tuple[int, int]:
        """(width, height) of an image that fills the pixel budget: the most soft tokens one image can take."""
        patch, merge, _, max_pixels = self._sizing()
        unit = patch * merge
        side = max(1, math.isqrt(max_pixels // (unit * unit)))
        return unit * side, unit * side

    def get_max_image_tokens(self) -> int:
        width, height = self.get_image_size_with_most_features()
        return self.get_num_image_tokens(image_width=width, image_height=height)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_max_image_tokens()}


class ZayaVLDummyInputsBuilder(BaseDummyInputsBuilder[ZayaVLProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.placeholder() * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        width, height = self.info.get_image_size_with_most_features()
        overrides = (mm_options or {}).get("image")
        return {"image": self._get_dummy_images(width=width, height=height, num_images=mm_counts.get("image", 0),
                                                overrides=overrides)}


class ZayaVLMultiModalProcessor(BaseMultiModalProcessor[ZayaVLProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]):
        # Only the images go through the checkpoint's image processor here: vLLM tokenizes the prompt and expands
        # each placeholder itself (_get_prompt_updates), exactly as ZayaVLProcessor expands it.
        from transformers import BatchFeature

        images = hf_data.get("images")
        if not images:
            return BatchFeature()
        image_processor = self.info.get_hf_processor().image_processor
        processed = image_processor(images=images, return_tensors="pt")
        return BatchFeature({"pixel_values": processed["pixel_values"],
                             "image_grid_thw": processed["image_grid_thw"]})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        grid = hf_inputs.get("image_grid_thw", torch.empty((0, 3), dtype=torch.long))
        return dict(
            pixel_values=MultiModalFieldConfig.flat_from_sizes("image", grid.prod(-1)),
            image_grid_thw=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        config = self.info.get_hf_config()
        merge = config.vision_config.spatial_merge_size ** 2
        image, start, end = config.image_token_id, config.vision_start_token_id, config.vision_end_token_id

        def span(item_idx: int) -> PromptUpdateDetails:
            grid = out_mm_kwargs["image"][item_idx]["image_grid_thw"].data
            tokens = [image] * (int(grid.prod()) // merge)
            full = ([start] if start is not None else []) + tokens + ([end] if end is not None else [])
            return PromptUpdateDetails.select_token_id(full, embed_token_id=image)

        placeholder = self.info.get_tokenizer().encode(self.info.placeholder(), add_special_tokens=False)
        return [PromptReplacement(modality="image", target=placeholder, replacement=span)]


@MULTIMODAL_REGISTRY.register_processor(ZayaVLMultiModalProcessor, info=ZayaVLProcessingInfo,
                                        dummy_inputs=ZayaVLDummyInputsBuilder)
class ZayaVLForConditionalGeneration(nn.Module, SupportsMultiModal, ZayaStateMixin):
    """vLLM's entry class for ``ZayaVL`` checkpoints (native ``zaya_vl`` and Zyphra's reference ``zaya1_vl``)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError(f"ZAYA1-VL takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        self.layout = checkpoint_layout(vllm_config.model_config.hf_config)
        config = native_vl_config(vllm_config.model_config.hf_config)
        text = config.text_config
        _check_supported(vllm_config, text)
        self.config, self.text_config = config, text
        self.image_token_id = config.image_token_id
        vision_config = config.vision_config
        vision_config._attn_implementation = vision_config._attn_implementation or "sdpa"
        self.vision_tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(
            vision_config, dtype=vllm_config.model_config.dtype)
        self.model = ZayaModel(text, vllm_config, prefix="model", image_attention=config.image_attention)
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size, prefix="lm_head")
        if getattr(text, "tie_word_embeddings", True):
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(text.vocab_size)
        if vllm_config.model_config.is_mm_prefix_lm:
            # vLLM's per-image prefix-LM ranges (honoured by some GPU backends) would also open the span's
            # <start_of_image> and <end_of_image>, which attend causally in our model; the plugin applies the
            # checkpoint's own image attention itself, on every backend.
            raise ValueError("Do not enable vLLM's prefix-LM ranges (is_mm_prefix_lm) for ZAYA1-VL: the plugin "
                             f"applies the checkpoint's image attention ({config.image_attention!r}) itself.")

    # -- images ----------------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object):
        pixel_values, grid = kwargs.get("pixel_values"), kwargs.get("image_grid_thw")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat(list(pixel_values))
        if isinstance(grid, (list, tuple)):
            grid = torch.stack([torch.as_tensor(g).reshape(3) for g in grid])
        grid = grid.reshape(-1, 3).long()
        dtype = next(self.vision_tower.parameters()).dtype
        merged = self.vision_tower(pixel_values.to(dtype), grid_thw=grid).pooler_output
        merge = self.config.vision_config.spatial_merge_size ** 2
        return list(torch.split(merged, (grid.prod(-1) // merge).tolist()))

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *,
                        is_multimodal: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        # Where image features land is where the vision LoRA applies (a generated token that happens to equal the
        # image token is text, as in ZayaVL). vLLM embeds each step's tokens right before running it.
        self._image_positions = is_multimodal
        embeds = self.model.embed_tokens(input_ids)
        if multimodal_embeddings is None or is_multimodal is None or len(multimodal_embeddings) == 0:
            return embeds
        images = torch.cat(list(multimodal_embeddings)).to(embeds.dtype)
        if int(is_multimodal.sum()) != images.shape[0]:
            raise ValueError(f"{int(is_multimodal.sum())} image positions but {images.shape[0]} image embeddings")
        return embeds.masked_scatter(is_multimodal[:, None], images)

    # -- language model --------------------------------------------------------------------------------
    def get_language_model(self) -> nn.Module:
        return self.model

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        image_token = self._image_token(inputs_embeds.shape[0] if inputs_embeds is not None else input_ids.shape[0])
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        return self.model(None, positions, inputs_embeds=inputs_embeds, image_token=image_token)

    def _image_token(self, num_tokens: int) -> torch.Tensor | None:
        """(num_tokens,) bool: this step's image-feature positions (vLLM pads the step past its real tokens)."""
        positions, self._image_positions = getattr(self, "_image_positions", None), None
        if positions is None or not bool(positions.any()):
            return None
        image_token = torch.zeros(num_tokens, dtype=torch.bool, device=positions.device)
        count = min(num_tokens, positions.shape[0])
        image_token[:count] = positions[:count]
        return image_token

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_by_name(self, native_weights(weights, self.text_config, self.layout))
        pack_fused_experts(self)
        return loaded


__all__ = ["ZayaVLForConditionalGeneration", "ZayaVLMultiModalProcessor", "ZayaVLProcessingInfo"]
