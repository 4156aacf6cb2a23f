"""ZAYA1-VL: the Qwen2.5-VL vision tower, its patch merger into the ZAYA1 LM, image-gated LoRA, and generate().

Data flows one way: pixel values → vision tower (windowed ViT + 2×2 patch merger to the LM width) → image
embeddings scattered into the token embeddings at the image-token positions → the ZAYA1 decoder with the image
mask (vision LoRA on image tokens; image spans attend bidirectionally within themselves by default) → logits.

``from_pretrained`` reads our native layout and Zyphra's reference layout (``model_type: zaya1_vl``, converted
through the table in ``zaya_vl.conversion``); ``save_pretrained`` writes the native layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig
from zaya_vl.conversion import convert_reference_state_dict
from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.generation import ZayaGenerationMixin
from zaya_vl.lm.modeling import ZayaLMModel
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast
from zaya_vl.lm.strict_loading import StrictLoadingMixin


@dataclass
class ZayaVLCausalLMOutputWithPast(ZayaCausalLMOutputWithPast):
    """``image_hidden_states`` (image tokens, hidden): the patch merger's output, one row per image token in the
    order the image tokens appear (row-major over batch and sequence), as scattered into the decoder's input;
    set when the forward had ``pixel_values``. Auxiliary losses on the image features start from it."""

    image_hidden_states: torch.FloatTensor | None = None


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class ZayaVLPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = ZayaVLConfig
    config: ZayaVLConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZayaDecoderLayer", "Qwen2_5_VLVisionBlock"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _keep_in_fp32_modules_strict = [r"mlp\.gate\."]  # a regex: the router, not vision mlp.gate_proj

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The decoder and the vision tower are sub-models that initialise themselves; only the head is ours.
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, self.config.text_config.initializer_range)
            if module.bias is not None:
                module.bias.zero_()


class ZayaVL(ZayaVLPreTrainedModel, ZayaGenerationMixin):
    """ZAYA1-VL for image-text-to-text generation.

    Example::

        model = ZayaVL.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
        processor = ZayaVLProcessor.from_pretrained(path)
        inputs = processor(images=[img], text="<image>What is the total?", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=32)
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ZayaVLConfig) -> None:
        super().__init__(config)
        self.vision_tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.model = ZayaLMModel(config.text_config)
        text = config.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=text.lm_head_bias)
        self.post_init()

    # -- images ----------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """One row per image token: the vision tower's merged patch embeddings, in image order."""
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        return self.vision_tower(pixel_values, grid_thw=image_grid_thw).pooler_output

    def _merge_images(self, input_ids, inputs_embeds, pixel_values, image_grid_thw, image_mask):
        """(the input embeddings with the images' rows scattered in, those rows or None without images)"""
        if pixel_values is None:
            return inputs_embeds, None
        if image_grid_thw is None:
            raise ValueError("pixel_values were given without image_grid_thw; pass both (ZayaVLProcessor does).")
        image_embeds = self.get_image_features(pixel_values, image_grid_thw)
        n_tokens, n_embeds = int(image_mask.sum()), image_embeds.shape[0]
        if n_tokens != n_embeds:
            merge = self.config.vision_config.spatial_merge_size ** 2
            raise ValueError(
                f"The input has {n_tokens} image tokens (id {self.config.image_token_id}) but the images give "
                f"{n_embeds} embeddings (image_grid_thw={image_grid_thw.tolist()}; each image needs t·h·w/{merge} "
                "image tokens). Build inputs with ZayaVLProcessor, which expands each <image> placeholder.")
        return inputs_embeds.masked_scatter(image_mask[..., None], image_embeds.to(inputs_embeds.dtype)), image_embeds

    # -- forward ---------------------------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ZayaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        output_router_logits: bool = False,
        loss_chunk_size: int = 1024,
        return_logits: bool | None = None,
        **kwargs,
    ) -> ZayaVLCausalLMOutputWithPast:
        """``image_mask`` (b, s) is derived from ``input_ids`` (``== image_token_id``); pass it only with
        ``inputs_embeds``. See ``ZayaLM.forward`` for the loss, ``segment_ids`` and ``return_logits``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            image_mask = input_ids == self.config.image_token_id
            inputs_embeds = self.model.embed_tokens(input_ids)
            starting = cache is None or cache.get_seq_length() == 0
            if pixel_values is None and starting and bool(image_mask.any()):
                raise ValueError(f"The input has {int(image_mask.sum())} image tokens but no pixel_values.")
        image_embeds = None
        if image_mask is not None:
            inputs_embeds, image_embeds = self._merge_images(input_ids, inputs_embeds, pixel_values, image_grid_thw,
                                                             image_mask)
        outputs = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=use_cache, image_mask=image_mask,
            image_attention=self.config.image_attention, segment_ids=segment_ids,
            output_router_logits=output_router_logits,
        )
        return self.head_outputs(outputs, labels, logits_to_keep, segment_ids, loss_chunk_size, return_logits,
                                 output_class=ZayaVLCausalLMOutputWithPast, image_hidden_states=image_embeds)

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Load the native layout, or Zyphra's reference layout (converted on the fly). Config fields can be
        overridden as keyword arguments, e.g. ``image_attention="causal"`` to reproduce the reference."""
        if isinstance(config, ReferenceZayaVLConfig) or (
                config is None and _model_type(pretrained_model_name_or_path, kwargs) == "zaya1_vl"):
            return cls._from_reference(pretrained_model_name_or_path, config, *args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_reference(cls, path, config, *args, **kwargs):
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        reference = config or ReferenceZayaVLConfig.from_pretrained(path, **hub_kwargs)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in ZayaVLConfig.__dataclass_fields__}
        native = reference.to_native(**overrides)
        from zaya_vl.weights import load_state_dict

        state_dict = convert_reference_state_dict(
            load_state_dict(path, **hub_kwargs), native.text_config.num_hidden_layers,
            native.text_config.num_experts)
        for key in _HUB_KWARGS:
            kwargs.pop(key, None)
        return super().from_pretrained(None, *args, config=native, state_dict=state_dict, **kwargs)


class ReferenceLayoutZayaVL(ZayaVL):
    """What the Auto classes map a reference (``zaya1_vl``) config to: it loads and returns a native ``ZayaVL``."""

    config_class = ReferenceZayaVLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return ZayaVL.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _model_type(path, kwargs) -> str | None:
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        config_file = os.path.join(path, "config.json") if os.path.isdir(str(path)) else cached_file(
            path, "config.json", **hub_kwargs)
        with open(config_file) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None  # let transformers raise its own, more specific error


__all__ = ["ReferenceLayoutZayaVL", "ZayaVL", "ZayaVLCausalLMOutputWithPast", "ZayaVLPreTrainedModel"]
