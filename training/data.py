"""Training records and how one becomes token ids + labels.

Records come from a JSONL file (read lazily by line offset, so a large file is not held in memory), a ``.json``
file holding an array of rows, a parquet / arrow / csv file, a folder written by ``datasets.Dataset.save_to_disk``,
a folder of data files, or a dataset name (the last two through ``datasets.load_dataset``). A record is

- **chat**: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": "images/a.png"},
  {"type": "text", "text": "What is the total?"}]}, {"role": "assistant", "content": "$12.40"}]}``.
  Content is a string or a list of parts. An image part names its image in ``image`` (a path relative to
  the JSONL's folder or ``data.image_root``, an absolute path, a ``data:`` URI, bytes, a PIL image, a
  ``{"bytes", "path"}`` dict); a part without one takes the next entry of the record's ``images`` column.
  LLaMA-Factory / ms-swift rows (``"content": "<image>What is the total?"`` + ``"images": [...]``) and sharegpt
  rows (``conversations`` with ``from`` / ``value``) work too: see ``conversation.py`` for the rules.
  The loss covers the assistant turns (the chat template's ``{% generation %}`` blocks), or every token
  with ``loss_on: all``; image tokens never carry loss.
- **text**: ``{"text": "..."}`` for pretraining: ``<bos> text <eos>``, loss on every token.

Text-only samples need only the tokenizer. Samples with images go through the processor, which expands each
``<image>`` placeholder into ``<start_of_image>`` + N × ``<image_soft_token>`` + ``<end_of_image>``; the
assistant mask is computed on the template's unexpanded ids and carried across the expansion.

A sample that cannot be used raises :class:`InvalidSample` naming the record (file and line or row index, and its
``id``) and the reason (``InvalidSample.reason``): ``image`` (does not load, or the processor refuses it, e.g. an
extreme aspect ratio), ``image_count`` (placeholders and images differ in number), ``image_token`` (an expanded-image
token typed in text), ``unsupported`` (a video part or column), ``malformed`` (not UTF-8 / JSON, an unknown role,
null content), ``overlength`` (never truncated: that could cut an image span or the answer), ``no_targets``. The
row stream raises it or, with ``on_invalid: skip``, skips the sample and counts it once. ``SampleEncoder`` is a
function of one record, so it runs in ``DataLoader`` workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from zaya_vl.lm.loss import IGNORE_INDEX
from zaya_vl.tokenization import IMAGE_PLACEHOLDER, IMAGE_TOKEN, VISION_END_TOKEN, VISION_START_TOKEN
from zaya_vl.training.config import DataConfig
from zaya_vl.training.conversation import read_conversation, text_reserved

TEXT_IMAGE_MARKER = IMAGE_PLACEHOLDER  # "<image>" in a row's text: where the row's next image goes


class DataError(ValueError):
    """The data cannot be read at all (a missing file, a malformed line, an empty dataset)."""


class InvalidSample(DataError):
    """One sample cannot be used. ``reason`` is a short code (``image``, ``overlength``, ``no_targets``,
    ``malformed``); ``where`` names the record."""

    def __init__(self, where: str, reason: str, detail: str) -> None:
        self.where, self.reason, self.detail = where, reason, detail
        super().__init__(f"{where}: {detail}")

    def __reduce__(self):
        return (type(self), (self.where, self.reason, self.detail))


@dataclass
class Encoded:
    """One tokenised sample (or a piece of one split long document)."""

    input_ids: list[int]
    labels: list[int]
    where: str = ""
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    # Per token: the id of the glyph in that image token's cell (the image part's "cells"), else IGNORE_INDEX;
    # None when no image of the sample has cells. Targets of the trainer's cell loss (train.cell_loss_weight).
    cell_labels: list[int] | None = None

    @property
    def has_images(self) -> bool:
        return self.pixel_values is not None

    def __len__(self) -> int:
        return len(self.input_ids)


# -- records ------------------------------------------------------------------------------------------------
class JsonlRecords(Sequence):
    """A JSONL file as a random-access sequence of dicts; blank lines are ignored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}")
        self._offsets: list[tuple[int, int]] = []  # (byte offset, line number)
        with open(self.path, "rb") as handle:
            offset, number = 0, 0
            for line in handle:
                number += 1
                if line.strip():
                    if not self._offsets and line.lstrip().startswith(b"["):
                        raise DataError(f"{self.path} holds a JSON array; write one JSON object per line (JSONL)")
                    self._offsets.append((offset, number))
                offset += len(line)
        self._handle = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> dict:
        offset, number = self._offsets[index]
        if self._handle is None or self._handle.closed:
            self._handle = open(self.path, "rb")
        self._handle.seek(offset)
        line = self._handle.readline()
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise InvalidSample(self.describe(index), "malformed", f"not valid UTF-8: byte "
                                f"0x{line[error.start]:02x} at column {error.start + 1}") from None
        except json.JSONDecodeError as error:
            raise InvalidSample(self.describe(index), "malformed", f"not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise InvalidSample(self.describe(index), "malformed", "each line must be a JSON object")
        return record

    def describe(self, index: int) -> str:
        return f"{self.path.name}:{self._offsets[index][1]}"

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


class DatasetRecords(Sequence):
    def __init__(self, dataset, name: str) -> None:
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(index)]

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


class JsonArrayRecords(Sequence):
    """A ``.json`` file holding one array of row objects (LLaMA-Factory's usual dataset file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            rows = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not valid UTF-8 (byte offset {error.start})") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json data file must hold an array of rows, got {type(rows).__name__}")
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        record = self.rows[index]
        if not isinstance(record, dict):
            raise InvalidSample(self.describe(index), "malformed", "each row must be a JSON object")
        return record

    def describe(self, index: int) -> str:
        return f"{self.path.name}[{index}]"


# Single data files that datasets' packaged builders read (load_dataset("parquet", data_files=...)).
_DATASETS_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


def open_records(config: DataConfig) -> tuple[Sequence, Path | None]:
    """The records of ``config.train`` and the folder relative image paths resolve against: a JSONL file, a
    ``.json`` array, a parquet / arrow / csv file, a ``save_to_disk`` folder, a folder of data files (read by
    ``datasets.load_dataset``), or a dataset name on the hub (``datasets.load_dataset``)."""
    source = config.train
    path = Path(source).expanduser()
    image_root = Path(config.image_root).expanduser() if config.image_root else None
    if path.is_file():
        root = image_root or path.parent.resolve()
        if path.suffix in _DATASETS_BUILDERS:
            return _load_dataset(_DATASETS_BUILDERS[path.suffix], config, data_files=str(path), split="train",
                                 name=path.name), root
        if path.suffix == ".json" and _starts_with_array(path):
            return JsonArrayRecords(path), root
        return JsonlRecords(path), root
    if path.is_dir():
        import datasets

        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if config.split not in loaded:
                    raise DataError(f"{path} has splits {list(loaded)}, not {config.split!r} (data.split)")
                loaded = loaded[config.split]
            return DatasetRecords(loaded, f"{path.name}/{config.split}"), image_root or path.resolve()
        jsonl = path / f"{config.split}.jsonl"
        if jsonl.is_file():
            return JsonlRecords(jsonl), image_root or path.resolve()
        # A folder of data files (parquet, json, csv, …): datasets finds the split's files by name.
        return _load_dataset(str(path), config, name=f"{path.name}/{config.split}"), image_root or path.resolve()
    looks_local = os.sep in source and not _looks_like_hub_name(source)
    if source.endswith((".jsonl", ".json", *_DATASETS_BUILDERS)) or looks_local:
        raise DataError(f"data file not found: {source}")
    return _load_dataset(source, config, name=f"{source}/{config.split}"), image_root


def _load_dataset(source: str, config: DataConfig, *, name: str, split: str | None = None,
                  **kwargs) -> "DatasetRecords":
    import datasets

    split = split or config.split
    try:
        loaded = datasets.load_dataset(source, config.dataset_config, split=split, **kwargs)
    except Exception as error:  # noqa: BLE001 - datasets raises many types; name the source in one message
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {error}") from error
    return DatasetRecords(loaded, name)


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _looks_like_hub_name(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


# -- encoding -----------------------------------------------------------------------------------------------
class SampleEncoder:
    """Record → :class:`Encoded`. ``processor`` is needed only for samples with images."""

    def __init__(self, tokenizer, config: DataConfig, processor=None, image_root: Path | None = None) -> None:
        self.tokenizer, self.processor, self.config = tokenizer, processor, config
        self.image_root = image_root
        self._glyph_ids: dict[str, int] = {}
        # A VL checkpoint may keep its chat template on the processor rather than on the tokenizer.
        self.chat_template = getattr(tokenizer, "chat_template", None) or getattr(processor, "chat_template", None)
        # What the chat template writes for an image part and the processor expands (``<image>`` for processors this
        # package saves; the image token itself, e.g. ``<image_soft_token>``, for the reference "repeat" processors).
        self.placeholder = getattr(processor, "image_placeholder", None) or IMAGE_PLACEHOLDER
        self.placeholder_id = _token_id(tokenizer, self.placeholder)
        span = tuple(getattr(processor, attribute, None) or default for attribute, default in (
            ("image_token", IMAGE_TOKEN), ("vision_start_token", VISION_START_TOKEN),
            ("vision_end_token", VISION_END_TOKEN)))
        # Typed in text, the model's image tokens would fake an image, so text may not hold them; ``<image>`` in text
        # is the data's image marker (LLaMA-Factory, ms-swift, sharegpt), whatever the processor's placeholder is.
        self.reserved_tokens = tuple(dict.fromkeys(
            token for token in (*span, self.placeholder)
            if token != TEXT_IMAGE_MARKER and _token_id(tokenizer, token) is not None))
        self.image_token_ids = {i for i in (
            getattr(processor, "image_token_id", None), *(_token_id(tokenizer, token) for token in span),
            self.placeholder_id) if i is not None}

    def __call__(self, record: dict, where: str) -> Encoded:
        where = _with_id(where, record)
        kind = self._format(record, where)
        if kind == "text":
            encoded = self._text(record, where)
        else:
            encoded = self._chat(record, kind, where)
        if not any(label != IGNORE_INDEX for label in encoded.labels[1:]):
            raise InvalidSample(where, "no_targets", "no token to train on (no assistant turn?)")
        return encoded

    def has_images(self, record: dict, where: str = "record") -> bool:
        """Whether ``record`` is a sample with images, without loading them (cheap; a malformed record answers
        False and fails properly when encoded). The row stream gives such samples a row of their own."""
        def invalid(reason: str, detail: str) -> InvalidSample:
            return InvalidSample(where, reason, detail)

        try:
            column = self._format(record, where)
            if column == "text":
                return False
            conversation = read_conversation(
                record, column=column, images_column=self.config.images_column,
                system_column=self.config.system_column or None, placeholder=TEXT_IMAGE_MARKER,
                reserved_tokens=self.reserved_tokens, invalid=invalid)
            return bool(conversation.images)
        except InvalidSample:
            return False

    def _format(self, record: dict, where: str) -> str:
        """``"text"``, or the column holding the conversation (messages or sharegpt conversations)."""
        config = self.config
        required = {"chat": (config.messages_column, "data.messages_column"),
                    "sharegpt": (config.conversations_column, "data.conversations_column"),
                    "text": (config.text_column, "data.text_column")}
        if config.format != "auto":
            column, key = required[config.format]
            if record.get(column) is None:
                raise InvalidSample(where, "malformed", f"no {column!r} field ({key}; data.format={config.format})")
            return "text" if config.format == "text" else column
        for column in (config.messages_column, config.conversations_column):
            if record.get(column) is not None:
                return column
        if record.get(config.text_column) is None:
            raise InvalidSample(where, "malformed", f"none of {config.messages_column!r} (chat), "
                                f"{config.conversations_column!r} (sharegpt) or {config.text_column!r} (text); "
                                f"the record has {sorted(record)}")
        return "text"

    def _text(self, record: dict, where: str) -> Encoded:
        text = record[self.config.text_column]
        if not isinstance(text, str):
            raise InvalidSample(where, "malformed", f"{self.config.text_column!r} must be a string")
        token = text_reserved(text, (TEXT_IMAGE_MARKER, *self.reserved_tokens))
        if token is not None:
            raise InvalidSample(where, "image_token", f"the text holds {token!r}, an image token; text rows carry "
                                "no images (write image rows as chat rows with an images column)")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        if self.config.add_eos and self.tokenizer.eos_token_id is not None:
            ids = ids + [self.tokenizer.eos_token_id]
        return Encoded(ids, list(ids), where)

    def _chat(self, record: dict, column: str, where: str) -> Encoded:
        def invalid(reason: str, detail: str) -> InvalidSample:
            return InvalidSample(where, reason, detail)

        conversation = read_conversation(
            record, column=column, images_column=self.config.images_column,
            system_column=self.config.system_column or None, placeholder=TEXT_IMAGE_MARKER,
            reserved_tokens=self.reserved_tokens, invalid=invalid)
        messages = conversation.messages
        sources = [(self._resolve(source), _image_name(source, k)) for k, source in enumerate(conversation.images)]
        try:
            templated = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True)
        except Exception as error:  # noqa: BLE001 - jinja errors name the template, not the record
            raise InvalidSample(where, "malformed", f"the chat template failed on this record: {error}") from None
        ids, mask = list(templated["input_ids"]), list(templated["assistant_masks"])
        written = ids.count(self.placeholder_id) if self.placeholder_id is not None else 0
        if sources and written != len(sources):
            raise InvalidSample(where, "image_count", f"the chat template wrote {written} image placeholders for the "
                                f"row's {len(sources)} images (does it render every image part?)")
        pixel_values = image_grid_thw = cell_labels = None
        if sources:
            ids, mask, pixel_values, image_grid_thw = self._expand_images(messages, sources, ids, mask, where)
            cells = [part.get("cells") for part in _image_parts(messages)]
            if any(grid is not None for grid in cells):
                cell_labels = self._cell_labels(ids, image_grid_thw, cells, [name for _, name in sources], where)
        if self.config.loss_on == "assistant":
            labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]
        else:
            labels = list(ids)
        labels = [IGNORE_INDEX if token in self.image_token_ids else label for token, label in zip(ids, labels)]
        return Encoded(ids, labels, where, pixel_values, image_grid_thw, cell_labels)

    def _expansions(self, image_grid_thw: torch.Tensor) -> list[list[int]]:
        """The tokens each image's placeholder becomes: N = t·h·w / merge² image tokens, inside
        ``<start_of_image>`` … ``<end_of_image>`` with the processor's ``span`` expansion (``repeat``: bare)."""
        processor = self.processor
        merge = processor.image_processor.merge_size
        span = getattr(processor, "image_expansion", "span") == "span"
        out = []
        for t, h, w in image_grid_thw.tolist():
            tokens = [processor.image_token_id] * (t * h * w // merge**2)
            if span:
                tokens = [processor.vision_start_token_id, *tokens, processor.vision_end_token_id]
            out.append(tokens)
        return out

    def _cell_labels(self, ids: list[int], image_grid_thw: torch.Tensor, cells: list[list[str] | None],
                     names: list[str], where: str) -> list[int]:
        """Each image's cell glyphs (rows top to bottom) as token ids at its image tokens, which the processor
        lays out row-major over the merged grid. A glyph that is not a single token of the vocab is skipped."""
        image_token_id = self.processor.image_token_id
        merge = self.processor.image_processor.merge_size
        starts = [i for i, token in enumerate(ids) if token == image_token_id and (i == 0 or ids[i - 1] != token)]
        labels = [IGNORE_INDEX] * len(ids)
        for start, (t, h, w), grid, name in zip(starts, image_grid_thw.tolist(), cells, names):
            if grid is None:
                continue
            if not isinstance(grid, list) or not all(isinstance(line, str) for line in grid):
                raise InvalidSample(where, "image", f"image {name}: cells must be a list of strings, one per row")
            rows, cols = h // merge, w // merge
            if t != 1 or len(grid) != rows or any(len(line) != cols for line in grid):
                shape = f"{len(grid)} rows of lengths {sorted({len(line) for line in grid})}"
                raise InvalidSample(where, "image", f"image {name}: its cells have {shape} but the processor made "
                                    f"a {rows} x {cols} grid of image tokens; cells must match the processed "
                                    "image (set the processor's min_pixels = max_pixels = the page's pixels)")
            for k, glyph in enumerate("".join(grid)):
                if glyph != " ":
                    labels[start + k] = self._glyph_id(glyph)
        return labels

    def _glyph_id(self, glyph: str) -> int:
        if glyph not in self._glyph_ids:
            ids = self.tokenizer(glyph, add_special_tokens=False)["input_ids"]
            self._glyph_ids[glyph] = ids[0] if len(ids) == 1 else IGNORE_INDEX
        return self._glyph_ids[glyph]

    def _resolve(self, source: Any) -> Any:
        if isinstance(source, str) and self.image_root is not None and not source.startswith(("data:", "file:")):
            if not os.path.isabs(source):
                return str(self.image_root / source)
        return source

    def _expand_images(self, messages, sources, ids, mask, where):
        from zaya_vl.vision import ImageLoadError, load_image

        if self.processor is None:
            raise InvalidSample(where, "image", "the sample has images but the model is a text-only LM "
                                "(train a VL model, or drop image samples)")
        images = []
        for source, name in sources:
            try:
                images.append(load_image(source, name=name))
            except (ImageLoadError, TypeError) as error:
                raise InvalidSample(where, "image", f"image could not be loaded: {error}") from None
        prompt = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False)
        try:
            processed = self.processor(images=images, text=[prompt], return_tensors="pt", add_special_tokens=False)
        except ValueError as error:  # ImageLoadError, and transformers' smart_resize on an extreme aspect ratio
            sizes = ", ".join(f"{name} ({image.width}x{image.height})" for (_, name), image in zip(sources, images))
            raise InvalidSample(where, "image", f"the processor refused the image(s) {sizes}: {error}") from None
        expanded = processed["input_ids"][0].tolist()
        expansions = self._expansions(processed["image_grid_thw"])
        expanded_mask = _carry_mask(ids, mask, expanded, self.placeholder_id, expansions, where)
        return expanded, expanded_mask, processed["pixel_values"], processed["image_grid_thw"]


def _carry_mask(ids: list[int], mask: list[int], expanded: list[int], placeholder_id: int | None,
                expansions: list[list[int]], where: str) -> list[int]:
    """The assistant mask of the template's ids, carried onto the processor's ids, in which the k-th placeholder
    became ``expansions[k]``. Anything else that differs is an error (a tokenizer/processor mismatch)."""
    out, j, k = [], 0, 0
    for token, keep in zip(ids, mask):
        if token == placeholder_id:
            expansion = expansions[k] if k < len(expansions) else None
            if expansion is None or expanded[j:j + len(expansion)] != expansion:
                raise DataError(f"{where}: the processor did not expand image placeholder {k} (token {len(out)}) "
                                "into that image's tokens")
            out.extend([0] * len(expansion))
            j, k = j + len(expansion), k + 1
            continue
        if j >= len(expanded) or expanded[j] != token:
            raise DataError(f"{where}: the processor's token ids differ from the chat template's at token "
                            f"{len(out)} (processor {expanded[j] if j < len(expanded) else 'end'}, template "
                            f"{token}); the processor and tokenizer must come from the same checkpoint")
        out.append(keep)
        j += 1
    if j != len(expanded):
        raise DataError(f"{where}: the processor produced {len(expanded) - j} tokens beyond the chat template's")
    return out


def _image_parts(messages: list[dict]) -> list[dict]:
    """The ``{"type": "image", ...}`` content parts of all messages, in order."""
    return [part for message in messages if isinstance(message.get("content"), list)
            for part in message["content"] if isinstance(part, dict) and part.get("type") == "image"]


def _token_id(tokenizer, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def _image_name(source: Any, index: int) -> str:
    if isinstance(source, str) and not source.startswith("data:"):
        return source
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return f"image {index}"


def _with_id(where: str, record: dict) -> str:
    record_id = record.get("id")
    return f"{where} (id={record_id})" if record_id is not None else where


__all__ = ["DataError", "DatasetRecords", "Encoded", "IGNORE_INDEX", "InvalidSample", "JsonArrayRecords",
           "JsonlRecords", "SampleEncoder", "open_records"]
