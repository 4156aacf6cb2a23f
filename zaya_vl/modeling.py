"""ZAYA1-VL: the Qwen2.5-VL vision tower, its patch merger into the ZAYA1 LM, image-gated LoRA, and generate().

Data flows one way: pixel values → vision tower (windowed ViT + 2×2 patch merger to the LM width) → image
embeddings scattered into the token embeddings at the image-token positions → the ZAYA1 decoder with the image
mask (vision LoRA on image tokens; image tokens attend to each other as ``config.image_attention`` says) → logits.

``from_pretrained`` reads three layouts (ours, Zyphra's original release, the upstream transformers port), each
converted through its key table in ``zaya_vl.conversion``; ``save_pretrained`` writes ours, or the port's with
``layout="transformers"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig, port_behaviour_differences, port_config_dict
from zaya_vl.conversion import (NATIVE, TRANSFORMERS, ZYPHRA, LayoutKeyError, detect_layout, to_native,
                                unmapped_keys)
from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.generation import ZayaGenerationMixin
from zaya_vl.lm.modeling import ZayaLMModel
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast
from zaya_vl.lm.strict_loading import StrictLoadingMixin
from zaya_vl.weights import (CorruptCheckpointError, checkpoint_float_keys, index_lacks_metadata,
                              iter_checkpoint_tensors)


@dataclass
class ZayaVLCausalLMOutputWithPast(ZayaCausalLMOutputWithPast):
    """``image_hidden_states`` (image tokens, hidden): the patch merger's output, one row per image token in the
    order the image tokens appear (row-major over batch and sequence), as scattered into the decoder's input;
    set when the forward had ``pixel_values``. Auxiliary losses on the image features start from it."""

    image_hidden_states: torch.FloatTensor | None = None


logger = logging.get_logger(__name__)
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
            inputs_embeds = self.model.embed_tokens(input_ids)
            # Vision LoRA and image attention apply where image features are placed, i.e. only in the forward that
            # receives the pixels: a generated token that happens to equal the image token is text.
            image_mask = input_ids == self.config.image_token_id if pixel_values is not None else None
            starting = cache is None or cache.get_seq_length() == 0
            if pixel_values is None and starting and bool((input_ids == self.config.image_token_id).any()):
                count = int((input_ids == self.config.image_token_id).sum())
                raise ValueError(f"The input has {count} image tokens but no pixel_values.")
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

    # -- loading and saving ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Load a checkpoint in any of the three layouts (``zaya_vl.conversion``): ours, Zyphra's original
        release, or the upstream transformers port, chosen by the tensor names the checkpoint holds. Config
        fields can be overridden as keyword arguments, e.g. ``image_attention="causal"``."""
        path = pretrained_model_name_or_path
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if config is None and path is not None and os.path.isdir(str(path)) and not os.path.isfile(
                os.path.join(path, hub_kwargs.get("subfolder") or "", "config.json")):
            raise FileNotFoundError(f"{path} has no config.json; a checkpoint folder needs one beside its weights.")
        float_keys = checkpoint_float_keys(path, **hub_kwargs) if path is not None else None
        layout = detect_layout(float_keys) if float_keys is not None else NATIVE
        if config is None and path is not None and _model_type(path, kwargs) == ReferenceZayaVLConfig.model_type:
            config = ReferenceZayaVLConfig.from_pretrained(path, **hub_kwargs)
        if layout is NATIVE and not isinstance(config, ReferenceZayaVLConfig) and not (
                path is not None and index_lacks_metadata(path, **hub_kwargs)):
            loaded = super().from_pretrained(path, *args, config=config, **kwargs)
        else:
            loaded = cls._from_converted(path, layout, list(float_keys), config, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        if path is not None:
            _check_loaded_weights(model, layout, float_keys, path)
            generation_config = _read_generation_config(path, hub_kwargs)
            if generation_config is not None:
                model.generation_config = generation_config
        return loaded

    @classmethod
    def _from_converted(cls, path, layout, keys, config, *args, **kwargs):
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in ZayaVLConfig.__dataclass_fields__}
        if layout is NATIVE:  # read here only when transformers' loader cannot (an index without metadata)
            native = config or ZayaVLConfig.from_pretrained(path, **hub_kwargs, **overrides)
        elif not isinstance(config, ReferenceZayaVLConfig):
            raise ValueError(f"{path}: the tensors are in the {layout.name!r} layout but config.json is not a "
                             "zaya1_vl config; the two must come from the same release.")
        elif config.layout != layout.name:
            raise ValueError(f"{path}: config.json is in the {config.layout!r} layout but the tensors are in the "
                             f"{layout.name!r} layout; the two must come from the same release.")
        else:
            native = config.to_native(**overrides)
        text = native.text_config
        _raise_if_unmapped(path, layout, keys, text.num_hidden_layers)
        state_dict = dict(to_native(iter_checkpoint_tensors(path, **hub_kwargs), layout, text.num_hidden_layers,
                                    text.num_experts))
        for key in _HUB_KWARGS:
            kwargs.pop(key, None)
        return super().from_pretrained(None, *args, config=native, state_dict=state_dict, **kwargs)

    def save_pretrained(self, save_directory, *args, layout: str = "native", **kwargs):
        """Save in our layout (the default), or with ``layout="transformers"`` in the upstream transformers port's
        layout, which ``Zaya1VLForConditionalGeneration.from_pretrained`` reads."""
        if layout == "native":
            return super().save_pretrained(save_directory, *args, **kwargs)
        if layout != "transformers":
            raise ValueError(f"layout={layout!r}; expected 'native' or 'transformers' (the Zyphra layout is read-only).")
        from zaya_vl.checkpoint_writer import save_in_layout

        differing = port_behaviour_differences(self.config)
        if differing:
            logger.warning(f"Saving in the transformers layout: the port computes {', '.join(differing)}; this model "
                           "was set otherwise, so it will not compute the same there (ZayaVL.from_pretrained reads "
                           "the folder with the port's settings too; pass the settings back as keyword arguments).")
        save_in_layout(self, save_directory, TRANSFORMERS, port_config_dict(self.config), **kwargs)


class ReferenceLayoutZayaVL(ZayaVL):
    """What the Auto classes map a ``zaya1_vl`` config to: it loads and returns a native ``ZayaVL``."""

    config_class = ReferenceZayaVLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return ZayaVL.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _check_loaded_weights(model, layout, float_keys: dict[str, bool], path) -> None:
    """Refuse what transformers would load quietly: integer data in a floating-point parameter (cast without a
    word) and NaN or infinite weights (a model that answers nothing)."""
    params = dict(model.state_dict())
    num_layers = model.config.text_config.num_hidden_layers
    for key, is_float in float_keys.items():
        if is_float:
            continue
        target = layout.native_name(key, num_layers)[0]
        if target in params and params[target].is_floating_point():
            raise CorruptCheckpointError(f"{path}: tensor {key} holds integer data but {target} is a "
                                         "floating-point parameter.")
    for name, tensor in params.items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise CorruptCheckpointError(f"{path}: {name} holds NaN or infinite values.")


def _raise_if_unmapped(path, layout, keys, num_layers: int) -> None:
    """Every checkpoint key must map under its layout; otherwise say, per layout, which keys did not."""
    if not unmapped_keys(layout, keys, num_layers):
        return
    report = "; ".join(f"{candidate.name}: {', '.join(unmapped_keys(candidate, keys, num_layers)) or 'all map'}"
                       for candidate in (ZYPHRA, TRANSFORMERS))
    raise LayoutKeyError(f"{path}: the checkpoint matches no known layout. First keys each layout cannot map: "
                         f"{report}.")


def _read_generation_config(path, hub_kwargs) -> GenerationConfig | None:
    """The checkpoint's generation_config.json (extra EOS ids, sampling defaults), or None when it has none.
    An unreadable file is an error, not a silent fallback to defaults."""
    from transformers.utils import cached_file

    file = os.path.join(path, "generation_config.json") if os.path.isdir(str(path)) else cached_file(
        path, "generation_config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if file is None or not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            values = json.load(f)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return GenerationConfig.from_dict(values)
    except (ValueError, UnicodeDecodeError, TypeError) as error:
        raise ValueError(f"{file}: invalid generation config ({error}).") from None


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
