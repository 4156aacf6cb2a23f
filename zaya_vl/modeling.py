"""ZAYA1-VL: the Qwen2.5-VL vision tower, its patch merger into the ZAYA1 LM, image-gated LoRA, and generate().

Data flows one way: pixel values → vision tower (windowed ViT + 2×2 patch merger to the LM width) → image
embeddings scattered into the token embeddings at the image-token positions → the ZAYA1 decoder with the image
mask (vision LoRA on image tokens; image tokens attend to each other as ``config.image_attention`` says) → logits.

The classes have transformers' multimodal shape (as ``qwen2_5_vl``): :class:`ZayaVLModel` is the headless model
(``vision_tower`` + the image merge + the decoder ``language_model``) returning hidden states, and
:class:`ZayaVL` puts ``lm_head`` and ``generate()`` on top of it as ``model``.

``from_pretrained`` reads four layouts (ours, ours before the headless model, Zyphra's original release, the
upstream transformers port), each converted through its key table in ``zaya_vl.conversion``; ``save_pretrained``
writes ours, or the port's with ``layout="transformers"``.
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
from zaya_vl.conversion import (NATIVE, NATIVE_V1, TRANSFORMERS, ZYPHRA, LayoutKeyError, detect_layout,
                                to_native, unmapped_keys, upgrade_native_v1_name)
from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.generation import ZayaGenerationMixin
from zaya_vl.lm.modeling import ZayaLMModel
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast, ZayaModelOutputWithPast
from zaya_vl.lm.strict_loading import StrictLoadingMixin
from zaya_vl.weights import (CorruptCheckpointError, checkpoint_float_keys, index_lacks_metadata,
                              iter_checkpoint_tensors)


@dataclass
class ZayaVLModelOutputWithPast(ZayaModelOutputWithPast):
    """The headless model's output: the decoder's (``last_hidden_state``, ``cache``, ``routings``) and
    ``image_hidden_states`` (image tokens, hidden): the patch merger's output, one row per image token in the
    order the image tokens appear (row-major over batch and sequence), as scattered into the decoder's input;
    set when the forward had ``pixel_values``. Auxiliary losses on the image features start from it."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class ZayaVLCausalLMOutputWithPast(ZayaCausalLMOutputWithPast):
    """``image_hidden_states`` as in :class:`ZayaVLModelOutputWithPast`."""

    image_hidden_states: torch.FloatTensor | None = None


logger = logging.get_logger(__name__)
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class ZayaVLPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = ZayaVLConfig
    config: ZayaVLConfig
    base_model_prefix = "model"
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

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Load a checkpoint in any of the four layouts (``zaya_vl.conversion``): ours, ours before the headless
        model (``native_v1``), Zyphra's original release, or the upstream transformers port, chosen by the tensor
        names the checkpoint holds. Config fields can be overridden as keyword arguments, e.g.
        ``image_attention="causal"``. ``ZayaVLModel`` loads the same folders without the head."""
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
            generation_config = _read_generation_config(path, hub_kwargs) if model.can_generate() else None
            if generation_config is not None:
                model.generation_config = generation_config
        return loaded

    @classmethod
    def _from_converted(cls, path, layout, keys, config, *args, **kwargs):
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in ZayaVLConfig.__dataclass_fields__}
        if layout in (NATIVE, NATIVE_V1) and not isinstance(config, ReferenceZayaVLConfig):
            # NATIVE is read here only when transformers' loader cannot (an index without metadata).
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


class ZayaVLModel(ZayaVLPreTrainedModel):
    """The headless ZAYA1-VL: the vision tower, the merge of its image features into the token embeddings, and
    the ZAYA1 decoder (``language_model``). Returns the final hidden states; :class:`ZayaVL` adds the head.

    Example::

        model = ZayaVLModel.from_pretrained(path)
        hidden = model(**processor(images=[img], text="<image>Describe.", return_tensors="pt")).last_hidden_state
    """

    # A folder of the full model also holds the head, which the headless model has no place for.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: ZayaVLConfig) -> None:
        super().__init__(config)
        self.vision_tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.language_model = ZayaLMModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    # -- images ----------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """(image tokens, hidden): the vision tower's merged patch embeddings, one row per image token, images
        in order (image ``i`` has ``image_grid_thw[i].prod() / spatial_merge_size²`` rows)."""
        if image_grid_thw is None:
            raise ValueError("pixel_values were given without image_grid_thw; pass both (ZayaVLProcessor does).")
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        return self.vision_tower(pixel_values, grid_thw=image_grid_thw).pooler_output

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor,
                             image_features: torch.Tensor | None = None,
                             image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) bool: where the image features go, the positions of the image token in ``input_ids`` (or,
        without ids, the rows of ``inputs_embeds`` equal to the image token's embedding). With ``image_features``,
        their row count must equal the number of image tokens (``image_grid_thw`` only makes the error say more)."""
        if input_ids is None:
            token = torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            mask = (inputs_embeds == self.get_input_embeddings()(token).to(inputs_embeds.dtype)).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        if image_features is not None:
            self._check_image_count(int(mask.sum()), image_features.shape[0], image_grid_thw)
        return mask

    def _check_image_count(self, n_tokens: int, n_features: int, image_grid_thw: torch.Tensor | None) -> None:
        if n_tokens == n_features:
            return
        merge = self.config.vision_config.spatial_merge_size ** 2
        grids = f"image_grid_thw={image_grid_thw.tolist()}; " if image_grid_thw is not None else ""
        raise ValueError(
            f"The input has {n_tokens} image tokens (id {self.config.image_token_id}) but the images give "
            f"{n_features} embeddings ({grids}each image needs t·h·w/{merge} image tokens). Build inputs with "
            "ZayaVLProcessor, which expands each <image> placeholder.")

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
        use_cache: bool | None = None,
        image_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        output_router_logits: bool = False,
        **kwargs,
    ) -> ZayaVLModelOutputWithPast:
        """``image_mask`` (b, s) marks where the image features go and where the vision LoRA applies. It is
        derived from ``input_ids`` (``== image_token_id``); with ``inputs_embeds`` pass it (or the rows equal to
        the image token's embedding are taken). See ``ZayaLMModel.forward`` for ``segment_ids``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            # Vision LoRA and image attention apply where image features are placed, i.e. only in the forward that
            # receives the pixels: a generated token that happens to equal the image token is text.
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds) if pixel_values is not None else None
            starting = cache is None or not cache.holds_tokens
            if pixel_values is None and starting and bool((input_ids == self.config.image_token_id).any()):
                count = int((input_ids == self.config.image_token_id).sum())
                raise ValueError(f"The input has {count} image tokens but no pixel_values.")
        elif pixel_values is not None and image_mask is None:
            image_mask = self.get_placeholder_mask(None, inputs_embeds)
        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values, image_grid_thw)
            self._check_image_count(int(image_mask.sum()), image_features.shape[0], image_grid_thw)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask[..., None],
                                                         image_features.to(inputs_embeds.dtype))
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=use_cache, image_mask=image_mask,
            image_attention=self.config.image_attention, segment_ids=segment_ids,
            output_router_logits=output_router_logits,
        )
        return ZayaVLModelOutputWithPast(last_hidden_state=outputs.last_hidden_state, cache=outputs.cache,
                                         routings=outputs.routings, image_hidden_states=image_features)


class ZayaVL(ZayaGenerationMixin, ZayaVLPreTrainedModel):
    """ZAYA1-VL for image-text-to-text generation: the headless :class:`ZayaVLModel` as ``model``, ``lm_head``
    and ``generate()``.

    Example::

        model = ZayaVL.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
        processor = ZayaVLProcessor.from_pretrained(path)
        inputs = processor(images=[img], text="<image>What is the total?", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=32)
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: ZayaVLConfig) -> None:
        super().__init__(config)
        self.model = ZayaVLModel(config)
        text = config.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=text.lm_head_bias)
        # State dicts in the names of before the headless model (training checkpoints, PEFT adapters) still load.
        self.register_load_state_dict_pre_hook(_rename_native_v1_keys)
        self.post_init()

    @property
    def language_model(self) -> ZayaLMModel:
        return self.model.language_model

    @property
    def vision_tower(self) -> Qwen2_5_VisionTransformerPretrainedModel:
        return self.model.vision_tower

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_decoder(self) -> ZayaLMModel:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """One row per image token: the vision tower's merged patch embeddings, in image order."""
        return self.model.get_image_features(pixel_values, image_grid_thw)

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
        """See ``ZayaVLModel.forward`` for the inputs and ``ZayaLM.forward`` for the loss, ``segment_ids`` and
        ``return_logits``."""
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
            use_cache=use_cache, image_mask=image_mask, segment_ids=segment_ids,
            output_router_logits=output_router_logits,
        )
        return self.head_outputs(outputs, labels, logits_to_keep, segment_ids, loss_chunk_size, return_logits,
                                 output_class=ZayaVLCausalLMOutputWithPast,
                                 image_hidden_states=outputs.image_hidden_states)

    # -- saving ----------------------------------------------------------------------------------------
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


def _rename_native_v1_keys(module, state_dict, prefix, *args) -> None:
    """A ``load_state_dict`` pre-hook: the module's ``native_v1`` keys (``vision_tower.*``, ``model.layers.*``)
    under today's names; keys already in today's names are left alone."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        renamed = prefix + upgrade_native_v1_name(key[len(prefix):])
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


class ReferenceLayoutZayaVL(ZayaVL):
    """What the Auto classes map a ``zaya1_vl`` config to: it loads and returns a native ``ZayaVL``."""

    config_class = ReferenceZayaVLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return ZayaVL.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class ReferenceLayoutZayaVLModel(ZayaVLModel):
    """``AutoModel``'s class for a ``zaya1_vl`` config: it loads and returns a native ``ZayaVLModel``."""

    config_class = ReferenceZayaVLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return ZayaVLModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _check_loaded_weights(model, layout, float_keys: dict[str, bool], path) -> None:
    """Refuse what transformers would load quietly: integer data in a floating-point parameter (cast without a
    word) and NaN or infinite weights (a model that answers nothing)."""
    # Checkpoint keys convert to the full model's names; the headless model's lack its ``model.`` prefix.
    prefix = "" if isinstance(model, ZayaVL) else ZayaVLPreTrainedModel.base_model_prefix + "."
    params = {prefix + name: tensor for name, tensor in model.state_dict().items()}
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
                       for candidate in (ZYPHRA, TRANSFORMERS, NATIVE_V1))
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


__all__ = ["ReferenceLayoutZayaVL", "ReferenceLayoutZayaVLModel", "ZayaVL", "ZayaVLCausalLMOutputWithPast", "ZayaVLModel",
           "ZayaVLModelOutputWithPast", "ZayaVLPreTrainedModel"]
