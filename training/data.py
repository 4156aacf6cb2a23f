"""Training records and how one becomes token ids + labels.

Records come from a JSONL file (read lazily by line offset, so a large file is not held in memory), a folder
written by ``datasets.Dataset.save_to_disk``, or a dataset name for ``datasets.load_dataset``. A record is

- **chat**: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": "images/a.png"},
  {"type": "text", "text": "What is the total?"}]}, {"role": "assistant", "content": "$12.40"}]}``.
  Content is a string or a list of parts. An image part names its image in ``image`` (a path relative to
  the JSONL's folder or ``data.image_root``, an absolute path, a ``data:`` URI, bytes, a PIL image, a
  ``{"bytes", "path"}`` dict); a part without one takes the next entry of the record's ``images`` column.
  The loss covers the assistant turns (the chat template's ``{% generation %}`` blocks), or every token
  with ``loss_on: all``; image tokens never carry loss.
- **text**: ``{"text": "..."}`` for pretraining: ``<bos> text <eos>``, loss on every token.

Text-only samples need only the tokenizer. Samples with images go through the processor, which expands each
``<image>`` placeholder into ``<start_of_image>`` + N × ``<image_soft_token>`` + ``<end_of_image>``; the
assistant mask is computed on the template's unexpanded ids and carried across the expansion.

A sample that cannot be used raises :class:`InvalidSample` naming the record (file and line, and its ``id``)
and the reason: an image that does not load, a sample longer than ``seq_len`` (never truncated: that could
cut an image span or the answer), no token to train on. The row stream raises it or, with
``on_invalid: skip``, skips the sample and counts it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from zaya_vl.training.config import DataConfig

IGNORE_INDEX = -100


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
            record = json.loads(line)
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


def open_records(config: DataConfig) -> tuple[Sequence, Path | None]:
    """The records of ``config.train`` and the folder relative image paths resolve against."""
    source = config.train
    path = Path(source).expanduser()
    image_root = Path(config.image_root).expanduser() if config.image_root else None
    if path.is_file():
        return JsonlRecords(path), image_root or path.parent.resolve()
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
        raise DataError(f"{path} is a folder with neither a saved dataset nor {jsonl.name}")
    if source.endswith((".jsonl", ".json")) or os.sep in source and not _looks_like_hub_name(source):
        raise DataError(f"data file not found: {source}")
    import datasets

    try:
        loaded = datasets.load_dataset(source, config.dataset_config, split=config.split)
    except Exception as error:  # noqa: BLE001 - datasets raises many types; name the source in one message
        raise DataError(f"could not load dataset {source!r} (split {config.split!r}): {error}") from error
    return DatasetRecords(loaded, f"{source}/{config.split}"), image_root


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
        self.placeholder_id = _token_id(tokenizer, "<image>")
        self.image_token_ids = {i for i in (
            getattr(processor, "image_token_id", None),
            _token_id(tokenizer, "<image_soft_token>"), _token_id(tokenizer, "<start_of_image>"),
            _token_id(tokenizer, "<end_of_image>"), self.placeholder_id) if i is not None}

    def __call__(self, record: dict, where: str) -> Encoded:
        where = _with_id(where, record)
        kind = self._format(record, where)
        if kind == "text":
            encoded = self._text(record, where)
        else:
            encoded = self._chat(record, where)
        if not any(label != IGNORE_INDEX for label in encoded.labels[1:]):
            raise InvalidSample(where, "no_targets", "no token to train on (no assistant turn?)")
        return encoded

    def has_images(self, record: dict, where: str = "record") -> bool:
        """Whether ``record`` is a sample with images, without loading them (cheap; a malformed record answers
        False and fails properly when encoded). The row stream gives such samples a row of their own."""
        try:
            if self._format(record, where) == "text":
                return False
            messages = record[self.config.messages_column]
            return isinstance(messages, list) and bool(self._image_sources(record, messages, where))
        except InvalidSample:
            return False

    def _format(self, record: dict, where: str) -> str:
        columns = self.config.messages_column, self.config.text_column
        if self.config.format == "chat" or self.config.format == "auto" and record.get(columns[0]) is not None:
            if record.get(columns[0]) is None:
                raise InvalidSample(where, "malformed", f"no {columns[0]!r} field (data.messages_column)")
            return "chat"
        if record.get(columns[1]) is None:
            raise InvalidSample(where, "malformed", f"neither {columns[0]!r} (chat) nor {columns[1]!r} (text) "
                                f"field; the record has {sorted(record)}")
        return "text"

    def _text(self, record: dict, where: str) -> Encoded:
        text = record[self.config.text_column]
        if not isinstance(text, str):
            raise InvalidSample(where, "malformed", f"{self.config.text_column!r} must be a string")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        if self.config.add_eos and self.tokenizer.eos_token_id is not None:
            ids = ids + [self.tokenizer.eos_token_id]
        return Encoded(ids, list(ids), where)

    def _chat(self, record: dict, where: str) -> Encoded:
        messages = record[self.config.messages_column]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise InvalidSample(where, "malformed", "messages must be a list of {'role', 'content'} objects")
        sources = self._image_sources(record, messages, where)
        try:
            templated = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True)
        except Exception as error:  # noqa: BLE001 - jinja errors name the template, not the record
            raise InvalidSample(where, "malformed", f"the chat template failed on this record: {error}") from None
        ids, mask = list(templated["input_ids"]), list(templated["assistant_masks"])
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

    def _image_sources(self, record: dict, messages: list[dict], where: str) -> list[tuple[Any, str]]:
        """(source, name) for each image part, in order."""
        column = record.get(self.config.images_column) or []
        if not isinstance(column, (list, tuple)):
            column = [column]
        sources, from_column = [], 0
        for part in _image_parts(messages):
            source = next((part[k] for k in ("image", "path", "url") if part.get(k) is not None), None)
            if source is None:
                if from_column >= len(column):
                    raise InvalidSample(where, "image", f"image part {len(sources)} names no image and the "
                                        f"{self.config.images_column!r} column has only {len(column)}")
                source = column[from_column]
                from_column += 1
            sources.append((self._resolve(source), _image_name(source, len(sources))))
        return sources

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
        except ImageLoadError as error:
            raise InvalidSample(where, "image", f"image could not be processed: {error}") from None
        expanded = processed["input_ids"][0].tolist()
        expanded_mask = _carry_mask(ids, mask, expanded, self.placeholder_id, self.image_token_ids, where)
        return expanded, expanded_mask, processed["pixel_values"], processed["image_grid_thw"]


def _carry_mask(ids: list[int], mask: list[int], expanded: list[int], placeholder_id: int | None,
                image_token_ids: set[int], where: str) -> list[int]:
    """The assistant mask of the template's ids, carried onto the processor's ids, in which each placeholder
    became a run of image tokens. Anything else that differs is an error (a tokenizer/processor mismatch)."""
    out, j = [], 0
    for token, keep in zip(ids, mask):
        if token == placeholder_id:
            start = j
            while j < len(expanded) and expanded[j] in image_token_ids:
                j += 1
            if j == start:
                raise DataError(f"{where}: the processor did not expand the image placeholder at token {len(out)}")
            out.extend([0] * (j - start))
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


__all__ = ["DataError", "DatasetRecords", "Encoded", "IGNORE_INDEX", "InvalidSample", "JsonlRecords",
           "SampleEncoder", "open_records"]
