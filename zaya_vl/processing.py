"""ZayaVLProcessor: Qwen2-VL image processor + Gemma-style tokenizer + chat template.

Text writes each image as a placeholder. The processor loads the images (``zaya_vl.vision.load_image``, so a bad
image fails with a message naming it), turns them into Qwen2.5-VL patches, and replaces the i-th placeholder with the
i-th image's tokens, N = t·h·w / merge² image tokens for its patch grid. Two expansions exist (``image_expansion``):

- ``"span"`` (ours, the default for processors this package builds and saves): the placeholder ``<image>`` becomes
  ``<start_of_image>`` + N × ``<image_soft_token>`` + ``<end_of_image>``; every sequence gets exactly one ``<bos>``.
- ``"repeat"`` (Zyphra's reference processor and the upstream transformers port, ``Zaya1VLProcessor``): the
  placeholder is the image token itself (``tokenizer.image_token``, else ``"<image>"``) and becomes N copies of it;
  the processor adds no start/end tokens (a chat template may write them) and tokenizes with the tokenizer's own
  ``add_special_tokens`` default, so its ids match the reference's token for token. The image token id must equal
  the checkpoint config's ``image_token_id``, which is what the model looks for.

``from_pretrained`` picks the mode from the folder: a processor saved by this package records its mode (and
``processor_class: ZayaVLProcessor``); any other folder (a released checkpoint, one converted for the port, one
with only ``preprocessor_config.json`` and tokenizer files) gets ``"repeat"``, with the ids from its ``config.json``.

Decisions for ``"span"`` (each is tested in tests/zaya_vl/test_processing.py; ``"repeat"`` is tested against the
port's own outputs in tests/zaya_vl/test_port_processor.py):
- **bos**: every sequence starts with exactly one ``<bos>``. Text that does not start with it gets it prepended and
  all text is tokenized with ``add_special_tokens=False``, so chat-templated text (which starts with ``<bos>``) never
  gets a second one and the result does not depend on whether the tokenizer's post-processor adds ``<bos>`` (Gemma 3's
  does, the small test tokenizers don't). ``add_special_tokens=False`` tokenizes the text verbatim (no ``<bos>``).
- **pixel budget**: ``min_pixels`` / ``max_pixels`` bound the resized image's area (Qwen's ``smart_resize``: each side
  a multiple of patch·merge = 28, area within the budget, aspect kept). transformers v5 stores them in the image
  processor as ``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}`` (pixel counts despite the names);
  that is what ``save_pretrained`` writes. Pass ``min_pixels=`` / ``max_pixels=`` to ``__call__``,
  ``num_image_tokens`` or ``build_tiny_processor``; the processor maps them to ``size``.
- **padding**: ``padding=True`` and ``padding_side="left"`` by default in both modes (batched generation appends on
  the right; the reference processors default to ``padding=False``, which only differs for batches of unequal
  lengths, where theirs cannot return tensors).
- **chat template**: transformers' ``ProcessorMixin.apply_chat_template`` is used as is. It calls this processor with
  ``return_offsets_mapping`` / ``return_text_replacement_offsets`` when ``return_assistant_tokens_mask=True``, and we
  return the placeholder → expansion offsets in its format, so ``assistant_masks`` are right after image expansion.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from transformers import AutoProcessor, BatchFeature
from transformers.utils import cached_file
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import ProcessorMixin

from zaya_vl.tokenization import IMAGE_PLACEHOLDER, IMAGE_TOKEN, VISION_END_TOKEN, VISION_START_TOKEN
from zaya_vl.vision import load_image, load_images


@dataclass(frozen=True)
class ImageTokenCount:
    """What one image costs in the sequence.

    ``image_tokens``: the N image-token positions the vision tower fills (grid t·h·w / merge²).
    ``span_tokens``: what the image takes in ``input_ids``: N + 2 with ``"span"`` expansion (``<start_of_image>`` and
    ``<end_of_image>`` included), N with ``"repeat"``.
    ``grid_thw``: the patch grid (rows of ``pixel_values`` = t·h·w). ``resized_hw``: pixels after ``smart_resize``.
    """

    image_tokens: int
    span_tokens: int
    grid_thw: tuple[int, int, int]
    resized_hw: tuple[int, int]


class ZayaVLProcessor(ProcessorMixin):
    r"""Processor for ZAYA1-VL: a Qwen2-VL image processor and a Gemma-style tokenizer.

    Args:
        image_processor: a Qwen2-VL image processor (``Qwen2VLImageProcessorPil`` works without torchvision).
        tokenizer: the tokenizer; with ``"span"`` expansion it must know ``image_token``, ``vision_start_token`` and
            ``vision_end_token``, with ``"repeat"`` the image token.
        chat_template: defaults to the tokenizer's.
        image_placeholder: what marks an image in the text (``"span"``: ``"<image>"``, as our chat template writes it;
            ``"repeat"``: the image token itself).
        image_token / vision_start_token / vision_end_token: the tokens of an expanded image (``"repeat"`` uses only
            the first, by default ``tokenizer.image_token`` or ``"<image>"``).
        image_expansion: ``"span"`` (ours) or ``"repeat"`` (the reference processors'); see the module docstring.
        image_token_id: with ``"repeat"``, the checkpoint config's ``image_token_id``; the image token must have it.
    """

    EXPANSIONS = ("span", "repeat")

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_placeholder: str | None = None,
        image_token: str | None = None,
        vision_start_token: str | None = None,
        vision_end_token: str | None = None,
        image_expansion: str = "span",
        image_token_id: int | None = None,
        **kwargs,
    ):
        # Positional-or-keyword, not keyword-only: ProcessorMixin.from_args_and_dict only passes saved config
        # values to parameters it finds in __init__'s positional signature.
        if image_expansion not in self.EXPANSIONS:
            raise ValueError(f"image_expansion must be one of {self.EXPANSIONS}, got {image_expansion!r}")
        self.image_expansion = image_expansion
        if image_expansion == "repeat":
            self._init_repeat(tokenizer, image_placeholder, image_token, vision_start_token, vision_end_token,
                              image_token_id)
        else:
            self._init_span(tokenizer, image_placeholder or IMAGE_PLACEHOLDER, image_token or IMAGE_TOKEN,
                            vision_start_token or VISION_START_TOKEN, vision_end_token or VISION_END_TOKEN)
            if image_token_id is not None and self.image_token_id is not None and image_token_id != self.image_token_id:
                raise ValueError(f"image_token_id {image_token_id} disagrees with the tokenizer's id "
                                 f"{self.image_token_id} for {self.image_token!r}")
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def _init_span(self, tokenizer, image_placeholder, image_token, vision_start_token, vision_end_token) -> None:
        span_tokens = (image_token, vision_start_token, vision_end_token)
        if any(image_placeholder in token or token in image_placeholder for token in span_tokens):
            raise ValueError(f"image_placeholder {image_placeholder!r} must differ from (and not overlap) the span "
                             f"tokens {span_tokens}: the processor could not tell text to expand from expanded text")
        self.image_placeholder = image_placeholder
        self.image_token = image_token
        self.vision_start_token = vision_start_token
        self.vision_end_token = vision_end_token
        self.image_token_id = self.vision_start_token_id = self.vision_end_token_id = None
        if tokenizer is not None:
            vocab = tokenizer.get_vocab()
            missing = [token for token in span_tokens if token not in vocab]
            if missing:
                raise ValueError(f"the tokenizer has no token for {missing}; ZAYA1-VL image spans need "
                                 f"{list(span_tokens)} in the vocabulary")
            self.image_token_id = vocab[image_token]
            self.vision_start_token_id = vocab[vision_start_token]
            self.vision_end_token_id = vocab[vision_end_token]

    def _init_repeat(self, tokenizer, image_placeholder, image_token, vision_start_token, vision_end_token,
                     config_image_token_id) -> None:
        # As Zaya1VLProcessor: the tokenizer's declared image token, else the literal "<image>".
        image_token = image_token or getattr(tokenizer, "image_token", None) or IMAGE_PLACEHOLDER
        if image_placeholder is not None and image_placeholder != image_token:
            raise ValueError(f"with image_expansion='repeat' the placeholder is the image token itself "
                             f"({image_token!r}), not {image_placeholder!r}")
        self.image_placeholder = self.image_token = image_token
        self.vision_start_token, self.vision_end_token = vision_start_token, vision_end_token
        self.image_token_id = config_image_token_id
        self.vision_start_token_id = self.vision_end_token_id = None
        if tokenizer is None:
            return
        vocab = tokenizer.get_vocab()
        if image_token not in vocab:
            raise ValueError(f"the tokenizer has no token for the image token {image_token!r}")
        if config_image_token_id is not None and vocab[image_token] != config_image_token_id:
            raise ValueError(f"the tokenizer's image token {image_token!r} has id {vocab[image_token]} but the "
                             f"checkpoint config's image_token_id is {config_image_token_id}: the model would not "
                             "find the image tokens this processor writes")
        self.image_token_id = vocab[image_token]
        for name in ("vision_start", "vision_end"):
            token = getattr(self, f"{name}_token")
            setattr(self, f"{name}_token_id", vocab.get(token) if token is not None else None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a processor; a folder this package did not save gets the reference (``"repeat"``) expansion.

        Our saved processors record ``image_expansion`` in ``processor_config.json``. Any other folder is read as the
        reference processors read it, with ``image_token_id`` from its ``config.json`` (when it has one).
        """
        _check_json_files(pretrained_model_name_or_path)
        if "image_expansion" not in kwargs and not _saved_by_us(pretrained_model_name_or_path, kwargs):
            kwargs["image_expansion"] = "repeat"
            if "image_token_id" not in kwargs:
                kwargs["image_token_id"] = _config_image_token_id(pretrained_model_name_or_path, kwargs)
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for edge in ("shortest_edge", "longest_edge"):
            value = (processor.image_processor.size or {}).get(edge)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{pretrained_model_name_or_path}: the image processor's size.{edge} (the "
                                 f"{'min' if edge == 'shortest_edge' else 'max'}_pixels budget) must be a positive "
                                 f"integer, got {value!r}.")
        return processor

    # ------------------------------------------------------------------ pixel budget

    @property
    def merge_size(self) -> int:
        return self.image_processor.merge_size

    @property
    def min_pixels(self) -> int:
        return self.image_processor.size["shortest_edge"]

    @property
    def max_pixels(self) -> int:
        return self.image_processor.size["longest_edge"]

    def _pixel_budget(self, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
        min_pixels = self.min_pixels if min_pixels is None else int(min_pixels)
        max_pixels = self.max_pixels if max_pixels is None else int(max_pixels)
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
        return min_pixels, max_pixels

    def num_image_tokens(self, image: Any, min_pixels: int | None = None, max_pixels: int | None = None
                         ) -> ImageTokenCount:
        """How many tokens ``image`` becomes, without processing it.

        ``image``: anything ``load_image`` accepts, or a ``(height, width)`` tuple. ``min_pixels`` / ``max_pixels``
        override the processor's budget as they do in ``__call__``.
        """
        if isinstance(image, tuple) and len(image) == 2 and all(isinstance(side, int) for side in image):
            height, width = image
        else:
            width, height = load_image(image).size
        min_pixels, max_pixels = self._pixel_budget(min_pixels, max_pixels)
        patch_size = self.image_processor.patch_size
        resized_h, resized_w = smart_resize(height, width, factor=patch_size * self.merge_size,
                                            min_pixels=min_pixels, max_pixels=max_pixels)
        grid = (1, resized_h // patch_size, resized_w // patch_size)  # a still image is one temporal patch
        image_tokens = grid[0] * grid[1] * grid[2] // self.merge_size**2
        span_tokens = image_tokens + 2 if self.image_expansion == "span" else image_tokens
        return ImageTokenCount(image_tokens, span_tokens, grid, (resized_h, resized_w))

    # ------------------------------------------------------------------ __call__

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """Tokenize ``text`` with each image placeholder expanded, and turn ``images`` into patches.

        ``text``: a string or a list of strings; each image is written as ``image_placeholder``. ``images``: one image,
        a flat list consumed in placeholder order across the batch, or one list per sample. Returns ``input_ids``,
        ``attention_mask`` and, with images, ``pixel_values`` ((Σ t·h·w, 3·2·14·14)) and ``image_grid_thw``
        ((n_images, 3)). Extra keyword arguments go to the tokenizer or the image processor as in any transformers
        processor; ``min_pixels`` / ``max_pixels`` override the pixel budget for this call. Character offsets
        (``return_offsets_mapping``, ``return_text_replacement_offsets``) refer to the text after a missing leading
        ``<bos>`` was added (see the module docstring).
        """
        if videos is not None or audio is not None:
            raise ValueError("ZayaVLProcessor takes images and text only (no videos or audio)")
        if images is None and text is None:
            raise ValueError("ZayaVLProcessor needs `text`, `images` or both")
        texts = [text] if isinstance(text, str) else None if text is None else list(text)
        if texts is not None and not all(isinstance(sample, str) for sample in texts):
            raise TypeError("`text` must be a string or a list of strings")
        images_per_sample = self._assign_images(images, texts)

        for key, default in (("padding", True), ("padding_side", "left")):
            if key not in kwargs and key not in kwargs.get("text_kwargs", {}):
                kwargs[key] = default
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.pop("return_tensors", None)
        images_kwargs.pop("return_tensors", None)
        for key in ("return_text_replacement_offsets", "return_mm_token_type_ids"):
            text_kwargs.pop(key, None)  # flat processor options that transformers mirrors into text_kwargs
        if text_kwargs.pop("sanitize_control_tokens", False):
            raise NotImplementedError("ZayaVLProcessor does not support sanitize_control_tokens")

        data: dict[str, Any] = {}
        tokens_per_image: list[int] = []
        if images_per_sample is not None and any(images_per_sample):
            flat = [image for sample in images_per_sample for image in sample]
            data.update(self._process_images(load_images(flat), images_kwargs))
            tokens_per_image = [int(t * h * w) // self.merge_size**2 for t, h, w in data["image_grid_thw"]]

        if texts is not None:
            if self.image_expansion == "repeat":
                # The reference tokenizes with the tokenizer's own add_special_tokens default.
                texts, replacement_offsets = self._expand_placeholders(texts, tokens_per_image)
                encoding = self.tokenizer(texts, **text_kwargs)
            else:
                if text_kwargs.pop("add_special_tokens", None) is not False:
                    bos = self.tokenizer.bos_token
                    texts = [sample if bos is None or sample.startswith(bos) else bos + sample for sample in texts]
                texts, replacement_offsets = self._expand_placeholders(texts, tokens_per_image)
                encoding = self.tokenizer(texts, add_special_tokens=False, **text_kwargs)
            self._check_spans_intact(encoding["input_ids"], replacement_offsets, text_kwargs)
            data.update(encoding)
            if merged["return_text_replacement_offsets"]:
                data["text_replacement_offsets"] = replacement_offsets
            if merged["return_mm_token_type_ids"]:
                data["mm_token_type_ids"] = self.create_mm_token_type_ids(encoding["input_ids"])
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion)

    def _assign_images(self, images, texts: list[str] | None) -> list[list[Any]] | None:
        """Images grouped per sample (in placeholder order), after checking the text agrees with them."""
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        nested = images is not None and any(isinstance(item, (list, tuple)) for item in images)
        if nested and not all(isinstance(item, (list, tuple)) for item in images):
            raise TypeError("`images` must be a flat list of images or a list of per-sample lists, not a mix")
        if texts is None:
            return None if images is None else [list(sample) for sample in images] if nested else [list(images)]

        # With "repeat" expansion the placeholder is the image token, and start/end tokens are the template's.
        already_expanded = (self.image_token, self.vision_start_token, self.vision_end_token) \
            if self.image_expansion == "span" else ()
        for index, sample in enumerate(texts):
            for token in already_expanded:
                if token in sample:
                    raise ValueError(
                        f"sample {index}: the text already contains {token!r} ({sample.count(token)}x); write each "
                        f"image as {self.image_placeholder!r} and pass the image, the processor expands it")
        placeholders = [sample.count(self.image_placeholder) for sample in texts]
        if images is None:
            if any(placeholders):
                index = next(i for i, count in enumerate(placeholders) if count)
                raise ValueError(f"sample {index}: the text has {placeholders[index]} {self.image_placeholder!r} "
                                 "placeholder(s) but no images were given")
            return None
        if nested:
            if len(images) != len(texts):
                raise ValueError(f"`images` has {len(images)} per-sample lists but `text` has {len(texts)} samples")
            for index, (count, sample_images) in enumerate(zip(placeholders, images)):
                if count != len(sample_images):
                    raise ValueError(f"sample {index}: the text has {count} {self.image_placeholder!r} placeholder(s) "
                                     f"but {len(sample_images)} image(s) were given for it")
            return [list(sample_images) for sample_images in images]
        if sum(placeholders) != len(images):
            per_sample = ", ".join(f"sample {i}: {count}" for i, count in enumerate(placeholders))
            raise ValueError(f"the text has {sum(placeholders)} {self.image_placeholder!r} placeholder(s) "
                             f"({per_sample}) but {len(images)} image(s) were given")
        flat, grouped = list(images), []
        for count in placeholders:
            grouped.append(flat[:count])
            flat = flat[count:]
        return grouped

    def _process_images(self, images: list, images_kwargs: dict) -> dict:
        min_pixels = images_kwargs.pop("min_pixels", None)
        max_pixels = images_kwargs.pop("max_pixels", None)
        if min_pixels is not None or max_pixels is not None:
            min_pixels, max_pixels = self._pixel_budget(min_pixels, max_pixels)
            images_kwargs["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        return dict(self.image_processor(images=images, **images_kwargs))

    def _expand_placeholders(self, texts: list[str], tokens_per_image: list[int]):
        """Replace the i-th placeholder (across the batch) by the span of the i-th image.

        Also returns, per sample, where each placeholder was and where its span is, in the format of transformers'
        ``text_replacement_offsets`` (``apply_chat_template`` uses it to move assistant masks past expanded images).
        """
        pattern = re.compile(re.escape(self.image_placeholder))
        image_index, expanded, offsets = 0, [], []
        for sample in texts:
            pieces, sample_offsets, last, gained = [], [], 0, 0
            for match in pattern.finditer(sample):
                start, end = match.span()
                span = self.image_token * tokens_per_image[image_index]
                if self.image_expansion == "span":
                    span = self.vision_start_token + span + self.vision_end_token
                image_index += 1
                pieces += [sample[last:start], span]
                sample_offsets.append({"type": "image", "span": (start, end),
                                       "new_span": (start + gained, start + gained + len(span)),
                                       "text": match.group(), "replacement": span})
                gained += len(span) - (end - start)
                last = end
            pieces.append(sample[last:])
            expanded.append("".join(pieces))
            offsets.append(sample_offsets)
        return expanded, offsets

    def _check_spans_intact(self, input_ids, replacement_offsets, text_kwargs) -> None:
        """Every image span must reach the model whole, or image features and image tokens stop lining up."""
        for index, (ids, sample_offsets) in enumerate(zip(input_ids, replacement_offsets)):
            expected = sum(entry["replacement"].count(self.image_token) for entry in sample_offsets)
            ids = list(ids)
            found = ids.count(self.image_token_id)
            if self.image_expansion == "repeat":  # start/end tokens, if any, are the chat template's
                starts = ends = len(sample_offsets)
            else:
                starts, ends = ids.count(self.vision_start_token_id), ids.count(self.vision_end_token_id)
            if found != expected or starts != len(sample_offsets) or ends != len(sample_offsets):
                hint = (f" — truncation (max_length={text_kwargs.get('max_length')}) cut an image span"
                        if text_kwargs.get("truncation") else " — the tokenizer does not keep the image tokens whole")
                raise ValueError(f"sample {index}: expected {expected} {self.image_token!r} tokens in "
                                 f"{len(sample_offsets)} image span(s) but input_ids has {found} "
                                 f"({starts} starts, {ends} ends){hint}")

    # ------------------------------------------------------------------ decoding

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """``tokenizer.decode``, skipping special tokens (image spans, turn markers) unless told otherwise."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs
                                        ) -> list[str]:
        """Decoded text of ``generate``'s output, one string per sequence (a 1-D input is one sequence)."""
        if hasattr(generated_outputs, "tolist"):
            generated_outputs = generated_outputs.tolist()
        if generated_outputs and isinstance(generated_outputs[0], int):
            generated_outputs = [generated_outputs]
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("cache_dir", "force_download", "local_files_only", "revision", "token", "subfolder")
    return {key: kwargs[key] for key in keys if key in kwargs}


def _read_json(path_or_repo, filename: str, kwargs: dict) -> dict | None:
    resolved = cached_file(path_or_repo, filename, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **_hub_kwargs(kwargs))
    if resolved is None:
        return None
    try:
        with open(resolved, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{resolved} is not valid JSON ({error})") from error


# The JSON files a processor folder may hold; each is parsed up front so a broken one is named.
_PROCESSOR_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
                   "processor_config.json", "chat_template.json")


def _check_json_files(path) -> None:
    if not os.path.isdir(str(path)):
        return
    for name in _PROCESSOR_JSON:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        try:
            with open(file, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{file}: not valid JSON (truncated or corrupt?): {error}") from None


def _saved_by_us(path_or_repo, kwargs: dict) -> bool:
    """Only this package writes ``image_expansion``; processors saved before it existed were all ``"span"`` ones and
    recorded ``processor_class: ZayaVLProcessor``."""
    saved = _read_json(path_or_repo, "processor_config.json", kwargs)
    return saved is not None and ("image_expansion" in saved or saved.get("processor_class") == "ZayaVLProcessor")


def _config_image_token_id(path_or_repo, kwargs: dict) -> int | None:
    config = _read_json(path_or_repo, "config.json", kwargs) or {}
    value = config.get("image_token_id")
    return int(value) if value is not None else None


class Zaya1VLProcessor(ZayaVLProcessor):
    """ZayaVLProcessor under the name the reference folders record (``processor_class: Zaya1VLProcessor``, written
    by the transformers port's converter and ``save_pretrained``).

    ``AutoProcessor`` resolves a recorded class name before it looks at the model type, and transformers has no class
    of that name yet, so this alias is what lets ``AutoProcessor.from_pretrained(<port folder>)`` return our processor.
    Loading works as for ZayaVLProcessor (``"repeat"`` expansion for folders this package did not save).
    """


__all__ = ["ImageTokenCount", "Zaya1VLProcessor", "ZayaVLProcessor"]
